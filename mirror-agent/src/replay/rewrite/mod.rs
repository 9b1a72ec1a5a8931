//! What a mirror receives: by default the client's exact bytes; explicit options change the head.
//!
//! Owns the header options (`--mirror-header`, `--strip-header`, `--host-mode`), body handling
//! (`--mirror-body=false`, `--max-body-size`, as Traefik's `mirrorBody`/`maxBodySize`) and the
//! rebuild of the request head. Without options the request's `raw` is passed on as the same
//! `Bytes` (no copy). With options only the head is rebuilt, line by line from the wire head, so
//! every line no option touches keeps its bytes (case, spacing, order); the body is appended as is.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::http::{BodyFraming, Request, TraceFields};

/// Why a rewrite option was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RewriteError {
    #[error("bad header `{spec}`: expected 'Name: value' with a token name and no line breaks")]
    BadHeader { spec: String },
    #[error("bad header name `{name}`")]
    BadHeaderName { name: String },
    #[error("bad host mode `{mode}` (expected keep, mirror or suffix)")]
    BadHostMode { mode: String },
}

/// What happens to the Host header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostMode {
    /// Keep the client's Host (default): the mirror sees the request as the primary did.
    #[default]
    Keep,
    /// Set Host to the mirror's `host:port` (for mirrors that route by Host).
    Mirror,
    /// Append a suffix to the host name, before any port, as Envoy appends `-shadow`.
    Suffix(String),
}

impl HostMode {
    pub fn parse(mode: &str, suffix: &str) -> Result<Self, RewriteError> {
        match mode.trim().to_ascii_lowercase().as_str() {
            "keep" => Ok(HostMode::Keep),
            "mirror" => Ok(HostMode::Mirror),
            "suffix" => Ok(HostMode::Suffix(suffix.to_string())),
            _ => Err(RewriteError::BadHostMode { mode: mode.into() }),
        }
    }
}

/// Options shared by all mirrors.
#[derive(Debug, Clone)]
pub struct RewriteOptions {
    /// Headers to set (replacing any with the same name) or add, in order.
    pub set_headers: Vec<(String, String)>,
    /// Header names to remove.
    pub strip_headers: Vec<String>,
    pub host: HostMode,
    /// false: send requests without their body, `Content-Length: 0`.
    pub mirror_body: bool,
    /// Skip requests whose decoded body is larger (only when bodies are mirrored).
    pub max_body_size: Option<u64>,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            set_headers: Vec::new(),
            strip_headers: Vec::new(),
            host: HostMode::Keep,
            mirror_body: true,
            max_body_size: None,
        }
    }
}

/// Parses `'Name: value'` for `--mirror-header`.
pub fn parse_header(spec: &str) -> Result<(String, String), RewriteError> {
    let bad = || RewriteError::BadHeader { spec: spec.into() };
    let (name, value) = spec.split_once(':').ok_or_else(bad)?;
    let value = value.trim();
    if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(bad());
    }
    Ok((name.to_string(), value.to_string()))
}

/// Validates a header name for `--strip-header`.
pub fn parse_header_name(name: &str) -> Result<String, RewriteError> {
    let name = name.trim();
    if is_token(name) {
        Ok(name.to_string())
    } else {
        Err(RewriteError::BadHeaderName { name: name.into() })
    }
}

/// RFC 9110 5.6.2 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a request is not sent to a mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    BodyTooLarge,
}

/// One mirror's rewriter (Host mode `mirror` needs the mirror's authority).
#[derive(Debug, Clone)]
pub struct Rewriter {
    opts: RewriteOptions,
    authority: String,
    identity: bool,
}

impl Rewriter {
    pub fn new(opts: RewriteOptions, mirror_authority: String) -> Self {
        let identity = opts.set_headers.is_empty()
            && opts.strip_headers.is_empty()
            && opts.host == HostMode::Keep
            && opts.mirror_body;
        Self {
            opts,
            authority: mirror_authority,
            identity,
        }
    }

    /// The bytes to send for `req`, and where its trace context fields sit in them.
    pub fn apply(&self, req: &Request) -> Result<(Bytes, Option<Arc<TraceFields>>), Skip> {
        if self.opts.mirror_body
            && (req.body_omitted
                || self
                    .opts
                    .max_body_size
                    .is_some_and(|max| req.body_len > max))
        {
            // An omitted body is one over every mirror's maxBodySize (config sets the bound).
            return Err(Skip::BodyTooLarge);
        }
        if self.identity {
            return Ok((req.raw.clone(), req.trace.clone()));
        }
        Ok(self.rebuild(req))
    }

