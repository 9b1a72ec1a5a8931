//! Request recording as JSON lines (`--record`) and reading recordings back (`--from`).
//!
//! Owns the record format: one JSON object per request, in capture order:
//!
//! ```text
//! {"ts_ns":1491516335016265000,"src":"10.0.0.1:61541","dst":"81.218.72.15:80","flow_id":0,
//!  "seq_in_flow":0,"method":"POST","target":"/x","version":"HTTP/1.1","host":"example.org",
//!  "headers":[["Host","example.org"],["Content-Length","2"]],"body_len":2,"head_len":55,
//!  "framing":"content-length","end_ts_ns":1491516335016280000,"te_and_cl":false,
//!  "raw":"UE9TVC..."}
//! ```
//!
//! `raw` is written last (it is most of the line); readers take the fields by name. A request
//! captured as an HTTP/2 stream has `"version":"HTTP/2"`, `"h2_stream":N`, and `headers` in
//! its HTTP/2 form: the pseudo-header fields first (`:method`, `:scheme`, `:authority` when it
//! had one, `:path`), then the fields, names in lower case; its `raw` is the HTTP/1.1 form it
//! is filtered, rewritten and (with `protocol=h1`) mirrored in ([`crate::http2::convert`]),
//! and `--from` rebuilds the request from that `raw` and replays it over HTTP/2 again where
//! the mirror's protocol says so.
//!
//! `raw` (base64, standard alphabet with padding) is the authority: the exact request bytes, head
//! and body, chunked framing included. `headers` are `[name, value]` in wire order and case;
//! a value that is not valid UTF-8 is written as `[name, lossy_text, base64_of_exact_bytes]`, so
//! the array stays readable as text and the reader still gets the exact bytes back. IPv6
//! addresses are written `[addr]:port`. Record files hold credentials (Authorization, cookies)
//! and are created with mode 0600.

use std::io::{BufRead, BufWriter, Write};
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::http::{
    BodyFraming, Request, Text, TraceFields, Version, asks_upgrade, head_fields, keeps_alive,
};
use crate::output_queue::OutputWriter;
use crate::pipeline::CapturedRequest;

/// Why a record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The recording could not be opened (see [`crate::output_file`]).
    #[error("--record {0}")]
    Create(crate::output_file::OutputFileError),
    /// Writing (or reading) the file failed.
    #[error("record file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The line is not a JSON object of the record shape.
    #[error("line {line}: not a request record: {source}")]
    Json {
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    /// The line is not UTF-8 (skipped, the rest is read).
    #[error("line {line}: not UTF-8")]
    NotUtf8 { line: u64 },
    /// The line is longer than the bound (skipped, the rest is read).
    #[error("line {line}: longer than {max} bytes")]
    LineTooLong { line: u64, max: usize },
    /// A field has a value the format does not allow.
    #[error("line {line}: field {field}: {detail}")]
    Field {
        line: u64,
        field: &'static str,
        detail: String,
    },
}

#[derive(Deserialize)]
struct Line {
    ts_ns: u64,
    src: String,
    dst: String,
    #[serde(default)]
    flow_id: u64,
    #[serde(default)]
    seq_in_flow: u64,
    method: String,
    target: String,
    version: String,
    /// Written for readers of the file; the request's own Host header is the authority.
    #[serde(default, rename = "host")]
    _host: serde::de::IgnoredAny,
    /// Written for readers of the file (and other tools): the request's header fields are read
    /// from `raw`, the bytes that are replayed, so the two cannot disagree.
    #[serde(default, rename = "headers")]
    _headers: serde::de::IgnoredAny,
    body_len: u64,
    raw: String,
    /// Optional on input: found from `raw` when absent.
    #[serde(default)]
    head_len: Option<usize>,
    /// `none`, `content-length` or `chunked`; optional on input (derived from the headers).
    #[serde(default)]
    framing: Option<String>,
    /// Captured as this HTTP/2 stream; `raw` is its HTTP/1.1 form. Absent for HTTP/1.x.
    #[serde(default)]
    h2_stream: Option<u32>,
    #[serde(default)]
    end_ts_ns: Option<u64>,
    #[serde(default)]
    te_and_cl: bool,
}

