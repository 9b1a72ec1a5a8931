//! The request framer's state machine: one step consumes bytes of a push in the current state
//! (head lines, tunnel, resync); body states are stepped by the shared [`BodyFramer`], whose
//! hooks are implemented here: a request keeps its body bytes for replay unless it is being
//! skipped, and broken chunk framing drops the rest of the stream.

use super::super::body::{BodyFramer, BodyState};
use super::super::head::{self, Plausible};
use super::super::stream::Item;
use super::super::{BodyFraming, Request};
use super::parse::parse_head;
use super::{Cur, HEAD_STATE, RESYNC_STATE, RequestDropReason, RequestEvent, RequestFramer, State};

impl RequestFramer {
    // ---- the state machine ----

    pub(super) fn step(&mut self, cur: &mut Cur<'_>, out: &mut Vec<RequestEvent>) {
        let data: &[u8] = cur.data;
        let avail = &data[cur.pos..];
        match self.state {
            State::Ignore => {
                self.stats.ignored_bytes += avail.len() as u64;
                cur.pos = cur.data.len();
                cur.start = cur.pos;
            }
            State::Discard => {
                self.resync.grow(avail.len() as u64);
                cur.pos = data.len();
                cur.start = cur.pos;
            }
            State::SkipLine => {
                let n = head::find_line_end(avail).unwrap_or(avail.len());
                self.resync.grow(n as u64);
                cur.pos += n;
                cur.start = cur.pos;
                if cur.data[cur.pos - 1] == b'\n' {
                    self.state = RESYNC_STATE;
                }
            }
            State::Head {
                line_start,
                tentative,
            } => self.step_head(cur, line_start, tentative, out),
            State::Body(body) => self.step_body(cur, body, out),
        }
    }

    /// A resync candidate is not a request line: its bytes join the resync (skipping to the
    /// next line end unless at a line start), or, right after an Upgrade/CONNECT request, the
    /// stream is a tunnel from here.
    fn reject_candidate(
        &mut self,
        cur: &mut Cur<'_>,
        at_line_start: bool,
        out: &mut Vec<RequestEvent>,
    ) {
        cur.start = cur.pos;
        if self.tunnel_pending {
            self.enter_tunnel(out);
            return;
        }
        self.discard_item_into_resync();
        self.state = State::resync_at(at_line_start);
    }

    /// The bytes after an Upgrade/CONNECT request are not HTTP/1.x: ignore the rest.
    pub(super) fn enter_tunnel(&mut self, out: &mut Vec<RequestEvent>) {
        self.tunnel_pending = false;
        out.push(RequestEvent::Tunnel);
        self.stats.ignored_bytes += self.item.len;
        self.reset_item();
        self.state = State::Ignore;
    }

