//! Request framing: a client byte stream in, [`Request`]s out.
//!
//! [`RequestFramer`] owns one client→server byte stream. Bytes arrive in pieces split anywhere;
//! each request comes out whole (head and body, the exact wire bytes) so it can be replayed.
//! Heads are parsed with httparse once their end has been seen; body framing (Content-Length,
//! chunked) and resync are done here (see the `head` module for why those are hand-written).
//!
//! Copies: a request that lies inside one pushed [`Bytes`] is a slice of it (no copy); one that
//! lies inside a borrowed slice ([`RequestFramer::push_slice`], live capture reading the ring
//! buffer in place) is copied once when it is emitted. A request that spans pushes is
//! accumulated, once, in a buffer bounded by the head limit plus the body limit plus one
//! chunk-size or trailer line (itself within the head limit).
//!
//! Accounting: every pushed byte ends up in exactly one of: a request's `raw`, a
//! [`RequestEvent::Dropped`], the ignored bytes (blank lines between requests, tunnel and
//! HTTP/2 bytes) or the omitted body bytes (bodies nobody needs, [`HttpLimits::omit_bodies_over`])
//! of [`RequestFramerStats`]; until then it is in progress
//! ([`RequestFramerStats::in_progress`]).

use bytes::{Bytes, BytesMut};

use super::body::BodyState;
use super::head;
use super::stream::{self, Item, PendingDrop};
use super::{BodyFraming, Request, Text, Version};

mod copy_out;
mod machine;
mod parse;

use parse::ParsedHead;

/// Bounds on what a framer buffers.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    /// Largest request body kept for replay, counted on the wire (chunked framing included).
    /// A larger request is dropped ([`RequestDropReason::BodyTooLarge`]) and its body skipped
    /// by its framing, without buffering.
    pub max_body_bytes: u64,
    /// No consumer needs a request body larger than this (mirrors that do not send bodies, or
    /// only up to a size, and no recording or comparison): a Content-Length body above it is
    /// not kept. The request goes out as soon as its head is read, head only
    /// ([`Request::body_omitted`]), and its body is counted as it passes
    /// ([`RequestFramerStats::omitted_body_bytes`]), whatever its size. `None`: bodies are kept
    /// (up to `max_body_bytes`). Chunked bodies are always kept: their length is unknown upfront.
    pub omit_bodies_over: Option<u64>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            max_body_bytes: 64 * 1024 * 1024,
            omit_bodies_over: None,
        }
    }
}

/// Why bytes of a client stream did not become a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestDropReason {
    /// Bytes of the request were lost in capture (and the bytes after the gap, up to the next
    /// request line, which cannot be framed).
    Gap,
    /// The head exceeded `max_head_bytes` (or a trailer section did).
    HeadTooLarge,
    /// More than `max_headers` header fields.
    TooManyHeaders,
    /// Not an HTTP/1.x request as RFC 9112 asks a server to read one (bad head, a bare LF or
    /// obs-fold in it, conflicting Content-Length, a final transfer coding other than chunked,
    /// bad chunk framing). A server rejects it and closes, so the rest of the connection's
    /// bytes join this drop.
    Malformed,
    /// The stream ended in the middle of a request.
    Truncated,
    /// The body exceeded `max_body_bytes`; it was skipped by its framing.
    BodyTooLarge,
    /// The stream was picked up mid-way: bytes before the first request line.
    Midstream,
    /// Sent after a request that ends the connection (`Connection: close`, HTTP/1.0 without
    /// keep-alive, HTTP/0.9): the server closes after answering it and never reads these as
    /// requests. Not a loss: the primary did not serve them either.
    AfterClose,
    /// Sent after a request with both Transfer-Encoding and Content-Length: RFC 9112 section
    /// 6.1 has the server close after answering it, so these are not requests it served (they
    /// are what a request-smuggling attempt hides). Not a loss.
    AfterTeAndCl,
}

