//! HTTP/1.x message framing over reassembled byte streams.
//!
//! Owns [`Request`] and the framers: [`request::RequestFramer`] cuts a client byte stream into
//! requests, keeping the exact wire bytes; [`response::ResponseFramer`] cuts a server byte stream
//! into responses (used to pair primary responses and to read mirror responses). Framers are
//! plain state machines: bytes in, events out, no I/O and no clock. What the two framers do
//! alike is written once: body framing (Content-Length, chunks, trailers) in `body`, the item
//! in progress, the cursor over a push and the drop pending while resyncing in `stream`, and
//! head-level helpers (header slots, lines, framing rules) in `head`.
//!
//! Not owned here: reassembly (bytes arrive in order, with gaps reported), pairing requests
//! with responses, and counting drops per flow (the pipeline sums the framers' events).
//!
//! # Framing decisions (RFC 9112), and where they depart from other tools
//! - **Transfer-Encoding with Content-Length**: chunked wins (section 6.3 item 3) and the
//!   request is flagged `te_and_cl` (a request-smuggling signal). Empty list elements are
//!   ignored, so `,\tchunked,` is chunked. A final coding other than chunked cannot be framed.
//! - **Several Content-Length values**: identical ones count as one (RFC 9110 8.6); different
//!   ones, or a non-numeric value, cannot be framed.
//! - **Framing errors** (the two above, broken chunk framing) are unrecoverable (6.3 item 5: the
//!   server answers 400 and closes): the rest of the client stream is one `Malformed` drop.
//!   Resyncing there could turn a smuggled body into a request the primary never served.
//!   A bad head (bad field syntax, unknown version) is dropped and the framer resyncs at the
//!   next request line; limits of ours (head size, header count, body size) drop the request
//!   and carry on, since the primary may well have served it.
//! - **Chunked**: extensions, trailers and bare-LF line ends are accepted; `raw` keeps them.
//! - **Request line without a version** (HTTP/0.9 style): `Version::Http09`. If header lines
//!   follow (seen in the wild, and tshark reads them) they are parsed up to the empty line;
//!   a lone line is complete when the stream ends or a gap follows.
//! - **Upgrade / CONNECT**: the request is emitted; if the next bytes start a request line the
//!   server declined (407, an h2c upgrade not taken) and framing goes on, else `Tunnel` and the
//!   rest is ignored (counted). The HTTP/2 preface gives `Http2`, likewise.
//! - **Gaps**: the request a gap falls in is dropped (`Gap`); if the gap lies inside a body of
//!   known length the framer skips to that body's end, else it resyncs at the next line that
//!   is a plausible request line. Bytes are never joined across a gap.
//! - **`Expect: 100-continue`**: nothing special; the body follows on the stream. A client
//!   that gets a final status instead and skips the body closes the connection (RFC 9110
//!   10.1.1), so that request ends as `Truncated`: its head alone would hang a mirror.
//! - **Responses**: 1xx are informational (several may come before the final one), 101 and a
//!   2xx to CONNECT make the stream a tunnel, HEAD/204/304 have no body, no length means
//!   close-delimited, and a first response without a status line is an HTTP/0.9 body to close.

mod body;
mod head;
pub mod request;
pub mod response;
mod stream;
#[cfg(test)]
mod tests;

use bytes::Bytes;

/// HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A request line without a version (HTTP/0.9 style).
    Http09,
    Http10,
    Http11,
    /// A response decoded from HTTP/2 frames (requests are written as HTTP/1.1).
    Http2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http09 => "HTTP/0.9",
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

/// A piece of text of a request head (the method, the target): where it sits in the request's
/// bytes, so that framing a request does not allocate for it, or its own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// One of RFC 9110's methods ([`standard_method`]): no copy, no UTF-8 check per read.
    Static(&'static str),
    /// Bytes `from..to` of the request, UTF-8 (checked when made).
    At(u32, u32),
    /// Its own copy: the text is not in the request's bytes as UTF-8 (a target with other
    /// bytes, read lossily).
    Own(Box<str>),
}

impl Text {
    /// The text, in `raw` (the request's bytes) when it is there.
    pub fn read<'a>(&'a self, raw: &'a [u8]) -> &'a str {
        match self {
            Text::Static(s) => s,
            Text::Own(s) => s,
            Text::At(from, to) => raw
                .get(*from as usize..*to as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
        }
    }

    /// The method `bytes`, at `from` in `raw`: static when standard, else where it sits.
    pub fn method(raw: &[u8], from: usize, bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes).ok().and_then(standard_method) {
            Some(m) => Text::Static(m),
            None => Self::found(raw, from, bytes),
        }
    }