    fn step_head(
        &mut self,
        cur: &mut Cur<'_>,
        line_start: usize,
        tentative: bool,
        out: &mut Vec<RequestEvent>,
    ) {
        let max_head = self.limits.max_head_bytes;
        if line_start == 0 && !tentative && !self.item.spanning && cur.start == cur.pos {
            // Fast path: a head that starts here and ends within this push is found and
            // parsed by one httparse call. Anything else (a partial head, blank lines, a
            // versionless line, the h2 preface, errors) takes the line-by-line path below.
            let data: &[u8] = cur.data;
            let window = &data[cur.pos..data.len().min(cur.pos + max_head)];
            if window.first().is_some_and(|&b| b != b'\r' && b != b'\n')
                && !window.starts_with(head::H2_METHOD)
                && let Ok((n, parsed)) = parse_head(window, None, self.limits.max_headers, false)
            {
                self.take(cur, n);
                self.item.head_len = n;
                if parsed.framing_ok {
                    self.parsed = Some(parsed);
                    self.start_body(cur, out);
                } else {
                    self.fail_stream(cur, RequestDropReason::Malformed, out);
                }
                return;
            }
        }
        let complete = self.take_line(cur, max_head);
        let view_len = self.view(cur).len();
        if view_len > max_head {
            if tentative {
                self.reject_candidate(cur, complete, out);
            } else {
                self.fail(cur, RequestDropReason::HeadTooLarge, complete, out);
            }
            return;
        }
        if !complete {
            if tentative && line_start == 0 && head::method_prefix(self.view(cur)) == Plausible::No
            {
                self.reject_candidate(cur, false, out);
            }
            return;
        }
        let line = &self.view(cur)[line_start..];
        if line_start == 0 {
            if head::is_blank_line(line) {
                // RFC 9112 section 2.2: empty lines before a request line are ignored.
                if tentative && !self.tunnel_pending {
                    self.discard_item_into_resync();
                } else {
                    self.stats.ignored_bytes += self.item.len;
                    self.reset_item();
                }
                cur.start = cur.pos;
                return;
            }
            if tentative && !head::plausible_request_line(line) {
                self.reject_candidate(cur, true, out);
                return;
            }
            // After an Upgrade request, another request line means the server declined
            // (an h2c upgrade not taken): keep framing. A `PRI` line is the HTTP/2 preface
            // (RFC 9113 section 3.4: the method exists only for it), whatever its version.
            let h2 = line.starts_with(head::H2_METHOD);
            let v09 = head::versionless_request_line(line)
                .is_some()
                .then_some(line.len());
            self.tunnel_pending = false;
            if tentative {
                self.flush_resync(out);
                self.resynced = true;
            }
            if h2 {
                out.push(RequestEvent::Http2);
                self.stats.ignored_bytes += self.item.len;
                self.reset_item();
                cur.start = cur.pos;
                self.state = State::Ignore;
                return;
            }
            self.v09_line = v09;
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
        self.item.head_len = view_len;
        let max_headers = self.limits.max_headers;
        let result = parse_head(self.view(cur), self.v09_line, max_headers, true);
        match result {
            Ok((_, parsed)) if !parsed.framing_ok => {
                self.fail_stream(cur, RequestDropReason::Malformed, out);
            }
            Ok((_, parsed)) => {
                self.parsed = Some(parsed);
                self.start_body(cur, out);
            }
            Err(reason) => self.fail(
                cur,
                reason.unwrap_or(RequestDropReason::Malformed),
                true,
                out,
            ),
        }
    }

    fn start_body(&mut self, cur: &mut Cur<'_>, out: &mut Vec<RequestEvent>) {
        let framing = self
            .parsed
            .as_ref()
            .map_or(BodyFraming::None, |p| p.framing);
        match framing {
            BodyFraming::ContentLength(n) => {
                self.item.body_len = n;
                if self.omits_body(n) {
                    // Nobody needs this body: the head goes out now, the body is counted as it
                    // passes. `complete` resets the item and the state; the body follows.
                    self.omitting = true;
                    self.complete(cur, out);
                    self.omitting = true;
                    self.state = State::Body(BodyState::Length { remaining: n });
                } else if n > self.limits.max_body_bytes {
                    self.skipping = Some(RequestDropReason::BodyTooLarge);
                    self.discard_view(cur);
                } else if self.item.spanning {
                    self.item.buf.reserve(n.min(super::MAX_RESERVE) as usize);
                }
                self.state = State::Body(BodyState::Length { remaining: n });
            }
            BodyFraming::Chunked => {
                self.state = State::Body(BodyState::ChunkSize {
                    line_start: self.view(cur).len(),
                });
            }
            BodyFraming::None | BodyFraming::CloseDelimited => self.complete(cur, out),
        }
    }

    /// Whether a Content-Length body of `n` bytes is not kept (see `HttpLimits::omit_bodies_over`).
    /// Never for an Upgrade or CONNECT request: what follows its head decides about the stream.
    fn omits_body(&self, n: u64) -> bool {
        self.limits.omit_bodies_over.is_some_and(|limit| n > limit)
            && self
                .parsed
                .as_ref()
                .is_some_and(|p| !p.tunnel && !p.connect)
    }

    /// The request in progress is complete: emit it (or its drop, when its body was skipped).
    /// With `omitting` set, "complete" is its head: it goes out head only.
    pub(super) fn complete(&mut self, cur: &mut Cur<'_>, out: &mut Vec<RequestEvent>) {
        let Some(p) = self.parsed.take() else {
            self.reset_item();
            self.state = HEAD_STATE;
            return;
        };
        let (tunnel, connect) = (p.tunnel, p.connect);
        if let Some(reason) = self.skipping {
            // Skipped, yet the server read it: what follows is served or not as after any
            // request.
            let ends = ends_connection(p.te_and_cl, p.keep_alive);
            let reason = self.unserved.unwrap_or(reason);
            let bytes = self.item.len;
            self.stats.dropped_bytes += bytes;
            out.push(RequestEvent::Dropped { reason, bytes });
            cur.start = cur.pos;
            self.unserved = self.unserved.or(ends);
        } else {
            let raw = if self.item.spanning {
                self.item.spanning = false;
                self.item.buf.split().freeze()
            } else {
                let range = cur.start..cur.pos;
                match &self.owner {
                    // The push's own `Bytes`: `cur.data` is its bytes, so the range is the same.
                    Some(owner) => owner.slice(range),
                    None => super::copy_out::copy_out(&cur.data[range]),
                }
            };
            cur.start = cur.pos;
            let request = Request {
                head_len: self.item.head_len,
                method: p.method,
                target: p.target,
                version: p.version,
                framing: p.framing,
                body_len: self.item.body_len,
                ts_ns: self.item.ts,
                end_ts_ns: self.last_ts,
                te_and_cl: p.te_and_cl,
                keep_alive: p.keep_alive,
                upgrade: tunnel,
                trace: p.trace,
                body_omitted: self.omitting,
                h2_stream: None,
                raw,
            };
            self.emit(request, out);
        }
        self.reset_item();
        if connect {
            // RFC 9110 9.3.6: a CONNECT has no content; whatever follows its head is tunnel
            // data (or, if the server refused, bytes it closed on).
            self.enter_tunnel(out);
            return;
        }
        // Upgrade: what follows decides. Bytes that cannot start a request line make the
        // stream a tunnel (Tunnel event, ignored from there); a request line means the server
        // declined and the client carried on in HTTP/1.x.
        self.tunnel_pending = tunnel;
        self.state = State::Head {
            line_start: 0,
            tentative: tunnel,
        };
    }

    /// A complete request goes out, unless the connection already ended for the server: then
    /// it is counted as a drop for that reason, one per request. A request that ends the
    /// connection makes what follows unserved.
    pub(super) fn emit(&mut self, request: Request, out: &mut Vec<RequestEvent>) {
        let bytes = request.raw.len() as u64;
        if let Some(reason) = self.unserved {
            self.flush_resync(out);
            self.stats.dropped_bytes += bytes;
            out.push(RequestEvent::Dropped { reason, bytes });
            return;
        }
        self.unserved = ends_connection(request.te_and_cl, request.keep_alive);
        self.stats.requests += 1;
        self.stats.request_bytes += bytes;
        out.push(RequestEvent::Request(request));
    }
}

/// Why the connection ends for the server after a request, if it does: both Transfer-Encoding
/// and Content-Length (RFC 9112 6.1), or no keep-alive (`Connection: close`, HTTP/1.0 without
/// keep-alive, HTTP/0.9).
fn ends_connection(te_and_cl: bool, keep_alive: bool) -> Option<RequestDropReason> {
    if te_and_cl {
        Some(RequestDropReason::AfterTeAndCl)
    } else if !keep_alive {
        Some(RequestDropReason::AfterClose)
    } else {
        None
    }
}

impl BodyFramer for RequestFramer {
    type Data = [u8];
    type Event = RequestEvent;
    const STRICT: bool = true;