    /// The request with its head rebuilt once; the trace fields are located while the lines
    /// are copied, so nothing parses the new head again.
    fn rebuild(&self, req: &Request) -> (Bytes, Option<Arc<TraceFields>>) {
        let head_len = req.head_len.min(req.raw.len());
        let head = &req.raw[..head_len];
        let drop_body = !self.opts.mirror_body && req.framing != BodyFraming::None;
        let mut out = BytesMut::with_capacity(head_len + 128);
        let mut set_done = vec![false; self.opts.set_headers.len()];
        let mut host_done = false;
        let mut length_done = false;
        // Trace context fields kept as they were: (name, value range in `out`).
        let mut trace_fields: Vec<(&str, (usize, usize))> = Vec::new();
        let mut lines = Lines { buf: head, pos: 0 };
        // Request line unchanged.
        if let Some(line) = lines.next() {
            out.put_slice(line);
        }
        let mut keep_continuation = true;
        let mut tail: &[u8] = b"\r\n";
        for line in lines.by_ref() {
            let content = trim_eol(line);
            if content.is_empty() {
                tail = line; // the empty line ending the head, kept as sent (CRLF or LF)
                break;
            }
            if content[0] == b' ' || content[0] == b'\t' {
                // obs-fold continuation (RFC 9112 5.2): follows the fate of its field.
                if keep_continuation {
                    out.put_slice(line);
                }
                continue;
            }
            let name = content
                .iter()
                .position(|&b| b == b':')
                .map_or(content, |i| &content[..i]);
            keep_continuation = false;
            if self.opts.strip_headers.iter().any(|s| eq(s, name)) {
                continue;
            }
            if let Some(i) = self.opts.set_headers.iter().position(|(n, _)| eq(n, name)) {
                if !set_done[i] {
                    set_done[i] = true;
                    put_header(
                        &mut out,
                        &self.opts.set_headers[i].0,
                        &self.opts.set_headers[i].1,
                    );
                }
                continue;
            }
            if eq("host", name) && self.opts.host != HostMode::Keep {
                if !host_done {
                    host_done = true;
                    let value = trim_ows(&content[name.len() + 1..]);
                    let value = self.host_value(&String::from_utf8_lossy(value));
                    put_header(&mut out, &String::from_utf8_lossy(name), &value);
                }
                continue;
            }
            if drop_body && (eq("content-length", name) || eq("transfer-encoding", name)) {
                if !length_done {
                    length_done = true;
                    put_header(&mut out, "Content-Length", "0");
                }
                continue;
            }
            keep_continuation = true;
            if eq("traceparent", name) || eq("tracestate", name) {
                let value = trim_ows(&content[name.len().min(content.len() - 1) + 1..]);
                let from = out.len() + (value.as_ptr() as usize - line.as_ptr() as usize);
                let name = if eq("traceparent", name) {
                    "traceparent"
                } else {
                    "tracestate"
                };
                trace_fields.push((name, (from, from + value.len())));
            }
            out.put_slice(line);
        }
        if drop_body && !length_done {
            put_header(&mut out, "Content-Length", "0");
        }
        if self.opts.host == HostMode::Mirror
            && !host_done
            && !self.opts.set_headers.iter().any(|(n, _)| eq(n, b"host"))
        {
            put_header(&mut out, "Host", &self.authority);
        }
        for (i, (n, v)) in self.opts.set_headers.iter().enumerate() {
            if !set_done[i] {
                put_header(&mut out, n, v);
            }
        }
        out.put_slice(tail);
        if !drop_body {
            out.put_slice(&req.raw[head_len..]);
        }
        let out = out.freeze();
        let trace = TraceFields::locate(&out, trace_fields).shared();
        (out, trace)
    }

    fn host_value(&self, original: &str) -> String {
        match &self.opts.host {
            HostMode::Keep => original.to_string(),
            HostMode::Mirror => self.authority.clone(),
            HostMode::Suffix(sfx) => {
                // Before the port, so `api:8080` becomes `api-shadow:8080` (Envoy does the same).
                let port_at = original
                    .rfind(':')
                    .filter(|&i| !original[i..].contains(']'));
                match port_at {
                    Some(i) => format!("{}{}{}", &original[..i], sfx, &original[i..]),
                    None => format!("{original}{sfx}"),
                }
            }
        }
    }
}

fn eq(a: impl AsRef<[u8]>, b: &[u8]) -> bool {
    a.as_ref().eq_ignore_ascii_case(b)
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b" \t".contains(b))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b" \t".contains(b))
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// Lines of a head, each with its own line ending (`\n` or `\r\n`).
struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        self.pos += len;
        Some(&rest[..len])
    }
}

#[cfg(test)]
mod tests;