    /// `bytes` where they sit in `raw`, from `from`, when they are UTF-8 and there; else a
    /// lossy copy of them.
    pub fn found(raw: &[u8], from: usize, bytes: &[u8]) -> Self {
        let to = from + bytes.len();
        match std::str::from_utf8(bytes) {
            Ok(_) if raw.get(from..to) == Some(bytes) && u32::try_from(to).is_ok() => {
                Text::At(from as u32, to as u32)
            }
            _ => Text::Own(String::from_utf8_lossy(bytes).into()),
        }
    }

    /// The request line's method and target, given as text (a recording, a test), located in
    /// `raw` as the framer would have found them: the same representation for the same
    /// request, so requests compare equal however they were made.
    pub fn request_line(raw: &[u8], method: &str, target: &str) -> (Self, Self) {
        let m = if raw.starts_with(method.as_bytes()) {
            Self::method(raw, 0, method.as_bytes())
        } else {
            standard_method(method).map_or_else(|| Text::Own(method.into()), Text::Static)
        };
        let from = method.len() + 1;
        let t = match raw.get(from..from + target.len()) {
            Some(b) if b == target.as_bytes() => Self::found(raw, from, b),
            _ => Text::Own(target.into()),
        };
        (m, t)
    }
}

/// The header fields of a complete head (`head`: the request or status line, fields, empty
/// line), in wire order: (name, value without surrounding whitespace). The head was checked by
/// whoever made it (httparse in the framer), so this only cuts lines; a line without a colon
/// or with a name that is not UTF-8 is passed over.
pub fn head_fields(head: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    head.split_inclusive(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            Some((name, line[colon + 1..].trim_ascii()))
        })
}

/// How a message body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
    /// Response only: body runs until the connection closes.
    CloseDelimited,
}

/// Where one header field sits in a message's bytes, as byte offsets: the whole field line
/// (from its name to after its line end) and its value (without surrounding whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldAt {
    pub line: (usize, usize),
    pub value: (usize, usize),
}

impl FieldAt {
    /// The field whose value lies at `value` in `bytes`: its line runs from after the
    /// previous line end to after the next one. Looks only at that one line.
    pub fn around_value(bytes: &[u8], value: (usize, usize)) -> Self {
        let start = bytes[..value.0]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let end = bytes[value.1..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| value.1 + i + 1);
        Self {
            line: (start, end),
            value,
        }
    }

    /// This field moved by `delta` bytes (its head was rebuilt around it).
    pub fn shifted(self, from: usize, to: usize) -> Self {
        let m = |x: usize| x - from + to;
        Self {
            line: (m(self.line.0), m(self.line.1)),
            value: (m(self.value.0), m(self.value.1)),
        }
    }
}

/// The W3C trace context fields of a request, located by the framer so that nothing
/// downstream parses the head again to find them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFields {
    /// The single `traceparent` field; `None` when absent or repeated (a repeated one is
    /// invalid, W3C trace context 3.2).
    pub traceparent: Option<FieldAt>,
    /// Every `tracestate` field, in order.
    pub tracestate: Vec<FieldAt>,
}

impl TraceFields {
    /// From the header names and the offsets of their values in `raw` (wire order).
    pub fn locate<'a>(
        raw: &[u8],
        fields: impl IntoIterator<Item = (&'a str, (usize, usize))>,
    ) -> Self {
        let mut out = Self::default();
        let mut parents = 0;
        for (name, value) in fields {
            if name.eq_ignore_ascii_case("traceparent") {
                parents += 1;
                out.traceparent = Some(FieldAt::around_value(raw, value));
            } else if name.eq_ignore_ascii_case("tracestate") {
                out.tracestate.push(FieldAt::around_value(raw, value));
            }
        }
        if parents > 1 {
            out.traceparent = None;
        }
        out
    }

    /// Scans the head (`raw[..head_len]`) line by line for the trace fields: for requests
    /// that did not come from the framer (a recording read back, a test).
    pub fn scan_head(raw: &[u8], head_len: usize) -> Self {
        let head = &raw[..head_len.min(raw.len())];
        let base = head.as_ptr() as usize;
        Self::locate(
            raw,
            head_fields(head).map(|(name, value)| {
                let from = value.as_ptr() as usize - base;
                (name, (from, from + value.len()))
            }),
        )
    }

