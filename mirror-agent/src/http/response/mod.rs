//! Response framing: a server byte stream in, responses (status, sizes, timing) out.
//!
//! [`ResponseFramer`] owns one server→client byte stream: it finds where each response ends
//! (RFC 9112 section 6.3) and reports status, head and body sizes and timing. It keeps no body
//! bytes: only a head, or one chunk-size or trailer line, is ever buffered (bounded by
//! `max_head_bytes`), so it is cheap enough to read mirror responses off a socket too.
//!
//! What a response means depends on its request (HEAD, CONNECT): the caller queues an
//! [`ExpectedResponse`] per request with [`ResponseFramer::expect`]; with nothing queued a plain
//! GET-like request is assumed.
//!
//! Accounting: every pushed byte ends up in a complete response, a `Dropped` event, or the
//! ignored bytes (blank lines between responses, tunnel bytes) of [`ResponseFramerStats`].

use std::collections::VecDeque;

use bytes::BytesMut;

use super::body::BodyState;
use super::stream::{self, Item, PendingDrop};

mod machine;
mod sample;
#[cfg(test)]
mod tests;
pub use sample::ResponseSample;

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
    /// The head carries `Connection: close`: the server closes the connection after this
    /// response (RFC 9112 9.6), so no further request may be sent on it.
    pub close: bool,
    /// Head and body prefix, only from a framer built [`ResponseFramer::with_capture`] (final
    /// responses only).
    pub capture: Option<Box<ResponseSample>>,
}

