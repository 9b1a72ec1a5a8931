//! Message-body framing shared by the request and response framers (RFC 9112 sections 6 and
//! 7.1): counting a Content-Length body, chunk-size lines, chunk data, the line end after each
//! chunk and the trailer section, with the line in progress kept bounded.
//!
//! Owns the body states ([`BodyState`]) and the steps between them ([`BodyFramer::step_body`]).
//! Not owned here: what a framer keeps of the bytes (the request framer keeps a request whole
//! for replay, the response framer keeps none), what a framing error means for the rest of
//! the stream (the request framer drops it all, the response framer resyncs), and what a
//! complete message becomes. Those are the [`BodyFramer`] hooks each framer implements. The
//! trait is generic, not `dyn`: the hooks are resolved and inlined at compile time, so the
//! shared steps cost what the two copies they replace did.

use super::head;
use super::stream::{Cur, Item};

/// Where a framer is within a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
    /// A Content-Length body: bytes still to come.
    Length {
        remaining: u64,
    },
    /// A chunk-size line; `line_start` is its offset in the view.
    ChunkSize {
        line_start: usize,
    },
    ChunkData {
        remaining: u64,
    },
    /// The line end after chunk data.
    ChunkEnd {
        line_start: usize,
    },
    /// A trailer field line, or the empty line that ends the message.
    Trailer {
        line_start: usize,
    },
}

impl BodyState {
    /// The state after a gap of `len` bytes, if the gap lies inside body bytes of known length
    /// (then the next message starts where the framing says). `None`: the framing is lost.
    #[inline]
    pub(super) fn after_gap(self, len: u64) -> Option<Self> {
        match self {
            Self::Length { remaining } if len < remaining => Some(Self::Length {
                remaining: remaining - len,
            }),
            Self::ChunkData { remaining } if len < remaining => Some(Self::ChunkData {
                remaining: remaining - len,
            }),
            _ => None,
        }
    }
}

/// What a framer provides so that the shared steps can run on it: [`BodyFramer::step_body`]
/// for bodies, and [`BodyFramer::take_line`] (bounded line taking, which head parsing uses too).
pub(super) trait BodyFramer {
    /// What one push is (`Bytes` or `[u8]`).
    type Data: ?Sized + AsRef<[u8]>;
    type Event;
    /// Framing lines exactly as RFC 9112 section 7.1 writes them (CRLF line ends, well-formed
    /// chunk extensions and trailer fields). The request framer is strict: a compliant server
    /// rejects anything else and closes, so nothing framed leniently would be a request it
    /// served. The response framer is lenient: responses are only compared.
    const STRICT: bool;