    /// No trace field: the same for every request without trace context, shared.
    pub const NONE: &'static TraceFields = &TraceFields {
        traceparent: None,
        tracestate: Vec::new(),
    };

    /// Shared when there is anything to share: most requests carry no trace context, and
    /// then carry nothing (no allocation, one word in the request).
    pub fn shared(self) -> Option<std::sync::Arc<Self>> {
        (self.traceparent.is_some() || !self.tracestate.is_empty())
            .then(|| std::sync::Arc::new(self))
    }

    /// The value of the single `traceparent` field in `bytes`, as text.
    pub fn traceparent_value<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        let (a, b) = self.traceparent?.value;
        std::str::from_utf8(bytes.get(a..b)?).ok()
    }

    /// The value of the last `tracestate` field in `bytes`, as text.
    pub fn tracestate_value<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        let (a, b) = self.tracestate.last()?.value;
        std::str::from_utf8(bytes.get(a..b)?).ok()
    }
}

/// The method as one of RFC 9110's (section 9), as a static string; `None` for any other
/// (extension methods, WebDAV's, ...). One list for the copies' heads and the telemetry's
/// bounded `http.request.method` values.
pub fn standard_method(m: &str) -> Option<&'static str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD.iter().find(|k| **k == m).copied()
}

/// Whether the connection stays usable after a request with this head (RFC 9112 9.3):
/// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
pub fn keeps_alive(version: Version, head: &[u8]) -> bool {
    persists(version, |token| field_has_token(head, "connection", token))
}

/// Whether a request with this head asks to upgrade its connection: an `Upgrade` field and the
/// `upgrade` connection option (what the framer finds for [`Request::upgrade`]).
pub fn asks_upgrade(head: &[u8]) -> bool {
    head_fields(head).any(|(n, _)| n.eq_ignore_ascii_case("upgrade"))
        && field_has_token(head, "connection", b"upgrade")
}

/// Whether a field `name` of `head` lists `token` (comma-separated, any case).
pub fn field_has_token(head: &[u8], name: &str, token: &[u8]) -> bool {
    head_fields(head)
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The rule of [`keeps_alive`], for any representation of the header fields:
/// `connection_has(token)` says whether a `Connection` field lists `token`.
pub(crate) fn persists(version: Version, connection_has: impl Fn(&[u8]) -> bool) -> bool {
    match version {
        Version::Http11 | Version::Http2 => !connection_has(b"close"),
        Version::Http10 => connection_has(b"keep-alive"),
        Version::Http09 => false,
    }
}

/// One complete HTTP request as the client sent it, with what the framer learned of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The exact request bytes: head and body, chunked framing included.
    pub raw: Bytes,
    /// Length of the head (request line + headers + the empty line) within `raw`.
    pub head_len: usize,
    /// The method; read it with [`Request::method`].
    pub method: Text,
    /// The request target; read it with [`Request::target`].
    pub target: Text,
    pub version: Version,
    pub framing: BodyFraming,
    /// Decoded body length: Content-Length, or the sum of chunk sizes.
    pub body_len: u64,
    /// Capture time of the first byte of the request.
    pub ts_ns: u64,
    /// Capture time of the last byte of the request.
    pub end_ts_ns: u64,
    /// Both Transfer-Encoding and Content-Length were present (RFC 9112 6.3: TE wins); flagged
    /// because it is a request-smuggling signal.
    pub te_and_cl: bool,
    /// The connection stays usable after this request ([`keeps_alive`]).
    pub keep_alive: bool,
    /// The request asks to upgrade the connection (an `Upgrade` field and the `upgrade`
    /// connection option): known from framing, so that only these heads are read again.
    pub upgrade: bool,
    /// Where the trace context fields sit in `raw` (`None`: there are none).
    pub trace: Option<std::sync::Arc<TraceFields>>,
    /// The body was not kept, since no consumer needs it (see
    /// [`request::HttpLimits::omit_bodies_over`]): `raw` is the head only, `body_len` is still
    /// the body's length. Such a request cannot be replayed with its body.
    pub body_omitted: bool,
    /// The request came as this HTTP/2 stream (prior knowledge) and `raw` is its HTTP/1.1
    /// form ([`crate::http2::convert`]).
    pub h2_stream: Option<u32>,
}

impl Request {
    /// Where the trace context fields sit in `raw`.
    pub fn trace_fields(&self) -> &TraceFields {
        self.trace.as_deref().unwrap_or(TraceFields::NONE)
    }
}

impl Request {
    pub fn method(&self) -> &str {
        self.method.read(&self.raw)
    }

    pub fn target(&self) -> &str {
        self.target.read(&self.raw)
    }

    /// The head: request line, fields and the empty line.
    pub fn head(&self) -> &[u8] {
        &self.raw[..self.head_len.min(self.raw.len())]
    }

    /// The header fields in wire order, names as sent, values untouched but for surrounding
    /// whitespace. Read from the head on each call (a request carries no list of them: one
    /// allocation fewer per field and request).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        head_fields(self.head())
    }

    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The Host header as text, if present and valid UTF-8.
    pub fn host(&self) -> Option<&str> {
        self.header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