impl Response {
    pub fn is_informational(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseDropReason {
    /// Bytes of the response were lost (and the bytes after the gap up to the next status line).
    Gap,
    /// The head (or a trailer section) exceeded `max_head_bytes`.
    HeadTooLarge,
    /// Not parseable as an HTTP/1.x response (bad status line or fields, conflicting
    /// Content-Length, bad chunk framing), or bytes where a status line should start.
    Malformed,
    /// The stream ended in the middle of a response.
    Truncated,
    /// More than `max_headers` header fields.
    TooManyHeaders,
    /// The stream was picked up mid-way: bytes before the first status line.
    Midstream,
}

impl ResponseDropReason {
    /// Stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::HeadTooLarge => "head_too_large",
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::TooManyHeaders => "too_many_headers",
            Self::Midstream => "midstream",
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpectedResponse {
    /// HEAD: the final response has no body whatever its headers say.
    pub head: bool,
    /// CONNECT: a 2xx turns the stream into a tunnel.
    pub connect: bool,
}

/// Byte and response counts. After [`ResponseFramer::finish`],
/// `pushed_bytes == response_bytes + dropped_bytes + ignored_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFramerStats {
    pub pushed_bytes: u64,
    /// Final and informational responses emitted.
    pub responses: u64,
    /// Bytes of emitted responses (heads and bodies).
    pub response_bytes: u64,
    pub dropped_bytes: u64,
    /// Dropped responses whose head had been read, so they took a queued
    /// [`ExpectedResponse`] (a gap or the stream end in the body, an invalid Content-Length).
    /// With the `Final` events this tells exactly how many queued requests were answered.
    pub answers_dropped: u64,
    /// Blank lines between responses, and everything after a tunnel starts.
    pub ignored_bytes: u64,
    /// Of `ignored_bytes`, those after a tunnel started (101, a 2xx to CONNECT): after a 101
    /// to `Upgrade: h2c` they are the server's HTTP/2 frames, which the caller may decode.
    pub tunnel_bytes: u64,
    pub gap_bytes: u64,
}

impl ResponseFramerStats {
    /// Pushed bytes not yet accounted for.
    pub fn in_progress(&self) -> u64 {
        self.pushed_bytes - self.response_bytes - self.dropped_bytes - self.ignored_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SkipLine,
    Head {
        line_start: usize,
        tentative: bool,
    },
    /// In a body of known length or a chunked one (trailers included).
    Body(BodyState),
    /// Close-delimited body: runs to the end of the stream.
    Close,
    Tunnel,
}

/// The response in progress, once its head is parsed.
#[derive(Debug, Clone, Copy)]
struct Current {
    status: u16,
    version: Version,
    framing: BodyFraming,
    /// After this response the stream is a tunnel (101, or 2xx to CONNECT).
    tunnel_after: bool,
    /// This response took a queued expectation.
    took_expectation: bool,
    close: bool,
}

/// What a response head says: status, version, body framing by its headers, and whether the
/// server closes after it.
#[derive(Debug, Clone, Copy)]
struct ParsedHead {
    status: u16,
    version: Version,
    framing: HeaderFraming,
    close: bool,
}

/// Cuts one server→client byte stream into responses.
///
/// ```
/// use mirror_agent::http::request::HttpLimits;
/// use mirror_agent::http::response::{ExpectedResponse, ResponseEvent, ResponseFramer};
///
/// let mut framer = ResponseFramer::new(HttpLimits::default());
/// framer.expect(ExpectedResponse { head: true, connect: false });
/// let mut events = Vec::new();
/// framer.push(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 7, &mut events);
/// let ResponseEvent::Final(r) = &events[1] else { panic!() };
/// assert_eq!((r.status, r.body_len), (200, 0)); // HEAD: no body whatever the headers say
/// ```
#[derive(Debug)]
pub struct ResponseFramer {
    limits: HttpLimits,
    state: State,
    expected: VecDeque<ExpectedResponse>,
    /// The response or resync candidate in progress; its view is a head or one line.
    item: Item,
    last_ts: u64,
    current: Option<Current>,
    /// A gap fell inside the current response's body: it ends as a Gap drop.
    damaged: bool,
    /// A response head was seen (or a drop happened): an HTTP/0.9 response is only possible
    /// as the first thing on a stream.
    seen_message: bool,
    resync: PendingDrop<ResponseDropReason>,
    stats: ResponseFramerStats,
    /// Body prefix kept per response (`Some`: capture on, see [`ResponseSample`]).
    capture_limit: Option<usize>,
    /// The capture of the response in progress.
    capture: Option<Box<ResponseSample>>,
}

/// One pushed buffer being consumed.
type Cur<'a> = stream::Cur<'a, [u8]>;

const HEAD_STATE: State = State::Head {
    line_start: 0,
    tentative: false,
};
const RESYNC_STATE: State = State::Head {
    line_start: 0,
    tentative: true,
};

impl State {
    /// Where to look for the next status line after bad bytes: at the next line start if
    /// the last consumed byte ended a line, else after skipping to the next line end.
    fn resync_at(at_line_start: bool) -> Self {
        if at_line_start {
            RESYNC_STATE
        } else {
            State::SkipLine
        }
    }
}

impl ResponseFramer {
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            state: HEAD_STATE,
            expected: VecDeque::new(),
            item: Item::default(),
            last_ts: 0,
            current: None,
            damaged: false,
            seen_message: false,
            resync: PendingDrop::none(),
            stats: ResponseFramerStats::default(),
            capture_limit: None,
            capture: None,
        }
    }

    /// For a stream picked up without its start: bytes are skipped (counted as
    /// [`ResponseDropReason::Midstream`]) until a line starts with a status line.
    pub fn new_midstream(limits: HttpLimits) -> Self {
        let mut f = Self::new(limits);
        f.seen_message = true;
        f.resync = PendingDrop::from_start(ResponseDropReason::Midstream);
        f.state = RESYNC_STATE;
        f
    }

    pub fn stats(&self) -> &ResponseFramerStats {
        &self.stats
    }

    /// Bytes held in memory (a head or one line in progress, at most `max_head_bytes + 1`,
    /// plus the capture of the response in progress when capture is on).
    pub fn buffered_bytes(&self) -> usize {
        self.item.buf.len() + self.capture_held()
    }

    /// A final response's head has been read (taking its request's expectation) and its body
    /// is not complete yet.
    pub fn response_open(&self) -> bool {
        self.current.is_some()
    }

    /// Requests queued and not yet answered by a final response.
    pub fn pending_expectations(&self) -> usize {
        self.expected.len()
    }

    /// Queues what the next unanswered request was; call once per request, in order.
    pub fn expect(&mut self, req: ExpectedResponse) {
        self.expected.push_back(req);
    }

    pub fn push(&mut self, data: &[u8], ts_ns: u64, out: &mut Vec<ResponseEvent>) {
        self.stats.pushed_bytes += data.len() as u64;
        self.last_ts = ts_ns;
        let mut cur = Cur::new(data);
        while cur.pos < data.len() {
            if self.item.len == 0 {
                self.item.ts = ts_ns;
            }
            self.step(&mut cur, out);
        }
        if !self.item.spanning && cur.start < cur.pos {
            self.item.buf.extend_from_slice(&data[cur.start..cur.pos]);
            self.item.spanning = true;
        }
    }

    pub fn gap(&mut self, len: u64, out: &mut Vec<ResponseEvent>) {
        self.stats.gap_bytes += len;
        self.seen_message = true;
        if let State::Body(body) = self.state
            && let Some(after) = body.after_gap(len)
        {
            // Inside a body of known length: this response is lost (reported as a Gap
            // drop when it ends) but the next one starts where the framing says, so the
            // framer stays paired with its requests.
            self.damaged = true;
            self.state = State::Body(after);
            return;
        }
        match self.state {
            State::Tunnel => return,
            State::SkipLine
            | State::Head {
                tentative: true, ..
            } => self.discard_item_into_resync(),
            _ => {
                if self.item.len > 0 {
                    self.drop_item(ResponseDropReason::Gap, out);
                }
            }
        }
        let earlier = self.resync.start(ResponseDropReason::Gap);
        self.report(earlier, out);
        self.state = RESYNC_STATE;
    }

    /// The stream ended: completes a close-delimited body, else reports truncation. The framer
    /// is then ready for a new stream.
    pub fn finish(&mut self, _ts_ns: u64, out: &mut Vec<ResponseEvent>) {
        match self.state {
            State::Tunnel => {}
            State::Close => self.complete(out),
            State::SkipLine
            | State::Head {
                tentative: true, ..
            } => self.discard_item_into_resync(),
            _ => {
                if self.item.len > 0 {
                    let reason = if self.damaged {
                        ResponseDropReason::Gap
                    } else {
                        ResponseDropReason::Truncated
                    };
                    self.drop_item(reason, out);
                }
            }
        }
        self.flush_resync(out);
        self.reset_item();
        self.seen_message = false;
        self.state = HEAD_STATE;
    }

    // ---- view and drops ----

    fn discard_view(&mut self, cur: &mut Cur<'_>) {
        if self.item.spanning {
            self.item.buf.clear();
            self.item.spanning = false;
        }
        cur.start = cur.pos;
    }

    fn reset_item(&mut self) {
        self.item.reset_counts();
        self.current = None;
        self.damaged = false;
        self.capture = None;
        if self.item.spanning {
            self.item.buf.clear();
            self.item.spanning = false;
        }
        if self.item.buf.capacity() > 2 * self.limits.max_head_bytes.max(4096) {
            self.item.buf = BytesMut::new();
        }
    }

    fn flush_resync(&mut self, out: &mut Vec<ResponseEvent>) {
        let pending = self.resync.take();
        self.report(pending, out);
    }

    fn report(&mut self, drop: Option<(ResponseDropReason, u64)>, out: &mut Vec<ResponseEvent>) {
        if let Some((reason, bytes)) = drop {
            self.stats.dropped_bytes += bytes;
            out.push(ResponseEvent::Dropped { reason, bytes });
        }
    }

    fn drop_item(&mut self, reason: ResponseDropReason, out: &mut Vec<ResponseEvent>) {
        let bytes = self.item.len;
        if self.current.is_some_and(|c| c.took_expectation) {
            self.stats.answers_dropped += 1;
        }
        self.reset_item();
        let earlier = self.resync.add(reason, bytes);
        self.report(earlier, out);
    }

    fn discard_item_into_resync(&mut self) {
        let bytes = self.item.len;
        self.reset_item();
        self.resync.add_any(bytes, ResponseDropReason::Malformed);
    }

    fn fail(
        &mut self,
        cur: &mut Cur<'_>,
        reason: ResponseDropReason,
        at_line_start: bool,
        out: &mut Vec<ResponseEvent>,
    ) {
        self.drop_item(reason, out);
        cur.start = cur.pos;
        self.state = State::resync_at(at_line_start);
    }
}

/// What the headers alone say about the body.
#[derive(Debug, Clone, Copy)]
enum HeaderFraming {
    Chunked,
    Length(u64),
    Close,
    Invalid,
}

/// Every status line starts with this (RFC 9112 section 4); used when resyncing.
const STATUS_PREFIX: &[u8] = b"HTTP/1.";