    fn item(&self) -> &Item;
    fn item_mut(&mut self) -> &mut Item;
    /// Consumes `n` bytes of body data (of a Content-Length body or of a chunk).
    fn take_body(&mut self, cur: &mut Cur<'_, Self::Data>, n: usize);
    /// A chunk of `size` bytes was announced (`size` is already added to the body length).
    fn chunk_announced(&mut self, size: u64);
    /// A chunk-size, chunk-end or trailer line was read: the framer may let the view go.
    fn framing_line_read(&mut self, cur: &mut Cur<'_, Self::Data>);
    fn set_body_state(&mut self, state: BodyState);
    fn max_head_bytes(&self) -> usize;
    /// The chunk framing is broken. `at_line_start`: the last consumed byte ended a line.
    fn framing_error(
        &mut self,
        cur: &mut Cur<'_, Self::Data>,
        at_line_start: bool,
        out: &mut Vec<Self::Event>,
    );
    /// The trailer section exceeded the head limit (it is a field section too).
    fn trailer_too_large(
        &mut self,
        cur: &mut Cur<'_, Self::Data>,
        at_line_start: bool,
        out: &mut Vec<Self::Event>,
    );
    /// The body (and trailer section) is complete: the message ends here.
    fn end_message(&mut self, cur: &mut Cur<'_, Self::Data>, out: &mut Vec<Self::Event>);

    /// The bytes of the current item kept so far.
    #[inline]
    fn view<'s>(&'s self, cur: &'s Cur<'_, Self::Data>) -> &'s [u8] {
        self.item().view(cur)
    }

    /// Consumes `n` bytes into the view.
    #[inline]
    fn take(&mut self, cur: &mut Cur<'_, Self::Data>, n: usize) {
        self.item_mut().take(cur, n);
    }

    /// Consumes up to and including the next line end, but never lets the view grow past
    /// `limit + 1` bytes (so an endless line stays bounded; the caller fails a view longer
    /// than `limit`). Returns whether a line end was consumed.
    #[inline]
    fn take_line(&mut self, cur: &mut Cur<'_, Self::Data>, limit: usize) -> bool {
        let avail = cur.avail();
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

    /// Consumes bytes of the push in body state `state`.
    #[inline]
    fn step_body(
        &mut self,
        cur: &mut Cur<'_, Self::Data>,
        state: BodyState,
        out: &mut Vec<Self::Event>,
    ) {
        match state {
            BodyState::Length { remaining } => {
                let n = remaining.min(cur.avail().len() as u64);
                self.take_body(cur, n as usize);
                let remaining = remaining - n;
                self.set_body_state(BodyState::Length { remaining });
                if remaining == 0 {
                    self.end_message(cur, out);
                }
            }
            BodyState::ChunkSize { line_start } => {
                let limit = line_start + head::MAX_CHUNK_LINE.min(self.max_head_bytes());
                let complete = self.take_line(cur, limit);
                if self.view(cur).len() > limit {
                    self.framing_error(cur, complete, out);
                    return;
                }
                if !complete {
                    return;
                }
                let size = head::parse_chunk_size_line(&self.view(cur)[line_start..], Self::STRICT);
                let before = self.item().body_len;
                let Some(body_len) = size.and_then(|s| before.checked_add(s)) else {
                    self.framing_error(cur, true, out);
                    return;
                };
                self.item_mut().body_len = body_len;
                let size = body_len - before;
                self.chunk_announced(size);
                self.framing_line_read(cur);
                self.set_body_state(if size == 0 {
                    BodyState::Trailer {
                        line_start: self.view(cur).len(),
                    }
                } else {
                    BodyState::ChunkData { remaining: size }
                });
            }
            BodyState::ChunkData { remaining } => {
                let n = remaining.min(cur.avail().len() as u64);
                self.take_body(cur, n as usize);
                let remaining = remaining - n;
                self.set_body_state(if remaining == 0 {
                    BodyState::ChunkEnd {
                        line_start: self.view(cur).len(),
                    }
                } else {
                    BodyState::ChunkData { remaining }
                });
            }
            BodyState::ChunkEnd { line_start } => {
                let limit = line_start + 2;
                let complete = self.take_line(cur, limit);
                if !complete {
                    if self.view(cur).len() > limit {
                        self.framing_error(cur, false, out);
                    }
                    return;
                }
                let line = &self.view(cur)[line_start..];
                let ok = if Self::STRICT {
                    line == b"\r\n"
                } else {
                    head::is_blank_line(line)
                };
                if !ok {
                    self.framing_error(cur, true, out);
                    return;
                }
                self.framing_line_read(cur);
                self.set_body_state(BodyState::ChunkSize {
                    line_start: self.view(cur).len(),
                });
            }
            BodyState::Trailer { line_start } => {
                let room = self
                    .max_head_bytes()
                    .saturating_sub(self.item().trailer_len);
                let limit = line_start + room;
                let complete = self.take_line(cur, limit);
                if self.view(cur).len() > limit {
                    self.trailer_too_large(cur, complete, out);
                    return;
                }
                if !complete {
                    return;
                }
                let line = &self.view(cur)[line_start..];
                let (blank, len) = if Self::STRICT {
                    let blank = line == b"\r\n";
                    if !blank && !head::is_strict_field_line(line) {
                        self.framing_error(cur, true, out);
                        return;
                    }
                    (blank, line.len())
                } else {
                    (head::is_blank_line(line), line.len())
                };
                self.item_mut().trailer_len += len;
                self.framing_line_read(cur);
                if blank {
                    self.end_message(cur, out);
                } else {
                    self.set_body_state(BodyState::Trailer {
                        line_start: self.view(cur).len(),
                    });
                }
            }
        }
    }
}