/// One record line (without the newline).
pub fn to_line(c: &CapturedRequest) -> String {
    let mut out = Vec::new();
    encode_line(c, &mut out);
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Appends one record line (without the newline) to `out`.
///
/// The hot path of `--record`: every field but `raw` is serialized straight from the request,
/// borrowing it; `raw` (most of the line) is base64-encoded by the engine directly into `out`,
/// last. So a record costs no allocation beyond `out`'s growth (the same buffer is reused line
/// after line). The shape is [`Line`]'s, which the reader parses (by name, in any order).
pub fn encode_line(c: &CapturedRequest, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &LineRef { c }).expect("a record always serializes");
    // Reopen the object and append `"raw":"<base64>"`.
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(br#","raw":""#);
    let raw = &c.request.raw;
    let start = out.len();
    let len = base64::encoded_len(raw.len(), true).expect("a request's length fits in usize");
    out.resize(start + len, 0);
    let written = B64
        .encode_slice(raw, &mut out[start..])
        .expect("the slice has the encoded length");
    debug_assert_eq!(written, len);
    out.extend_from_slice(br#""}"#);
}

/// [`Line`], borrowed from a captured request (see [`encode_line`]).
struct LineRef<'a> {
    c: &'a CapturedRequest,
}

/// Bytes written as a base64 JSON string without an intermediate `String`.
struct B64Str<'a>(&'a [u8]);

impl Serialize for B64Str<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&base64::display::Base64Display::new(self.0, &B64))
    }
}

/// Bytes as text, invalid UTF-8 replaced (`U+FFFD`), as a JSON string.
struct Lossy<'a>(&'a [u8]);

impl Serialize for Lossy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&String::from_utf8_lossy(self.0)),
        }
    }
}

/// `[name, value]`, or `[name, lossy_text, base64]` for a value that is not UTF-8.
struct HeaderRef<'a>(&'a str, &'a [u8]);

impl Serialize for HeaderRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let (name, value) = (self.0, self.1);
        match std::str::from_utf8(value) {
            Ok(v) => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(name)?;
                t.serialize_element(v)?;
                t.end()
            }
            Err(_) => {
                let mut t = s.serialize_tuple(3)?;
                t.serialize_element(name)?;
                t.serialize_element(&Lossy(value))?;
                t.serialize_element(&B64Str(value))?;
                t.end()
            }
        }
    }
}

/// The request's headers as an array of [`HeaderRef`].
struct HeadersRef<'a>(&'a Request);

impl Serialize for HeadersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.headers().map(|(n, v)| HeaderRef(n, v)))
    }
}

/// An HTTP/2 stream's fields: its pseudo-header fields (from the HTTP/1.1 form's request line
/// and `Host`; captured over h2c, so the scheme is `http`), then the other fields.
struct H2HeadersRef<'a>(&'a Request);

impl Serialize for H2HeadersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0;
        let mut seq = s.serialize_seq(None)?;
        seq.serialize_element(&(":method", r.method()))?;
        seq.serialize_element(&(":scheme", "http"))?;
        if let Some(host) = r.header("host") {
            seq.serialize_element(&(":authority", Lossy(host)))?;
        }
        seq.serialize_element(&(":path", r.target()))?;
        for (name, value) in r.headers().filter(|(n, _)| !n.eq_ignore_ascii_case("host")) {
            seq.serialize_element(&HeaderRef(name, value))?;
        }
        seq.end()
    }
}

impl Serialize for LineRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let c = self.c;
        let r = &c.request;
        let framing = match r.framing {
            BodyFraming::None => "none",
            BodyFraming::ContentLength(_) => "content-length",
            BodyFraming::Chunked => "chunked",
            BodyFraming::CloseDelimited => "close-delimited",
        };
        // `raw` is appended by `encode_line`, after these.
        let mut l = s.serialize_struct("Line", 16)?;
        l.serialize_field("ts_ns", &r.ts_ns)?;
        // SocketAddr's Display writes IPv6 as `[addr]:port`, as the reader expects.
        l.serialize_field("src", &Displayed(&c.src))?;
        l.serialize_field("dst", &Displayed(&c.dst))?;
        l.serialize_field("flow_id", &c.flow_id)?;
        l.serialize_field("seq_in_flow", &c.seq_in_flow)?;
        l.serialize_field("method", r.method())?;
        l.serialize_field("target", r.target())?;
        let h2 = r.h2_stream.is_some();
        l.serialize_field("version", if h2 { "HTTP/2" } else { r.version.as_str() })?;
        l.serialize_field("host", &r.header("host").map(Lossy))?;
        if h2 {
            l.serialize_field("headers", &H2HeadersRef(r))?;
        } else {
            l.serialize_field("headers", &HeadersRef(r))?;
        }
        l.serialize_field("body_len", &r.body_len)?;
        l.serialize_field("head_len", &r.head_len)?;
        l.serialize_field("framing", framing)?;
        l.serialize_field("end_ts_ns", &r.end_ts_ns)?;
        l.serialize_field("te_and_cl", &r.te_and_cl)?;
        if let Some(stream) = r.h2_stream {
            l.serialize_field("h2_stream", &stream)?;
        }
        l.end()
    }
}

/// Any `Display` value as a JSON string, written without an intermediate `String`.
struct Displayed<'a, T: std::fmt::Display>(&'a T);

