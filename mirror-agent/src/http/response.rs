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

use super::head::{self, TransferEncoding};
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
    /// Blank lines between responses, and everything after a tunnel starts.
    pub ignored_bytes: u64,
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
    Body {
        remaining: u64,
    },
    ChunkSize {
        line_start: usize,
    },
    ChunkData {
        remaining: u64,
    },
    ChunkEnd {
        line_start: usize,
    },
    Trailer {
        line_start: usize,
    },
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
}

/// Cuts one server→client byte stream into responses.
#[derive(Debug)]
pub struct ResponseFramer {
    limits: HttpLimits,
    state: State,
    expected: VecDeque<ExpectedResponse>,
    /// The view (current head or line) when it spans pushes.
    buf: Vec<u8>,
    spanning: bool,
    item_len: u64,
    item_ts: u64,
    last_ts: u64,
    head_len: usize,
    body_len: u64,
    trailer_len: usize,
    current: Option<Current>,
    /// A response head was seen (or a drop happened): an HTTP/0.9 response is only possible
    /// as the first thing on a stream.
    seen_message: bool,
    resync: Option<(ResponseDropReason, u64)>,
    stats: ResponseFramerStats,
}

struct Cur<'a> {
    data: &'a [u8],
    pos: usize,
    start: usize,
}

const HEAD_STATE: State = State::Head {
    line_start: 0,
    tentative: false,
};
const RESYNC_STATE: State = State::Head {
    line_start: 0,
    tentative: true,
};