impl RequestDropReason {
    /// Stable name for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::HeadTooLarge => "head_too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::BodyTooLarge => "body_too_large",
            Self::Midstream => "midstream",
            Self::AfterClose => "after_close",
            Self::AfterTeAndCl => "after_te_and_cl",
        }
    }

    /// Whether the bytes were requests the primary served (or may have), so that not
    /// mirroring them is a loss. Bytes after the connection's end were never served.
    pub fn is_loss(self) -> bool {
        !matches!(self, Self::AfterClose | Self::AfterTeAndCl)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "requests are by far the most frequent event; boxing them would allocate per request"
)]
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

/// Byte and request counts of one framer. After [`RequestFramer::finish`],
/// `pushed_bytes == request_bytes + dropped_bytes + ignored_bytes + omitted_body_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFramerStats {
    pub pushed_bytes: u64,
    pub requests: u64,
    /// Bytes of emitted requests (sum of `raw.len()`).
    pub request_bytes: u64,
    /// Bytes reported in `Dropped` events.
    pub dropped_bytes: u64,
    /// Blank lines between requests, and everything after a tunnel or HTTP/2 start.
    pub ignored_bytes: u64,
    /// Lengths passed to [`RequestFramer::gap`] (bytes never pushed).
    pub gap_bytes: u64,
    /// Body bytes of requests emitted head only ([`HttpLimits::omit_bodies_over`]): not a loss.
    pub omitted_body_bytes: u64,
}

impl RequestFramerStats {
    /// Pushed bytes not yet accounted for (a request in progress, bytes pending resync).
    pub fn in_progress(&self) -> u64 {
        self.pushed_bytes
            - self.request_bytes
            - self.dropped_bytes
            - self.ignored_bytes
            - self.omitted_body_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Discarding up to the next line end (resync after a bad line).
    SkipLine,
    /// Reading head lines; `line_start` is the offset of the current line in the view.
    /// `tentative`: resyncing; the first line must pass the plausibility check.
    Head { line_start: usize, tentative: bool },
    /// In the body (Content-Length or chunked, trailers included).
    Body(BodyState),
    /// Tunnel or HTTP/2: bytes are counted and ignored.
    Ignore,
    /// The connection ended for the server (a framing error, a tunnel that cannot be
    /// followed): the rest of the stream joins the pending drop.
    Discard,
}

const HEAD_STATE: State = State::Head {
    line_start: 0,
    tentative: false,
};
const RESYNC_STATE: State = State::Head {
    line_start: 0,
    tentative: true,
};

impl State {
    /// Where to look for the next request line after bad bytes: at the next line start if
    /// the last consumed byte ended a line, else after skipping to the next line end.
    fn resync_at(at_line_start: bool) -> Self {
        if at_line_start {
            RESYNC_STATE
        } else {
            State::SkipLine
        }
    }
}

/// One pushed buffer being consumed (a request that lies in it becomes a slice of it).
type Cur<'a> = stream::Cur<'a, [u8]>;

/// Cuts one client→server byte stream into requests.
///
/// ```
/// use bytes::Bytes;
/// use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};
///
/// let mut framer = RequestFramer::new(HttpLimits::default(), false);
/// let mut events = Vec::new();
/// framer.push(&Bytes::from_static(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nh"), 10, &mut events);
/// framer.push(&Bytes::from_static(b"iGET /b HTTP/1.1\r\n\r\n"), 20, &mut events);
/// framer.finish(&mut events);
/// let RequestEvent::Request(first) = &events[0] else { panic!() };
/// assert_eq!((first.target(), first.body_len, first.ts_ns, first.end_ts_ns), ("/a", 2, 10, 20));
/// assert_eq!(&first.raw[..], b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
/// assert_eq!(events.len(), 2);
/// let s = framer.stats();
/// assert_eq!(s.pushed_bytes, s.request_bytes + s.dropped_bytes + s.ignored_bytes);
/// ```
#[derive(Debug)]
pub struct RequestFramer {
    limits: HttpLimits,
    state: State,
    /// The request or resync candidate in progress.
    item: Item,
    last_ts: u64,
    /// Length of the first line when it had no version (HTTP/0.9 style).
    v09_line: Option<usize>,
    parsed: Option<ParsedHead>,
    /// The body is being skipped by its framing, and why (too large, or a gap inside it):
    /// nothing but the current line is kept, and the request ends as a drop.
    skipping: Option<RequestDropReason>,
    /// The request went out head only and its body is being counted as it passes, not kept
    /// ([`HttpLimits::omit_bodies_over`]).
    omitting: bool,
    /// The last request was an Upgrade; the next bytes decide whether the stream became a
    /// tunnel.
    tunnel_pending: bool,
    /// The request in progress was found by resyncing (after a gap, or in a stream picked up
    /// mid-way): if its head turns out bad, the line taken for a request line was not one, so
    /// resyncing goes on. In sync, a bad head is the client's, and ends the stream.
    resynced: bool,
    /// A request that ends the connection for the server was framed (see
    /// [`RequestDropReason::AfterClose`] and [`RequestDropReason::AfterTeAndCl`]): what
    /// follows is still framed, to count the requests, but every one becomes a drop for this
    /// reason, as does anything else dropped from here.
    unserved: Option<RequestDropReason>,
    /// The `Bytes` the current push reads, when it has one: a request inside it is a slice of
    /// it; without one (a borrowed push) the request is copied out.
    owner: Option<Bytes>,
    /// Bytes discarded while resyncing, not yet reported, and why.
    resync: PendingDrop<RequestDropReason>,
    stats: RequestFramerStats,
}

/// Most buffer reserved ahead on the word of a Content-Length: a client's claim alone must
/// not commit memory; past this the buffer grows as bytes arrive.
pub(super) const MAX_RESERVE: u64 = 256 * 1024;

/// Above this capacity the accumulation buffer is released rather than kept for reuse.
const KEEP_ACC_CAPACITY: usize = 64 * 1024;

impl RequestFramer {
    /// `midstream`: the stream was picked up without its start, so bytes are skipped until a
    /// request line begins.
    pub fn new(limits: HttpLimits, midstream: bool) -> Self {
        let mut f = Self {
            limits,
            state: HEAD_STATE,
            item: Item::default(),
            last_ts: 0,
            v09_line: None,
            parsed: None,
            skipping: None,
            omitting: false,
            tunnel_pending: false,
            resynced: false,
            unserved: None,
            owner: None,
            resync: PendingDrop::none(),
            stats: RequestFramerStats::default(),
        };
        if midstream {
            f.resync = PendingDrop::from_start(RequestDropReason::Midstream);
            f.state = RESYNC_STATE;
        }
        f
    }

