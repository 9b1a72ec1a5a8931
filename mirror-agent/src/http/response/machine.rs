//! The response framer's state machine: one step consumes bytes of a push in the current
//! state (head lines, close-delimited body, tunnel, resync); body states are stepped by the
//! shared [`BodyFramer`], whose hooks are implemented here: a response keeps no body bytes
//! (only the capture prefix, when on), and broken chunk framing drops it and resyncs.

use super::super::body::{BodyFramer, BodyState};
use super::super::head::{self, TransferEncoding};
use super::super::stream::Item;
use super::super::{BodyFraming, Version};
use super::{
    Cur, Current, ExpectedResponse, HEAD_STATE, HeaderFraming, ParsedHead, RESYNC_STATE, Response,
    ResponseDropReason, ResponseEvent, ResponseFramer, STATUS_PREFIX, State,
};

impl ResponseFramer {
    // ---- the state machine ----

    pub(super) fn step(&mut self, cur: &mut Cur<'_>, out: &mut Vec<ResponseEvent>) {
        let data = cur.data;
        let avail = &data[cur.pos..];
        match self.state {
            State::Tunnel => {
                self.stats.ignored_bytes += avail.len() as u64;
                self.stats.tunnel_bytes += avail.len() as u64;
                cur.pos = data.len();
                cur.start = cur.pos;
            }
            State::SkipLine => {
                let n = head::find_line_end(avail).unwrap_or(avail.len());
                self.resync.grow(n as u64);
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
            State::Body(body) => self.step_body(cur, body, out),
            State::Close => {
                self.capture_body(avail);
                self.item.len += avail.len() as u64;
                self.item.body_len += avail.len() as u64;
                cur.pos = data.len();
                cur.start = cur.pos;
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
        if line_start == 0 && !tentative && !self.item.spanning && cur.start == cur.pos {
            // Fast path: a head that starts here with a status line and ends within this push
            // is found and parsed by one httparse call (a mirror's responses mostly arrive
            // whole). Anything else (a partial head, blank lines, HTTP/0.9, errors) takes the
            // line-by-line path below, which reports it.
            let window = &cur.data[cur.pos..cur.data.len().min(cur.pos + max_head)];
            if window.starts_with(b"HTTP/")
                && let Ok((n, head)) = self.parse_head(window, false)
            {
                if self.capture_limit.is_some() {
                    self.capture_head(window[..n].to_vec());
                }
                self.take(cur, n);
                self.item.head_len = n;
                self.seen_message = true;
                self.discard_view(cur);
                self.start_body(head, out);
                return;
            }
        }
        let complete = self.take_line(cur, max_head);
        let view_len = self.view(cur).len();
        if view_len > max_head {
            if tentative {
                self.discard_item_into_resync();
                cur.start = cur.pos;
                self.state = State::resync_at(complete);
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
                self.state = State::resync_at(complete);
                return;
            }
        }
        if line_start == 0 && !tentative && !self.seen_message {
            // The first bytes of the stream do not start a status line: an HTTP/0.9 response
            // (body only, until close), as tshark and curl --http0.9 read it.
            let n = view.len().min(5);
            if view[..n] != b"HTTP/"[..n] && !head::is_blank_line(view) && view != b"\r" {
                let consumed = self.item.len;
                self.discard_view(cur);
                self.seen_message = true;
                let took_expectation = self.expected.pop_front().is_some();
                self.current = Some(Current {
                    status: 200,
                    version: Version::Http09,
                    framing: BodyFraming::CloseDelimited,
                    tunnel_after: false,
                    took_expectation,
                    // The body runs to the close.
                    close: true,
                });
                self.item.body_len = consumed;
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
                    self.stats.ignored_bytes += self.item.len;
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
        self.item.head_len = view_len;
        self.seen_message = true;
        match parsed {
            Ok(head) => {
                self.discard_view(cur);
                self.start_body(head, out);
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
    ) -> Result<(usize, ParsedHead), ResponseDropReason> {
        head::with_header_slots(self.limits.max_headers, |slots| {
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
                // RFC 9112 6.3 item 4: a response whose final coding is not chunked runs to
                // close.
                TransferEncoding::Other => HeaderFraming::Close,
                TransferEncoding::Absent => match head::content_length(headers) {
                    Ok(Some(n)) => HeaderFraming::Length(n),
                    Ok(None) => HeaderFraming::Close,
                    Err(()) => HeaderFraming::Invalid,
                },
            };
            // RFC 9112 9.6: the server closes after this response.
            let close = head::has_connection_token(headers, b"close");
            Ok((
                len,
                ParsedHead {
                    status,
                    version,
                    framing,
                    close,
                },
            ))
        })
    }

    /// RFC 9112 section 6.3: which body the response has, given its request.
    fn start_body(&mut self, head: ParsedHead, out: &mut Vec<ResponseEvent>) {
        let ParsedHead {
            status,
            version,
            framing: headers,
            close,
        } = head;
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
            close,
        });
        self.state = match framing {
            BodyFraming::ContentLength(n) if n > 0 => {
                State::Body(BodyState::Length { remaining: n })
            }
            BodyFraming::Chunked => State::Body(BodyState::ChunkSize { line_start: 0 }),
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
            _ => self.item.body_len,
        };
        if self.damaged {
            if c.took_expectation {
                self.stats.answers_dropped += 1;
            }
            let bytes = self.item.len;
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
            head_len: self.item.head_len,
            framing: c.framing,
            body_len,
            ts_ns: self.item.ts,
            end_ts_ns: self.last_ts,
            close: c.close,
            capture: None,
        };
        self.stats.responses += 1;
        self.stats.response_bytes += self.item.len;
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

impl BodyFramer for ResponseFramer {
    type Data = [u8];
    type Event = ResponseEvent;
    const STRICT: bool = false;

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
        self.capture_body(&cur.data[cur.pos..cur.pos + n]);
        cur.pos += n;
        self.item.len += n as u64;
        cur.start = cur.pos;
    }

    #[inline]
    fn chunk_announced(&mut self, _size: u64) {}

    #[inline]
    fn framing_line_read(&mut self, cur: &mut Cur<'_>) {
        self.discard_view(cur);
    }

    #[inline]
    fn set_body_state(&mut self, state: BodyState) {
        self.state = State::Body(state);
    }

    #[inline]
    fn max_head_bytes(&self) -> usize {
        self.limits.max_head_bytes
    }

    /// Broken chunk framing: this response is dropped and the framer resyncs at the next
    /// status line.
    fn framing_error(
        &mut self,
        cur: &mut Cur<'_>,
        at_line_start: bool,
        out: &mut Vec<ResponseEvent>,
    ) {
        self.fail(cur, ResponseDropReason::Malformed, at_line_start, out);
    }

    fn trailer_too_large(
        &mut self,
        cur: &mut Cur<'_>,
        at_line_start: bool,
        out: &mut Vec<ResponseEvent>,
    ) {
        self.fail(cur, ResponseDropReason::HeadTooLarge, at_line_start, out);
    }

    fn end_message(&mut self, _cur: &mut Cur<'_>, out: &mut Vec<ResponseEvent>) {
        self.complete(out);
    }
}
