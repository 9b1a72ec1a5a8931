//! The response framer's state machine: one step consumes bytes of a push in the current
//! state (head lines, body by length, chunks, close-delimited body, tunnel).

use std::mem::MaybeUninit;

use super::super::head::{self, TransferEncoding};
use super::super::{BodyFraming, Version};
use super::{
    Cur, Current, ExpectedResponse, HEAD_STATE, HeaderFraming, RESYNC_STATE, Response,
    ResponseDropReason, ResponseEvent, ResponseFramer, STATUS_PREFIX, State,
};

/// Header slots kept on the stack when parsing a head (the default `max_headers`).
const STACK_HEADERS: usize = 128;

impl ResponseFramer {
    // ---- the state machine ----

    pub(super) fn step(&mut self, cur: &mut Cur<'_>, out: &mut Vec<ResponseEvent>) {
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
                self.capture_body(&avail[..n as usize]);
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
                self.capture_body(avail);
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
                self.capture_body(&avail[..n as usize]);
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
        if line_start == 0 && !tentative && !self.spanning && cur.start == cur.pos {
            // Fast path: a head that starts here with a status line and ends within this push
            // is found and parsed by one httparse call (a mirror's responses mostly arrive
            // whole). Anything else (a partial head, blank lines, HTTP/0.9, errors) takes the
            // line-by-line path below, which reports it.
            let window = &cur.data[cur.pos..cur.data.len().min(cur.pos + max_head)];
            if window.starts_with(b"HTTP/")
                && let Ok((n, (status, version, body))) = self.parse_head(window, false)
            {
                if self.capture_limit.is_some() {
                    self.capture_head(window[..n].to_vec());
                }
                self.take(cur, n);
                self.head_len = n;
                self.seen_message = true;
                self.discard_view(cur);
                self.start_body(status, version, body, out);
                return;
            }
        }
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
                let took_expectation = self.expected.pop_front().is_some();
                self.current = Some(Current {
                    status: 200,
                    version: Version::Http09,
                    framing: BodyFraming::CloseDelimited,
                    tunnel_after: false,
                    took_expectation,
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
        let parsed = self.parse_head(view, true).map(|(_, head)| head);
        if parsed.is_ok() && self.capture_limit.is_some() {
            let head = view.to_vec();
            self.capture_head(head);
        }
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

    /// Parses a head at the start of `view`; returns its length, status, version and what the
    /// headers say of the body. `exact`: `view` is exactly the head (else more may follow it;
    /// an incomplete head is `Malformed` either way, callers that may see one fall back).
    fn parse_head(
        &self,
        view: &[u8],
        exact: bool,
    ) -> Result<(usize, (u16, Version, HeaderFraming)), ResponseDropReason> {
        // Header slots on the stack for the usual limit: a heap vector per response (4 KiB
        // for 128 slots, filled) was a visible share of the replay client's cost.
        let max = self.limits.max_headers;
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max <= STACK_HEADERS {
            &mut stack[..max]
        } else {
            heap.resize_with(max, MaybeUninit::uninit);
            &mut heap
        };
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, view, slots)
        {
            Ok(httparse::Status::Complete(n)) if !exact || n == view.len() => n,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ResponseDropReason::TooManyHeaders);
            }
            _ => return Err(ResponseDropReason::Malformed),
        };
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
        Ok((len, (status, version, framing)))
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
        let (expected, took_expectation) = if informational {
            (self.expected.front().copied().unwrap_or_default(), false)
        } else {
            match self.expected.pop_front() {
                Some(e) => (e, true),
                None => (ExpectedResponse::default(), false),
            }
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
                    if took_expectation {
                        self.stats.answers_dropped += 1;
                    }
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
            took_expectation,
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

    pub(super) fn complete(&mut self, out: &mut Vec<ResponseEvent>) {
        let Some(c) = self.current else {
            return;
        };
        let body_len = match c.framing {
            BodyFraming::ContentLength(n) => n,
            _ => self.body_len,
        };
        if self.damaged {
            if c.took_expectation {
                self.stats.answers_dropped += 1;
            }
            let bytes = self.item_len;
            self.stats.dropped_bytes += bytes;
            out.push(ResponseEvent::Dropped {
                reason: ResponseDropReason::Gap,
                bytes,
            });
            self.reset_item();
            self.state = if c.tunnel_after {
                State::Tunnel
            } else {
                HEAD_STATE
            };
            return;
        }
        let response = Response {
            status: c.status,
            version: c.version,
            head_len: self.head_len,
            framing: c.framing,
            body_len,
            ts_ns: self.item_ts,
            end_ts_ns: self.last_ts,
            capture: None,
        };
        self.stats.responses += 1;
        self.stats.response_bytes += self.item_len;
        out.push(if (100..200).contains(&c.status) && c.status != 101 {
            ResponseEvent::Informational(response)
        } else {
            let mut response = response;
            response.capture = self.capture.take().map(|mut cap| {
                cap.body_len = body_len;
                cap
            });
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