    pub fn stats(&self) -> &RequestFramerStats {
        &self.stats
    }

    /// Body bytes still to come of a request that went out head only (its body nobody needs),
    /// known from its Content-Length: the caller may tell capture not to copy them.
    pub fn omitted_body_remaining(&self) -> Option<u64> {
        match self.state {
            State::Body(BodyState::Length { remaining }) if self.omitting => Some(remaining),
            _ => None,
        }
    }

    /// Bytes held in memory for the request in progress; at most
    /// `2 * max_head_bytes + max_body_bytes + 1`.
    pub fn buffered_bytes(&self) -> usize {
        self.item.buf.len()
    }

    pub fn push(&mut self, data: &Bytes, ts_ns: u64, out: &mut Vec<RequestEvent>) {
        self.owner = Some(data.clone());
        self.push_slice(data, ts_ns, out);
        self.owner = None;
    }

    /// [`Self::push`] of bytes the caller keeps (the capture buffer, read in place): what the
    /// framer keeps of them it copies, nothing more.
    pub fn push_slice(&mut self, data: &[u8], ts_ns: u64, out: &mut Vec<RequestEvent>) {
        self.stats.pushed_bytes += data.len() as u64;
        self.last_ts = ts_ns;
        let mut cur = Cur::new(data);
        while cur.pos < data.len() {
            if self.item.len == 0 && self.state != State::Ignore {
                self.item.ts = ts_ns;
            }
            self.step(&mut cur, out);
        }
        // Keep the part of the view that lies in this buffer for the next push.
        if !self.item.spanning && cur.start < cur.pos {
            let pending = &data[cur.start..cur.pos];
            let body_hint = match self.state {
                State::Body(BodyState::Length { remaining }) if self.skipping.is_none() => {
                    remaining.min(MAX_RESERVE) as usize
                }
                _ => 0,
            };
            self.item.buf.reserve(pending.len() + body_hint);
            self.item.buf.extend_from_slice(pending);
            self.item.spanning = true;
        }
    }