impl<T: std::fmt::Display> Serialize for Displayed<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Parses one record line (line number 0 in errors; see [`RecordReader`] for numbered lines).
pub fn read_line(line: &str) -> Result<CapturedRequest, RecordError> {
    parse(line, 0)
}

fn parse(text: &str, line: u64) -> Result<CapturedRequest, RecordError> {
    let l: Line =
        serde_json::from_str(text).map_err(|source| RecordError::Json { line, source })?;
    let field = |field: &'static str, detail: String| RecordError::Field {
        line,
        field,
        detail,
    };
    let addr = |name: &'static str, s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| field(name, format!("{s:?}: {e}")))
    };
    let src = addr("src", &l.src)?;
    let dst = addr("dst", &l.dst)?;
    let raw = Bytes::from(
        B64.decode(&l.raw)
            .map_err(|e| field("raw", e.to_string()))?,
    );
    if l.version == "HTTP/2" {
        return h2_record(l, src, dst, raw, line);
    }
    let version = match l.version.as_str() {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        "HTTP/0.9" | "" => Version::Http09,
        other => return Err(field("version", format!("{other:?}"))),
    };
    let head_len = match l.head_len {
        Some(n) if n <= raw.len() => n,
        Some(n) => return Err(field("head_len", format!("{n} > raw length {}", raw.len()))),
        None => find_head_end(&raw).unwrap_or(raw.len()),
    };
    let framing = match l.framing.as_deref() {
        Some("none") => BodyFraming::None,
        Some("content-length") => BodyFraming::ContentLength(l.body_len),
        Some("chunked") => BodyFraming::Chunked,
        Some("close-delimited") => BodyFraming::CloseDelimited,
        Some(other) => return Err(field("framing", format!("{other:?}"))),
        None => derive_framing(&raw[..head_len], l.body_len),
    };
    let keep_alive = keeps_alive(version, &raw[..head_len]);
    let upgrade = asks_upgrade(&raw[..head_len]);
    let trace = TraceFields::scan_head(&raw, head_len).shared();
    let (method, target) = Text::request_line(&raw, &l.method, &l.target);
    Ok(CapturedRequest {
        src,
        dst,
        flow_id: l.flow_id,
        seq_in_flow: l.seq_in_flow,
        request: Request {
            keep_alive,
            upgrade,
            trace,
            raw,
            head_len,
            method,
            target,
            version,
            framing,
            body_len: l.body_len,
            ts_ns: l.ts_ns,
            end_ts_ns: l.end_ts_ns.unwrap_or(l.ts_ns),
            te_and_cl: l.te_and_cl,
            // Recording keeps bodies (it turns omission off).
            body_omitted: false,
            h2_stream: l.h2_stream,
        },
    })
}

/// An HTTP/2 record: the request is rebuilt from its HTTP/1.1 form (`raw`), as the pipeline
/// built it from the decoded stream; the `headers` of the line (the HTTP/2 form) are for
/// people and other tools.
fn h2_record(
    l: Line,
    src: SocketAddr,
    dst: SocketAddr,
    raw: Bytes,
    line: u64,
) -> Result<CapturedRequest, RecordError> {
    let field = |field: &'static str, detail: String| RecordError::Field {
        line,
        field,
        detail,
    };
    let Some(stream) = l.h2_stream else {
        return Err(field("h2_stream", "missing for an HTTP/2 record".into()));
    };
    let limits = crate::http::request::HttpLimits {
        max_body_bytes: u64::MAX,
        ..Default::default()
    };
    let mut request = crate::http2::convert::request_from_http1(raw.to_vec(), l.ts_ns, &limits)
        .ok_or_else(|| field("raw", "not an HTTP/1.1 request".into()))?;
    request.h2_stream = Some(stream);
    request.end_ts_ns = l.end_ts_ns.unwrap_or(l.ts_ns);
    Ok(CapturedRequest {
        src,
        dst,
        flow_id: l.flow_id,
        seq_in_flow: l.seq_in_flow,
        request,
    })
}

