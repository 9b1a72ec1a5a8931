//! The out-of-order store of one direction: non-overlapping pieces of payload, sorted by stream
//! offset, each a zero-copy slice of the segment that brought it.
//!
//! Owns only storage and overlap resolution (first copy wins). It does not decide when a hole is
//! given up; that is [`super::Stream`]'s job. Written by hand rather than taken from a crate: the
//! TCP crates that have an assembler (smoltcp) track ranges over a ring buffer they own and copy
//! into; here payloads stay `Bytes` slices of the capture buffers so nothing is copied.

use std::collections::VecDeque;

use bytes::Bytes;

/// A run of bytes held out of order.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    /// Stream offset of `data[0]`.
    pub start: u64,
    pub data: Bytes,
    /// Capture time of the segment that carried these bytes first.
    pub ts_ns: u64,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// What an insert found already present.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overlap {
    /// Bytes already held (the new copy was dropped).
    pub duplicate: u64,
    /// Of those, bytes whose new copy differed from the held one.
    pub conflict: u64,
}

/// Sorted, non-overlapping pieces beyond the delivery point.
///
/// Empty, it is one null pointer: almost every stream delivers in order and never holds a
/// piece, and every connection has two streams (the 10000-connection RSS of issue 17). The
/// store is allocated at the first piece held and kept for the stream's life.
#[derive(Debug, Default)]
pub(super) struct OutOfOrder {
    held: Option<Box<Held>>,
}

impl OutOfOrder {
    pub fn is_empty(&self) -> bool {
        self.held.as_ref().is_none_or(|h| h.pieces.is_empty())
    }

    /// Number of pieces held.
    pub fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.pieces.len())
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.bytes)
    }

    /// Stream offset of the first piece.
    pub fn front_start(&self) -> Option<u64> {
        self.held.as_ref()?.pieces.front().map(|p| p.start)
    }

    /// Earliest capture time of any piece held: the time the oldest hole has been known.
    pub fn oldest_ts(&mut self) -> Option<u64> {
        self.held.as_mut()?.oldest_ts()
    }

    /// Stores `data` at `start`, keeping the bytes already held wherever the two overlap
    /// (the first copy wins, as a receiving TCP keeps what it queued first).
    pub fn insert(&mut self, start: u64, data: Bytes, ts_ns: u64) -> Overlap {
        if data.is_empty() {
            return Overlap::default();
        }
        self.held
            .get_or_insert_with(Box::default)
            .insert(start, data, ts_ns)
    }

    /// Removes and returns the first piece if it starts exactly at `offset`.
    pub fn pop_front_at(&mut self, offset: u64) -> Option<Piece> {
        self.held.as_mut()?.pop_front_at(offset)
    }

    /// Drops every byte at or beyond `limit`; returns how many were dropped.
    pub fn truncate_from(&mut self, limit: u64) -> u64 {
        self.held.as_mut().map_or(0, |h| h.truncate_from(limit))
    }

    /// Whether the store has been allocated (a piece was held at some point).
    #[cfg(test)]
    pub fn is_allocated(&self) -> bool {
        self.held.is_some()
    }
}

/// The pieces themselves, allocated at the first out-of-order segment.
#[derive(Debug, Default)]
struct Held {
    pieces: VecDeque<Piece>,
    bytes: usize,
    /// Earliest `ts_ns` among the pieces; `None` when empty or not yet recomputed after a removal.
    oldest_ts: Option<u64>,
}

impl Held {
    fn oldest_ts(&mut self) -> Option<u64> {
        if self.oldest_ts.is_none() {
            self.oldest_ts = self.pieces.iter().map(|p| p.ts_ns).min();
        }
        self.oldest_ts
    }

    fn insert(&mut self, start: u64, data: Bytes, ts_ns: u64) -> Overlap {
        let mut overlap = Overlap::default();
        let end = start + data.len() as u64;
        if data.is_empty() {
            return overlap;
        }
        // Ends are sorted as well as starts (pieces never overlap): skip the pieces wholly before.
        let mut i = self.pieces.partition_point(|p| p.end() <= start);
        let mut cur = start;
        while cur < end {
            let Some(p) = self.pieces.get(i) else { break };
            if p.start >= end {
                break;
            }
            if cur < p.start {
                let held_start = p.start;
                let piece = slice(&data, start, cur, held_start, ts_ns);
                self.add(i, piece);
                i += 1;
                cur = held_start; // The held piece is now at `i`.
            }
            // cur lies inside p: compare the overlapping run with the held copy.
            let p = &self.pieces[i];
            let run_end = end.min(p.end());
            let held = &p.data[(cur - p.start) as usize..(run_end - p.start) as usize];
            let new = &data[(cur - start) as usize..(run_end - start) as usize];
            overlap.duplicate += held.len() as u64;
            if held != new {
                overlap.conflict += held.iter().zip(new).filter(|(a, b)| a != b).count() as u64;
            }
            cur = run_end;
            i += 1;
        }
        if cur < end {
            let piece = slice(&data, start, cur, end, ts_ns);
            self.add(i, piece);
        }
        overlap
    }

    fn add(&mut self, at: usize, piece: Piece) {
        self.bytes += piece.data.len();
        if let Some(oldest) = self.oldest_ts.as_mut() {
            *oldest = (*oldest).min(piece.ts_ns);
        } else if self.pieces.is_empty() {
            self.oldest_ts = Some(piece.ts_ns);
        }
        self.pieces.insert(at, piece);
    }

    fn pop_front_at(&mut self, offset: u64) -> Option<Piece> {
        if self.pieces.front()?.start != offset {
            return None;
        }
        let piece = self.pieces.pop_front()?;
        self.removed(&piece);
        Some(piece)
    }

    fn truncate_from(&mut self, limit: u64) -> u64 {
        let mut dropped = 0;
        while let Some(last) = self.pieces.back_mut() {
            if last.start >= limit {
                let piece = self.pieces.pop_back().expect("back exists");
                dropped += piece.data.len() as u64;
                self.removed(&piece);
            } else {
                if last.end() > limit {
                    let keep = (limit - last.start) as usize;
                    let cut = last.data.len() - keep;
                    last.data.truncate(keep);
                    self.bytes -= cut;
                    dropped += cut as u64;
                }
                break;
            }
        }
        dropped
    }

    fn removed(&mut self, piece: &Piece) {
        self.bytes -= piece.data.len();
        if self.oldest_ts == Some(piece.ts_ns) || self.pieces.is_empty() {
            self.oldest_ts = None;
        }
    }
}

/// The piece `[from, to)` of `data`, which starts at stream offset `data_start` (no copy).
fn slice(data: &Bytes, data_start: u64, from: u64, to: u64, ts_ns: u64) -> Piece {
    Piece {
        start: from,
        data: data.slice((from - data_start) as usize..(to - data_start) as usize),
        ts_ns,
    }
}