    /// `len` bytes are missing at this point: drop the request in progress and resync at the
    /// next request line (or, when the gap lies inside a body of known length, at the end of
    /// that body).
    pub fn gap(&mut self, len: u64, out: &mut Vec<RequestEvent>) {
        self.stats.gap_bytes += len;
        if matches!(self.state, State::Ignore | State::Discard) {
            return;
        }
        if self.tunnel_pending {
            // Unknown whether the upgrade was taken; nothing after a gap can be trusted.
            self.enter_tunnel(out);
            return;
        }
        if let State::Body(body) = self.state
            && let Some(after) = body.after_gap(len)
        {
            // The gap lies inside a body of known length: this request is lost, but the
            // next one starts where the framing says. Skip to it rather than resync by
            // lines (which would miss a request that follows a body not ending in LF).
            if self.skipping.is_none() {
                self.skipping = Some(RequestDropReason::Gap);
                if self.item.spanning {
                    self.release_acc();
                    self.item.spanning = false;
                }
            }
            self.state = State::Body(after);
            return;
        }
        let tentative = matches!(
            self.state,
            State::Head {
                tentative: true,
                ..
            }
        );
        if tentative {
            // A resync candidate: its bytes belong to the resync already under way.
            self.discard_item_into_resync();
        } else if !self.emit_v09_if_complete(out) && self.item.len > 0 {
            self.drop_item(RequestDropReason::Gap, out);
        }
        self.start_resync(RequestDropReason::Gap, out);
        self.state = RESYNC_STATE;
    }

    /// The stream ended. The framer is then ready for a new stream (from its start).
    pub fn finish(&mut self, out: &mut Vec<RequestEvent>) {
        if self.tunnel_pending && self.item.len > 0 {
            self.enter_tunnel(out);
        }
        self.tunnel_pending = false;
        match self.state {
            State::Ignore => {}
            State::Head {
                tentative: true, ..
            }
            | State::SkipLine => self.discard_item_into_resync(),
            _ => {
                if !self.emit_v09_if_complete(out) && self.item.len > 0 {
                    // A request already lost to a gap keeps that reason.
                    let reason = match self.skipping {
                        Some(RequestDropReason::Gap) => RequestDropReason::Gap,
                        _ => RequestDropReason::Truncated,
                    };
                    self.drop_item(reason, out);
                }
            }
        }
        self.flush_resync(out);
        self.reset_item();
        self.unserved = None;
        self.state = HEAD_STATE;
    }

    // ---- view management ----

    /// Consumes `n` bytes without keeping them; the view is emptied.
    fn skip(&mut self, cur: &mut Cur<'_>, n: usize) {
        cur.pos += n;
        self.item.len += n as u64;
        self.discard_view(cur);
    }

    fn discard_view(&mut self, cur: &mut Cur<'_>) {
        if self.item.spanning {
            self.release_acc();
            self.item.spanning = false;
        }
        cur.start = cur.pos;
    }

    fn release_acc(&mut self) {
        if self.item.buf.capacity() > KEEP_ACC_CAPACITY {
            self.item.buf = BytesMut::new();
        } else {
            self.item.buf.clear();
        }
    }

    fn reset_item(&mut self) {
        self.item.reset_counts();
        self.v09_line = None;
        self.parsed = None;
        self.skipping = None;
        self.omitting = false;
        self.resynced = false;
        if self.item.spanning {
            self.release_acc();
            self.item.spanning = false;
        }
    }

    // ---- drops and resync ----

