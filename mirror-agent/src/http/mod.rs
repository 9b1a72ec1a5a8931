//! HTTP/1.x message framing over reassembled byte streams.
//!
//! Owns [`Request`] and the framers: [`request::RequestFramer`] cuts a client byte stream into
//! requests, keeping the exact wire bytes; [`response::ResponseFramer`] cuts a server byte stream
//! into responses (used to pair primary responses and to read mirror responses). Framers are
//! plain state machines: bytes in, events out, no I/O and no clock.
//!
//! Not owned here: reassembly (bytes arrive in order, with gaps reported), pairing requests
//! with responses, and counting drops per flow (the pipeline sums the framers' events).

mod head;
pub mod request;
pub mod response;
#[cfg(test)]
mod response_tests;
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
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http09 => "HTTP/0.9",
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One header field exactly as on the wire (name case kept, value bytes untouched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
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

/// One complete HTTP request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The exact request bytes: head and body, chunked framing included.
    pub raw: Bytes,
    /// Length of the head (request line + headers + the empty line) within `raw`.
    pub head_len: usize,
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<Header>,
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
}

impl Request {
    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }

    /// The Host header as text, if present and valid UTF-8.
    pub fn host(&self) -> Option<&str> {
        self.header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