/// End of the head: after the first empty line (CRLF CRLF, or bare LF LF).
fn find_head_end(raw: &[u8]) -> Option<usize> {
    (0..raw.len()).find_map(|i| {
        if raw[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if raw[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if raw[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn derive_framing(head: &[u8], body_len: u64) -> BodyFraming {
    let has = |n: &str| head_fields(head).any(|(name, _)| name.eq_ignore_ascii_case(n));
    if has("transfer-encoding") {
        BodyFraming::Chunked
    } else if has("content-length") {
        BodyFraming::ContentLength(body_len)
    } else {
        BodyFraming::None
    }
}

/// Writes records, one line each, buffered. As an [`OutputWriter`] it runs on the `--record`
/// output's own thread ([`crate::output_queue`]); call [`RecordWriter::flush`] at the end when
/// used directly.
pub struct RecordWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    path: String,
    written: u64,
    /// The line being encoded, reused.
    line: Vec<u8>,
}

impl RecordWriter {
    /// `-` is stdout; anything else a file created (or truncated) with mode 0600.
    pub fn create(target: &str, overwrite: bool) -> Result<Self, RecordError> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = crate::output_file::create(std::path::Path::new(target), overwrite)
                .map_err(RecordError::Create)?;
            Box::new(f)
        };
        Ok(Self::new(out, target))
    }

    /// Records into any writer (tests).
    pub fn from_writer(w: impl Write + Send + 'static) -> Self {
        Self::new(Box::new(w), "<writer>")
    }

    fn new(out: Box<dyn Write + Send>, path: &str) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, out),
            path: path.to_owned(),
            written: 0,
            line: Vec::with_capacity(4096),
        }
    }

    pub fn write(&mut self, r: &CapturedRequest) -> Result<(), RecordError> {
        self.line.clear();
        encode_line(r, &mut self.line);
        self.line.push(b'\n');
        self.out
            .write_all(&self.line)
            .map_err(|source| RecordError::Io {
                path: self.path.clone(),
                source,
            })?;
        // A 64 MiB body leaves a 90 MiB line buffer behind: give it back.
        if self.line.capacity() > 1 << 20 {
            self.line = Vec::with_capacity(4096);
        }
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|source| RecordError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl OutputWriter for RecordWriter {
    type Item = CapturedRequest;

    fn write(&mut self, item: CapturedRequest) -> std::io::Result<()> {
        RecordWriter::write(self, &item).map_err(std::io::Error::other)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        RecordWriter::flush(self).map_err(std::io::Error::other)
    }
}

/// Reads a recording line by line; empty lines are skipped, errors carry the line number.
pub struct RecordReader<R: BufRead> {
    input: R,
    line: u64,
    buf: Vec<u8>,
    max_line: usize,
}

/// Longest record line read: a request of the largest body kept (64 MiB by default) in base64
/// with its head and fields fits; a longer line is skipped and counted.
pub const MAX_LINE: usize = 128 << 20;

impl<R: BufRead> RecordReader<R> {
    pub fn new(input: R) -> Self {
        Self::with_max_line(input, MAX_LINE)
    }

    /// A reader that skips lines longer than `max_line` bytes.
    pub fn with_max_line(input: R, max_line: usize) -> Self {
        Self {
            input,
            line: 0,
            buf: Vec::new(),
            max_line,
        }
    }
}

impl<R: BufRead> Iterator for RecordReader<R> {
    type Item = Result<CapturedRequest, RecordError>;

    /// The next record, or why the next line is not one. Bad lines (not UTF-8, too long, not
    /// a record) are errors the caller counts and goes past; an I/O error ends the input.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            match read_bounded_line(&mut self.input, &mut self.buf, self.max_line) {
                Ok(LineRead::End) => return None,
                Ok(LineRead::TooLong) => {
                    return Some(Err(RecordError::LineTooLong {
                        line,
                        max: self.max_line,
                    }));
                }
                Ok(LineRead::Complete) => {}
                Err(source) => {
                    return Some(Err(RecordError::Io {
                        path: "<input>".into(),
                        source,
                    }));
                }
            }
            let Ok(text) = std::str::from_utf8(&self.buf) else {
                return Some(Err(RecordError::NotUtf8 { line }));
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(parse(text.trim_end(), line));
        }
    }
}

/// How a bounded line read ended.
enum LineRead {
    /// No more input.
    End,
    /// A line (with its `\n`, or the last one without) is in the buffer.
    Complete,
    /// The line was longer than the bound: skipped to its end, not stored.
    TooLong,
}

/// Reads up to and including the next `\n` into `buf`, storing at most `max` bytes. A longer
/// line is skipped to its end; one that runs on past twice the bound (an endless input such as
/// `/dev/zero`) ends the input with an error, so time and memory stay bounded.
fn read_bounded_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut seen = 0usize;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match seen {
                0 => LineRead::End,
                n if n > max => LineRead::TooLong,
                _ => LineRead::Complete,
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        seen += take;
        if seen <= max {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            buf.clear();
        }
        input.consume(take);
        if done {
            return Ok(if seen > max {
                LineRead::TooLong
            } else {
                LineRead::Complete
            });
        }
        if seen > max.saturating_mul(2) {
            return Err(std::io::Error::other(format!(
                "line without end after {seen} bytes: the rest of the input is not read"
            )));
        }
    }
}

#[cfg(test)]
mod tests;