    #[inline]
    fn item(&self) -> &Item {
        &self.item
    }

    #[inline]
    fn item_mut(&mut self) -> &mut Item {
        &mut self.item
    }

    #[inline]
    fn take_body(&mut self, cur: &mut Cur<'_>, n: usize) {
        if self.omitting {
            // Already emitted: counted here, not part of any item.
            self.stats.omitted_body_bytes += n as u64;
            cur.pos += n;
            cur.start = cur.pos;
        } else if self.skipping.is_some() {
            self.skip(cur, n);
        } else {
            self.take(cur, n);
        }
    }

    #[inline]
    fn chunk_announced(&mut self, size: u64) {
        if self.skipping.is_none() {
            let wire_body = self.item.len - self.item.head_len as u64;
            if wire_body.saturating_add(size) > self.limits.max_body_bytes {
                self.skipping = Some(RequestDropReason::BodyTooLarge);
            }
        }
    }

    /// A request being skipped keeps nothing; one kept for replay keeps its framing lines.
    #[inline]
    fn framing_line_read(&mut self, cur: &mut Cur<'_>) {
        if self.skipping.is_some() {
            self.discard_view(cur);
        }
    }

    #[inline]
    fn set_body_state(&mut self, state: BodyState) {
        self.state = State::Body(state);
    }

    #[inline]
    fn max_head_bytes(&self) -> usize {
        self.limits.max_head_bytes
    }

    /// Broken chunk framing is unrecoverable for a request (see `fail_stream`).
    fn framing_error(
        &mut self,
        cur: &mut Cur<'_>,
        _at_line_start: bool,
        out: &mut Vec<RequestEvent>,
    ) {
        self.fail_stream(cur, RequestDropReason::Malformed, out);
    }

    fn trailer_too_large(
        &mut self,
        cur: &mut Cur<'_>,
        at_line_start: bool,
        out: &mut Vec<RequestEvent>,
    ) {
        self.fail(cur, RequestDropReason::HeadTooLarge, at_line_start, out);
    }

    fn end_message(&mut self, cur: &mut Cur<'_>, out: &mut Vec<RequestEvent>) {
        self.complete(cur, out);
    }
}