impl ResponseFramer {
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            state: HEAD_STATE,
            expected: VecDeque::new(),
            buf: Vec::new(),
            spanning: false,
            item_len: 0,
            item_ts: 0,
            last_ts: 0,
            head_len: 0,
            body_len: 0,
            trailer_len: 0,
            current: None,
            seen_message: false,
            resync: None,
            stats: ResponseFramerStats::default(),
        }
    }

    /// For a stream picked up without its start: bytes are skipped (counted as
    /// [`ResponseDropReason::Midstream`]) until a line starts with a status line.
    pub fn new_midstream(limits: HttpLimits) -> Self {
        let mut f = Self::new(limits);
        f.seen_message = true;
        f.resync = Some((ResponseDropReason::Midstream, 0));
        f.state = RESYNC_STATE;
        f
    }

    pub fn stats(&self) -> &ResponseFramerStats {
        &self.stats
    }

    /// Bytes held in memory (a head or one line in progress); at most `max_head_bytes + 1`.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
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
        let mut cur = Cur {
            data,
            pos: 0,
            start: 0,
        };
        while cur.pos < data.len() {
            if self.item_len == 0 {
                self.item_ts = ts_ns;
            }
            self.step(&mut cur, out);
        }
        if !self.spanning && cur.start < cur.pos {
            self.buf.extend_from_slice(&data[cur.start..cur.pos]);
            self.spanning = true;
        }
    }

    pub fn gap(&mut self, len: u64, out: &mut Vec<ResponseEvent>) {
        self.stats.gap_bytes += len;
        self.seen_message = true;
        match self.state {
            State::Tunnel => return,
            State::SkipLine
            | State::Head {
                tentative: true, ..
            } => self.discard_item_into_resync(),
            _ => {
                if self.item_len > 0 {
                    self.drop_item(ResponseDropReason::Gap, out);
                }
            }
        }
        if !matches!(self.resync, Some((ResponseDropReason::Gap, _))) {
            self.flush_resync(out);
            self.resync = Some((ResponseDropReason::Gap, 0));
        }
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
                if self.item_len > 0 {
                    self.drop_item(ResponseDropReason::Truncated, out);
                }
            }
        }
        self.flush_resync(out);
        self.reset_item();
        self.seen_message = false;
        self.state = HEAD_STATE;
    }

    // ---- view and drops ----

    fn view<'s>(&'s self, cur: &'s Cur<'_>) -> &'s [u8] {
        if self.spanning {
            &self.buf
        } else {
            &cur.data[cur.start..cur.pos]
        }
    }

    fn take(&mut self, cur: &mut Cur<'_>, n: usize) {
        if self.spanning {
            self.buf.extend_from_slice(&cur.data[cur.pos..cur.pos + n]);
        }
        cur.pos += n;
        self.item_len += n as u64;
    }

    fn discard_view(&mut self, cur: &mut Cur<'_>) {
        if self.spanning {
            self.buf.clear();
            self.spanning = false;
        }
        cur.start = cur.pos;
    }

    /// See `RequestFramer::take_line`: consumes through the next LF without letting the view
    /// grow past `limit + 1`.
    fn take_line(&mut self, cur: &mut Cur<'_>, limit: usize) -> bool {
        let data = cur.data;
        let avail = &data[cur.pos..];
        let room = limit.saturating_add(1).saturating_sub(self.view(cur).len());
        let window = &avail[..avail.len().min(room.max(1))];
        match head::find_line_end(window) {
            Some(n) => {
                self.take(cur, n);
                true
            }
            None => {
                self.take(cur, window.len());
                false
            }
        }
    }

    fn reset_item(&mut self) {
        self.item_len = 0;
        self.head_len = 0;
        self.body_len = 0;
        self.trailer_len = 0;
        self.current = None;
        if self.spanning {
            self.buf.clear();
            self.spanning = false;
        }
        if self.buf.capacity() > 2 * self.limits.max_head_bytes.max(4096) {
            self.buf = Vec::new();
        }
    }

    fn flush_resync(&mut self, out: &mut Vec<ResponseEvent>) {
        if let Some((reason, bytes)) = self.resync.take()
            && bytes > 0
        {
            self.stats.dropped_bytes += bytes;
            out.push(ResponseEvent::Dropped { reason, bytes });
        }
    }

    fn drop_item(&mut self, reason: ResponseDropReason, out: &mut Vec<ResponseEvent>) {
        let bytes = self.item_len;
        self.reset_item();
        match &mut self.resync {
            Some((r, b)) if *r == reason => *b += bytes,
            _ => {
                self.flush_resync(out);
                self.resync = Some((reason, bytes));
            }
        }
    }

    fn discard_item_into_resync(&mut self) {
        let bytes = self.item_len;
        self.reset_item();
        match &mut self.resync {
            Some((_, b)) => *b += bytes,
            None => self.resync = Some((ResponseDropReason::Malformed, bytes)),
        }
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
        self.state = if at_line_start {
            RESYNC_STATE
        } else {
            State::SkipLine
        };
    }

    // ---- the state machine ----

    fn step(&mut self, cur: &mut Cur<'_>, out: &mut Vec<ResponseEvent>) {
        let data = cur.data;
        let avail = &data[cur.pos..];
        match self.state {
            State::Tunnel => {
                self.stats.ignored_bytes += avail.len() as u64;
                cur.pos = data.len();
                cur.start = cur.pos;
            }
            State::SkipLine => {
                let n = head::find_line_end(avail).unwrap_or(avail.len());
                if let Some((_, b)) = &mut self.resync {
                    *b += n as u64;
                }
                cur.pos += n;
                cur.start = cur.pos;
                if data[cur.pos - 1] == b'\n' {
                    self.state = RESYNC_STATE;
                }
            }
            State::Head {
                line_start,
                tentative,
            } => self.step_head(cur, line_start, tentative, out),
            State::Body { remaining } => {
                let n = remaining.min(avail.len() as u64);
                cur.pos += n as usize;
                self.item_len += n;
                cur.start = cur.pos;
                self.state = State::Body {
                    remaining: remaining - n,
                };
                if remaining == n {
                    self.complete(out);
                }
            }
            State::Close => {
                self.item_len += avail.len() as u64;
                self.body_len += avail.len() as u64;
                cur.pos = data.len();
                cur.start = cur.pos;
            }
            State::ChunkSize { line_start } => {
                let limit = line_start + head::MAX_CHUNK_LINE.min(self.limits.max_head_bytes);
                let complete = self.take_line(cur, limit);
                if self.view(cur).len() > limit {
                    self.fail(cur, ResponseDropReason::Malformed, complete, out);
                    return;
                }
                if !complete {
                    return;
                }
                let size = head::parse_chunk_size_line(&self.view(cur)[line_start..]);
                let Some(body_len) = size.and_then(|s| self.body_len.checked_add(s)) else {
                    self.fail(cur, ResponseDropReason::Malformed, true, out);
                    return;
                };
                let size = body_len - self.body_len;
                self.body_len = body_len;
                self.discard_view(cur);
                self.state = if size == 0 {
                    State::Trailer { line_start: 0 }
                } else {
                    State::ChunkData { remaining: size }
                };
            }
            State::ChunkData { remaining } => {
                let n = remaining.min(avail.len() as u64);
                cur.pos += n as usize;
                self.item_len += n;
                cur.start = cur.pos;
                self.state = if remaining == n {
                    State::ChunkEnd { line_start: 0 }
                } else {
                    State::ChunkData {
                        remaining: remaining - n,
                    }
                };
            }
            State::ChunkEnd { line_start } => {
                let limit = line_start + 2;
                let complete = self.take_line(cur, limit);
                if !complete {
                    if self.view(cur).len() > limit {
                        self.fail(cur, ResponseDropReason::Malformed, false, out);
                    }
                    return;
                }
                if !head::is_blank_line(&self.view(cur)[line_start..]) {
                    self.fail(cur, ResponseDropReason::Malformed, true, out);
                    return;
                }
                self.discard_view(cur);
                self.state = State::ChunkSize { line_start: 0 };
            }
            State::Trailer { line_start } => {
                let room = self.limits.max_head_bytes.saturating_sub(self.trailer_len);
                let limit = line_start + room;
                let complete = self.take_line(cur, limit);
                if self.view(cur).len() > limit {
                    self.fail(cur, ResponseDropReason::HeadTooLarge, complete, out);
                    return;
                }
                if !complete {
                    return;
                }
                let line = &self.view(cur)[line_start..];
                let blank = head::is_blank_line(line);
                self.trailer_len += line.len();
                self.discard_view(cur);
                if blank {
                    self.complete(out);
                } else {
                    self.state = State::Trailer { line_start: 0 };
                }
            }
        }
    }

    fn step_head(
        &mut self,
        cur: &mut Cur<'_>,
        line_start: usize,
        tentative: bool,
        out: &mut Vec<ResponseEvent>,
    ) {
        let max_head = self.limits.max_head_bytes;
        let complete = self.take_line(cur, max_head);
        let view_len = self.view(cur).len();
        if view_len > max_head {
            if tentative {
                self.discard_item_into_resync();
                cur.start = cur.pos;
                self.state = if complete {
                    RESYNC_STATE
                } else {
                    State::SkipLine
                };
            } else {
                self.fail(cur, ResponseDropReason::HeadTooLarge, complete, out);
            }
            return;
        }
        let view = self.view(cur);
        if line_start == 0 && tentative {
            // Resyncing: the line must start like a status line.
            let n = view.len().min(STATUS_PREFIX.len());
            if view[..n] != STATUS_PREFIX[..n] {
                self.discard_item_into_resync();
                cur.start = cur.pos;
                self.state = if complete {
                    RESYNC_STATE
                } else {
                    State::SkipLine
                };
                return;
            }
        }
        if line_start == 0 && !tentative && !self.seen_message {
            // The first bytes of the stream do not start a status line: an HTTP/0.9 response
            // (body only, until close), as tshark and curl --http0.9 read it.
            let n = view.len().min(5);
            if view[..n] != b"HTTP/"[..n] && !head::is_blank_line(view) && view != b"\r" {
                let consumed = self.item_len;
                self.discard_view(cur);
                self.seen_message = true;
                self.expected.pop_front();
                self.current = Some(Current {
                    status: 200,
                    version: Version::Http09,
                    framing: BodyFraming::CloseDelimited,
                    tunnel_after: false,
                });
                self.body_len = consumed;
                self.state = State::Close;
                return;
            }
        }
        if line_start == 0 && !tentative {
            // Every status line starts with "HTTP/": fail early rather than wait for a head end.
            let n = view.len().min(5);
            if view[..n] != b"HTTP/"[..n] && !head::is_blank_line(view) && view != b"\r" {
                self.fail(cur, ResponseDropReason::Malformed, complete, out);
                return;
            }
        }
        if !complete {
            return;
        }
        let line = &view[line_start..];
        if line_start == 0 {
            if head::is_blank_line(line) {
                // Blank lines between messages are ignored (RFC 9112 section 2.2).
                if tentative {
                    self.discard_item_into_resync();
                } else {
                    self.stats.ignored_bytes += self.item_len;
                    self.reset_item();
                }
                cur.start = cur.pos;
                return;
            }
            if tentative {
                self.flush_resync(out);
            }
            self.state = State::Head {
                line_start: view_len,
                tentative: false,
            };
            return;
        }
        if !head::is_blank_line(line) {
            self.state = State::Head {
                line_start: view_len,
                tentative: false,
            };
            return;
        }
        let parsed = self.parse_head(view);
        self.head_len = view_len;
        self.seen_message = true;
        match parsed {
            Ok((status, version, body)) => {
                self.discard_view(cur);
                self.start_body(status, version, body, out);
            }
            Err(reason) => self.fail(cur, reason, true, out),
        }
    }

    /// Parses a complete head; returns status, version and what the headers say of the body.
    fn parse_head(&self, view: &[u8]) -> Result<(u16, Version, HeaderFraming), ResponseDropReason> {
        let mut storage = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut resp = httparse::Response::new(&mut storage);
        match resp.parse(view) {
            Ok(httparse::Status::Complete(n)) if n == view.len() => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ResponseDropReason::TooManyHeaders);
            }
            _ => return Err(ResponseDropReason::Malformed),
        }
        let version = match resp.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(ResponseDropReason::Malformed),
        };
        let status = resp.code.ok_or(ResponseDropReason::Malformed)?;
        let headers = &*resp.headers;
        let framing = match head::transfer_encoding(headers) {
            TransferEncoding::Chunked => HeaderFraming::Chunked,
            // RFC 9112 6.3 item 4: a response whose final coding is not chunked runs to close.
            TransferEncoding::Other => HeaderFraming::Close,
            TransferEncoding::Absent => match head::content_length(headers) {
                Ok(Some(n)) => HeaderFraming::Length(n),
                Ok(None) => HeaderFraming::Close,
                Err(()) => HeaderFraming::Invalid,
            },
        };
        Ok((status, version, framing))
    }

    /// RFC 9112 section 6.3: which body the response has, given its request.
    fn start_body(
        &mut self,
        status: u16,
        version: Version,
        headers: HeaderFraming,
        out: &mut Vec<ResponseEvent>,
    ) {
        let informational = (100..200).contains(&status) && status != 101;
        let expected = if informational {
            self.expected.front().copied().unwrap_or_default()
        } else {
            self.expected.pop_front().unwrap_or_default()
        };
        let connect_ok = expected.connect && (200..300).contains(&status);
        let no_body = (100..200).contains(&status)
            || status == 204
            || status == 304
            || expected.head
            || connect_ok;
        let framing = if no_body {
            BodyFraming::None
        } else {
            match headers {
                HeaderFraming::Chunked => BodyFraming::Chunked,
                HeaderFraming::Length(n) => BodyFraming::ContentLength(n),
                HeaderFraming::Close => BodyFraming::CloseDelimited,
                HeaderFraming::Invalid => {
                    // Item 5: an invalid Content-Length makes the response unframeable.
                    self.drop_item(ResponseDropReason::Malformed, out);
                    self.state = RESYNC_STATE;
                    return;
                }
            }
        };
        self.current = Some(Current {
            status,
            version,
            framing,
            tunnel_after: status == 101 || connect_ok,
        });
        self.state = match framing {
            BodyFraming::ContentLength(n) if n > 0 => State::Body { remaining: n },
            BodyFraming::Chunked => State::ChunkSize { line_start: 0 },
            BodyFraming::CloseDelimited => State::Close,
            _ => {
                self.complete(out);
                return;
            }
        };
    }

    fn complete(&mut self, out: &mut Vec<ResponseEvent>) {
        let Some(c) = self.current else {
            return;
        };
        let body_len = match c.framing {
            BodyFraming::ContentLength(n) => n,
            _ => self.body_len,
        };
        let response = Response {
            status: c.status,
            version: c.version,
            head_len: self.head_len,
            framing: c.framing,
            body_len,
            ts_ns: self.item_ts,
            end_ts_ns: self.last_ts,
        };
        self.stats.responses += 1;
        self.stats.response_bytes += self.item_len;
        out.push(if (100..200).contains(&c.status) && c.status != 101 {
            ResponseEvent::Informational(response)
        } else {
            ResponseEvent::Final(response)
        });
        self.reset_item();
        self.state = if c.tunnel_after {
            State::Tunnel
        } else {
            HEAD_STATE
        };
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
