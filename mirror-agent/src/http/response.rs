//! Response framing: a server byte stream in, responses (status, sizes, timing) out.
// API agreed between the pipeline, replay and http; implementation in progress.

use super::{BodyFraming, Version, request::HttpLimits};

/// One response, final or informational (1xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub version: Version,
    pub head_len: usize,
    pub framing: BodyFraming,
    pub body_len: u64,
    /// Capture (or receive) time of the first byte.
    pub ts_ns: u64,
    /// Time of the last byte.
    pub end_ts_ns: u64,
}

impl Response {
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseDropReason {
    Gap,
    HeadTooLarge,
    Malformed,
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEvent {
    /// A 1xx response; a final response for the same request follows (except 101).
    Informational(Response),
    /// A final response (status >= 200, or 101 after which the stream is a tunnel).
    Final(Response),
    Dropped {
        reason: ResponseDropReason,
        bytes: u64,
    },
}

/// What the framer must know about the request a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedResponse {
    /// HEAD: the final response has no body whatever its headers say.
    pub head: bool,
    /// CONNECT: a 2xx turns the stream into a tunnel.
    pub connect: bool,
}

/// Cuts one server→client byte stream into responses.
#[derive(Debug)]
pub struct ResponseFramer {
    _limits: HttpLimits,
}

impl ResponseFramer {
    pub fn new(limits: HttpLimits) -> Self {
        Self { _limits: limits }
    }

    /// Queues what the next unanswered request was; call once per request, in order.
    pub fn expect(&mut self, _req: ExpectedResponse) {
        unimplemented!("http framing in progress")
    }

    pub fn push(&mut self, _data: &[u8], _ts_ns: u64, _out: &mut Vec<ResponseEvent>) {
        unimplemented!("http framing in progress")
    }

    pub fn gap(&mut self, _len: u64, _out: &mut Vec<ResponseEvent>) {
        unimplemented!("http framing in progress")
    }

    /// The stream ended: completes a close-delimited body, else reports truncation.
    pub fn finish(&mut self, _ts_ns: u64, _out: &mut Vec<ResponseEvent>) {
        unimplemented!("http framing in progress")
    }
}
