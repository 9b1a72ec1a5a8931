//! Request framing: a client byte stream in, [`Request`]s out.
// API agreed between the pipeline and http; implementation in progress.

use bytes::Bytes;

use super::Request;

/// Bounds on what a framer buffers.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
        }
    }
}

/// Why bytes of a client stream did not become a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestDropReason {
    /// Bytes of the request were lost in capture.
    Gap,
    /// The head exceeded `max_head_bytes`.
    HeadTooLarge,
    /// More than `max_headers` header fields.
    TooManyHeaders,
    /// Not parseable as an HTTP/1.x request.
    Malformed,
    /// The stream ended in the middle of a request.
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestEvent {
    Request(Request),
    /// Bytes skipped, with the reason. `bytes` counts stream bytes discarded.
    Dropped {
        reason: RequestDropReason,
        bytes: u64,
    },
    /// Upgrade / CONNECT: the request itself is emitted first; everything after it on this
    /// stream is not HTTP/1.x and is ignored.
    Tunnel,
    /// The stream starts with the HTTP/2 prior-knowledge preface; it is ignored from here on.
    Http2,
}

/// Cuts one client→server byte stream into requests.
#[derive(Debug)]
pub struct RequestFramer {
    _limits: HttpLimits,
}

impl RequestFramer {
    /// `midstream`: the stream was picked up without its start, so bytes are skipped until a
    /// request line begins.
    pub fn new(limits: HttpLimits, _midstream: bool) -> Self {
        Self { _limits: limits }
    }

    pub fn push(&mut self, _data: &Bytes, _ts_ns: u64, _out: &mut Vec<RequestEvent>) {
        unimplemented!("http framing in progress")
    }

    /// `len` bytes are missing at this point: drop the request in progress and resync at the
    /// next request line.
    pub fn gap(&mut self, _len: u64, _out: &mut Vec<RequestEvent>) {
        unimplemented!("http framing in progress")
    }

    /// The stream ended.
    pub fn finish(&mut self, _out: &mut Vec<RequestEvent>) {
        unimplemented!("http framing in progress")
    }
}