    /// Drops the item in progress as one `Dropped` with `reason`, merged with the resync that
    /// follows, so a bad request and the garbage after it are one event. A pending resync for
    /// another reason is reported first.
    fn drop_item(&mut self, reason: RequestDropReason, out: &mut Vec<RequestEvent>) {
        let bytes = self.item.len;
        self.reset_item();
        let earlier = self.resync.add(self.unserved.unwrap_or(reason), bytes);
        self.report(earlier, out);
    }

    fn discard_item_into_resync(&mut self) {
        let bytes = self.item.len;
        self.reset_item();
        let otherwise = self.unserved.unwrap_or(RequestDropReason::Malformed);
        self.resync.add_any(bytes, otherwise);
    }

    /// Begins (or continues) a resync for `reason`; a pending resync for another reason is
    /// reported first.
    fn start_resync(&mut self, reason: RequestDropReason, out: &mut Vec<RequestEvent>) {
        let earlier = self.resync.start(self.unserved.unwrap_or(reason));
        self.report(earlier, out);
    }

    fn flush_resync(&mut self, out: &mut Vec<RequestEvent>) {
        let pending = self.resync.take();
        self.report(pending, out);
    }

    fn report(&mut self, drop: Option<(RequestDropReason, u64)>, out: &mut Vec<RequestEvent>) {
        if let Some((reason, bytes)) = drop {
            self.stats.dropped_bytes += bytes;
            out.push(RequestEvent::Dropped { reason, bytes });
        }
    }

    /// The head in progress is bad for `reason`. A head found by resyncing was a false
    /// start: resync on, at the next line start if the last consumed byte ended a line, else
    /// after skipping to the next line end. A head read in sync ends the stream
    /// ([`Self::fail_stream`]).
    fn fail(
        &mut self,
        cur: &mut Cur<'_>,
        reason: RequestDropReason,
        at_line_start: bool,
        out: &mut Vec<RequestEvent>,
    ) {
        if !self.resynced {
            self.fail_stream(cur, reason, out);
            return;
        }
        self.drop_item(reason, out);
        cur.start = cur.pos;
        self.state = State::resync_at(at_line_start);
    }

    /// The client's bytes stop being requests here: a head a server rejects (RFC 9112 asks it
    /// to answer 400 and close for a malformed head or obs-fold), a body whose length cannot be
    /// determined (section 6.3: unrecoverable), broken chunk framing, or a head larger than
    /// the limits, whose end and framing are unknown. Nothing after it on this stream reached
    /// the primary as a request it could frame the way the mirror would, and resyncing could
    /// turn a smuggled body into a request the primary never processed: everything from here
    /// joins this drop.
    fn fail_stream(
        &mut self,
        cur: &mut Cur<'_>,
        reason: RequestDropReason,
        out: &mut Vec<RequestEvent>,
    ) {
        self.drop_item(reason, out);
        cur.start = cur.pos;
        self.tunnel_pending = false;
        self.state = State::Discard;
    }

    /// An HTTP/0.9-style request line with nothing after it: complete as it is when the stream
    /// ends or a gap follows (such clients send one line and wait).
    fn emit_v09_if_complete(&mut self, out: &mut Vec<RequestEvent>) -> bool {
        let Some(first) = self.v09_line else {
            return false;
        };
        if self.item.len != first as u64 || !self.item.spanning {
            return false;
        }
        let raw = self.item.buf.split().freeze();
        self.item.spanning = false;
        let Some((method, target)) = head::versionless_request_line(&raw) else {
            return false;
        };
        let base = raw.as_ptr() as usize;
        let at = |b: &[u8]| b.as_ptr() as usize - base;
        let request = Request {
            method: Text::method(&raw, at(method), method),
            target: Text::found(&raw, at(target), target),
            version: Version::Http09,
            framing: BodyFraming::None,
            body_len: 0,
            head_len: raw.len(),
            ts_ns: self.item.ts,
            end_ts_ns: self.last_ts,
            te_and_cl: false,
            keep_alive: false,
            upgrade: false,
            trace: None,
            body_omitted: false,
            h2_stream: None,
            raw,
        };
        self.emit(request, out);
        self.reset_item();
        true
    }
}
