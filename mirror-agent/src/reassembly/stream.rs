//! One direction of a TCP connection: reorders segments and reports holes.
//!
//! Positions are kept as 64-bit stream offsets (offset 0 is the first byte after the SYN, or the
//! first byte seen when the connection was picked up mid-stream); a 32-bit sequence number is
//! turned into an offset by its wrapping distance from the delivery point, so a stream may cross
//! `0xFFFF_FFFF → 0` any number of times (RFC 9293 3.4: sequence space is modulo 2^32).

use bytes::{Buf, Bytes};

use super::buffer::OutOfOrder;
use crate::capture::TcpFlags;

/// The largest receive window TCP can advertise is below 2^30 bytes (RFC 7323 2.3: window
/// scale at most 14). No sender may send a byte that far beyond what the receiver has
/// acknowledged, so a segment starting further ahead of the delivery point is not part of this
/// stream as we know it (a stale or forged segment, or a sequence number we misread).
const MAX_WINDOW: u64 = 1 << 30;

/// Bounds for one direction's reassembly.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Out-of-order bytes kept while waiting for a hole to fill; beyond this the oldest hole is
    /// declared lost.
    pub max_buffered_bytes: usize,
    /// Out-of-order pieces (slices of segments) kept at once; every hole sits before a piece, so
    /// this also bounds the holes. Beyond it the oldest hole is declared lost.
    pub max_segments: usize,
    /// How long a hole may wait for its bytes before it is declared lost.
    pub gap_timeout_ns: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_buffered_bytes: 1 << 20,
            max_segments: 256,
            gap_timeout_ns: 1_000_000_000,
        }
    }
}

/// What a stream tells its consumer, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Next in-order bytes.
    Data { bytes: Bytes, ts_ns: u64 },
    /// `len` bytes at this point of the stream are lost for good.
    Gap { len: u64, ts_ns: u64 },
    /// FIN (`reset == false`) or RST (`reset == true`) reached in order.
    End { reset: bool },
}

/// Loss and anomaly counters for one direction.
///
/// Every payload byte pushed lands in exactly one place (checked by the tests):
///
/// ```text
/// bytes_offered = bytes_delivered + retransmitted_bytes + before_start_bytes
///               + after_end_bytes + overflow_bytes + Stream::buffered_bytes()
/// ```
///
/// and the delivery point moves only by delivered bytes or declared gaps:
/// `Stream::stream_offset() = bytes_delivered + gap_bytes`. Gap bytes were never seen in time
/// (some may arrive later and are then counted as retransmitted); `overlap_conflict_bytes` is a
/// subset of `retransmitted_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub bytes_delivered: u64,
    /// Bytes that arrived again: at offsets already delivered or declared lost, or already held
    /// out of order. Dropped (the first copy is kept).
    pub retransmitted_bytes: u64,
    /// Overlapping bytes whose content differed from the first copy (the first copy is kept).
    /// Only bytes still held out of order can be compared: delivered bytes are not retained.
    pub overlap_conflict_bytes: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Bytes discarded because a bound was hit: they start beyond the largest possible TCP
    /// window ahead of the delivery point. (A full out-of-order buffer discards nothing: it
    /// declares its oldest hole lost, counted in `gaps_bound`.)
    pub overflow_bytes: u64,
    /// Payload bytes pushed, all segments included.
    pub bytes_offered: u64,
    /// Segments pushed.
    pub segments: u64,
    /// Bytes before the start of the stream (before the ISN, or before the first segment seen
    /// when the connection was picked up mid-stream). Dropped.
    pub before_start_bytes: u64,
    /// Bytes at or after the FIN, in or after a RST, or pushed after the stream ended. Dropped.
    pub after_end_bytes: u64,
    /// Gaps declared because the hole waited `gap_timeout_ns`.
    pub gaps_timeout: u64,
    /// Gaps declared because the out-of-order buffer hit a bound.
    pub gaps_bound: u64,
    /// Gaps declared by `flush` or by a RST.
    pub gaps_end: u64,
}

impl StreamStats {
    /// Bytes pushed and dropped for any reason (retransmitted, before start, after end, overflow).
    pub fn discarded_bytes(&self) -> u64 {
        self.retransmitted_bytes
            + self.before_start_bytes
            + self.after_end_bytes
            + self.overflow_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet that fixes the start.
    Idle,
    Open,
    /// End delivered; everything further is dropped.
    Ended,
}

#[derive(Debug, Clone, Copy)]
enum GapCause {
    Timeout,
    Bound,
    End,
}

/// Reassembly state for one direction.
#[derive(Debug)]
pub struct Stream {
    cfg: StreamConfig,
    state: State,
    /// Sequence number of stream offset 0.
    base_seq: u32,
    /// Stream offset of the next byte to deliver: everything before is delivered or lost.
    next: u64,
    /// Stream offset of the FIN (first one seen wins) and its capture time.
    fin_at: Option<u64>,
    fin_ts: u64,
    midstream: bool,
    ooo: OutOfOrder,
    /// Latest capture time seen (for gaps declared by `flush`).
    last_ts: u64,
    stats: StreamStats,
}

impl Stream {
    pub fn new(cfg: StreamConfig) -> Self {
        Self {
            cfg,
            state: State::Idle,
            base_seq: 0,
            next: 0,
            fin_at: None,
            fin_ts: 0,
            midstream: false,
            ooo: OutOfOrder::default(),
            last_ts: 0,
            stats: StreamStats::default(),
        }
    }

    /// Whether the out-of-order store was ever allocated (see [`OutOfOrder`]).
    #[cfg(test)]
    pub(super) fn out_of_order_allocated(&self) -> bool {
        self.ooo.is_allocated()
    }

    /// Sequence number of the stream's first data byte, once the stream has started.
    pub fn start_seq(&self) -> Option<u32> {
        (self.state != State::Idle).then_some(self.base_seq)
    }

    /// Feeds one segment. A SYN sets the initial sequence number (its data, TCP Fast Open,
    /// starts at `seq + 1`); without a SYN the stream starts at the first segment seen.
    /// A later SYN does not restart the stream: when a connection's 4-tuple is reused, the
    /// pipeline replaces the `Stream`.
    pub fn push(
        &mut self,
        seq: u32,
        flags: TcpFlags,
        payload: Bytes,
        ts_ns: u64,
        out: &mut Vec<StreamEvent>,
    ) {
        let len = payload.len() as u64;
        self.stats.segments += 1;
        self.stats.bytes_offered += len;
        self.last_ts = self.last_ts.max(ts_ns);
        // The SYN occupies one sequence number before the first data byte (RFC 9293 3.4).
        let data_seq = if flags.syn() {
            seq.wrapping_add(1)
        } else {
            seq
        };
        match self.state {
            State::Ended => {
                self.stats.after_end_bytes += len;
                return;
            }
            State::Idle => {
                // A bare ACK does not fix the start: only data, SYN, FIN or RST do.
                if len == 0 && flags.0 & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) == 0 {
                    return;
                }
                self.state = State::Open;
                self.base_seq = data_seq;
                self.midstream = !flags.syn();
            }
            State::Open => {}
        }
        if flags.rst() {
            // A RST may carry data, but as a diagnostic, not stream bytes (RFC 1122 4.2.2.12).
            self.stats.after_end_bytes += len;
            self.end_by_reset(ts_ns, out);
            return;
        }
        let start = self.offset_of(data_seq);
        if flags.fin() {
            self.note_fin(start + len as i64, ts_ns);
        }
        if len > 0 {
            self.accept(start, payload, ts_ns, out);
        }
        self.release(out);
        self.enforce_bounds(ts_ns, out);
        self.expire(ts_ns, out);
    }

    /// The hot path without a copy: a segment that starts exactly at the delivery point, while
    /// nothing is held out of order and no FIN is known, carrying no SYN, FIN or RST, is
    /// accounted here as offered and delivered, and the caller hands its bytes to the consumer
    /// straight from the capture buffer (so nothing is copied before the framer keeps what it
    /// needs). Returns `false`, changing nothing, for any other segment: it then goes through
    /// [`Self::push`]. The counters end up exactly as `push` would leave them.
    pub fn deliver_in_place(&mut self, seq: u32, flags: TcpFlags, len: usize, ts_ns: u64) -> bool {
        if self.state != State::Open
            || len == 0
            || !self.ooo.is_empty()
            || self.fin_at.is_some()
            || flags.0 & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) != 0
            || self.offset_of(seq) != self.next as i64
        {
            return false;
        }
        let len = len as u64;
        self.stats.segments += 1;
        self.stats.bytes_offered += len;
        self.last_ts = self.last_ts.max(ts_ns);
        self.next += len;
        self.stats.bytes_delivered += len;
        true
    }

    /// Declares holes older than the gap timeout lost and releases what follows them.
    pub fn poll(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        self.last_ts = self.last_ts.max(now_ns);
        self.expire(now_ns, out);
    }

    /// End of input (pcap done, flow expired): every remaining hole is lost, buffered data released.
    /// If a FIN was seen, the stream then ends.
    pub fn flush(&mut self, out: &mut Vec<StreamEvent>) {
        while self.declare_first_hole(self.last_ts, GapCause::End, out) {}
    }

    /// Releases every byte held now, declaring the holes before them lost (counted as
    /// `gaps_bound`). For the pipeline's global memory budget: unlike `flush`, it does not give up
    /// the bytes between the last held piece and a FIN, which may still arrive.
    pub fn shed(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        while !self.ooo.is_empty() && self.declare_first_hole(now_ns, GapCause::Bound, out) {}
    }

    /// Out-of-order bytes held right now (for the global memory budget).
    ///
    /// This counts payload bytes. Each held piece is a slice that keeps its whole capture buffer
    /// alive, so real memory is at most `max_segments` capture buffers plus this.
    pub fn buffered_bytes(&self) -> usize {
        self.ooo.bytes()
    }

    /// Out-of-order pieces held right now (at most `max_segments` between calls).
    pub fn buffered_segments(&self) -> usize {
        self.ooo.len()
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// The sequence number of stream offset `offset` (wrapping).
    pub fn seq_at(&self, offset: u64) -> u32 {
        self.base_seq.wrapping_add(offset as u32)
    }

    /// Stream offset of the delivery point: bytes delivered plus bytes declared lost.
    pub fn stream_offset(&self) -> u64 {
        self.next
    }

    /// `Some(true)` when the stream was picked up without its SYN, `None` before it started.
    pub fn midstream(&self) -> Option<bool> {
        (self.state != State::Idle).then_some(self.midstream)
    }

    /// The End event has been emitted.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Stream offset of `seq`, by its wrapping distance from the delivery point; negative before
    /// the start. Segments more than 2^31 behind alias to ahead; `accept` rejects them as
    /// beyond the window.
    fn offset_of(&self, seq: u32) -> i64 {
        let next_seq = self.base_seq.wrapping_add(self.next as u32);
        self.next as i64 + i64::from(seq.wrapping_sub(next_seq) as i32)
    }

    fn note_fin(&mut self, at: i64, ts_ns: u64) {
        // The first FIN wins; one behind the delivery point or beyond any window is bogus.
        if self.fin_at.is_some() || at < self.next as i64 || at as u64 - self.next >= MAX_WINDOW {
            return;
        }
        let at = at as u64;
        self.fin_at = Some(at);
        self.fin_ts = ts_ns;
        self.stats.after_end_bytes += self.ooo.truncate_from(at);
    }

    /// Classifies the bytes of one segment starting at stream offset `start`; new in-order bytes
    /// are delivered at once, new out-of-order bytes are stored.
    fn accept(&mut self, start: i64, mut data: Bytes, ts_ns: u64, out: &mut Vec<StreamEvent>) {
        let len = data.len() as u64;
        if start < 0 {
            let cut = start.unsigned_abs().min(len);
            self.stats.before_start_bytes += cut;
            data.advance(cut as usize);
            if data.is_empty() {
                return;
            }
        }
        let mut start = start.max(0) as u64;
        if start >= self.next + MAX_WINDOW {
            self.stats.overflow_bytes += data.len() as u64;
            return;
        }
        if let Some(fin) = self.fin_at {
            let end = start + data.len() as u64;
            if end > fin {
                let keep = fin.saturating_sub(start) as usize;
                self.stats.after_end_bytes += data.len() as u64 - keep as u64;
                data.truncate(keep);
            }
        }
        if start < self.next {
            let cut = (self.next - start).min(data.len() as u64);
            self.stats.retransmitted_bytes += cut;
            data.advance(cut as usize);
            start += cut;
        }
        if data.is_empty() {
            return;
        }
        if start == self.next && self.ooo.is_empty() {
            // The hot path: in order, nothing waiting.
            self.deliver(data, ts_ns, out);
        } else {
            let overlap = self.ooo.insert(start, data, ts_ns);
            self.stats.retransmitted_bytes += overlap.duplicate;
            self.stats.overlap_conflict_bytes += overlap.conflict;
        }
    }

    fn deliver(&mut self, bytes: Bytes, ts_ns: u64, out: &mut Vec<StreamEvent>) {
        self.next += bytes.len() as u64;
        self.stats.bytes_delivered += bytes.len() as u64;
        out.push(StreamEvent::Data { bytes, ts_ns });
    }

    /// Delivers the pieces that became contiguous, then the End if the FIN is reached.
    fn release(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(piece) = self.ooo.pop_front_at(self.next) {
            self.deliver(piece.data, piece.ts_ns, out);
        }
        if self.state == State::Open && self.fin_at == Some(self.next) {
            debug_assert!(self.ooo.is_empty(), "bytes past the FIN are trimmed");
            self.state = State::Ended;
            out.push(StreamEvent::End { reset: false });
        }
    }

    /// Gives up the first hole (before the first held piece, or before a FIN when nothing is
    /// held) and releases what follows. Returns false when there is no hole.
    fn declare_first_hole(
        &mut self,
        ts_ns: u64,
        cause: GapCause,
        out: &mut Vec<StreamEvent>,
    ) -> bool {
        if self.state != State::Open {
            return false;
        }
        let to = match (self.ooo.front_start(), self.fin_at) {
            (Some(start), _) => start,
            (None, Some(fin)) if fin > self.next => fin,
            _ => return false,
        };
        let len = to - self.next;
        debug_assert!(
            len > 0,
            "contiguous pieces are released before a hole is declared"
        );
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        match cause {
            GapCause::Timeout => self.stats.gaps_timeout += 1,
            GapCause::Bound => self.stats.gaps_bound += 1,
            GapCause::End => self.stats.gaps_end += 1,
        }
        self.next = to;
        out.push(StreamEvent::Gap { len, ts_ns });
        self.release(out);
        true
    }

    fn enforce_bounds(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        while self.ooo.bytes() > self.cfg.max_buffered_bytes
            || self.ooo.len() > self.cfg.max_segments
        {
            if !self.declare_first_hole(now_ns, GapCause::Bound, out) {
                break;
            }
        }
    }

    /// Declares lost every hole that has been known for `gap_timeout_ns` by `now_ns`. A hole is
    /// known from the arrival of the earliest byte (or FIN) held beyond it.
    fn expire(&mut self, now_ns: u64, out: &mut Vec<StreamEvent>) {
        while self.state == State::Open {
            let fin_waiting = self.fin_at.is_some_and(|fin| fin > self.next);
            let since = match (self.ooo.oldest_ts(), fin_waiting) {
                (Some(ts), true) => ts.min(self.fin_ts),
                (Some(ts), false) => ts,
                (None, true) => self.fin_ts,
                (None, false) => return,
            };
            if now_ns.saturating_sub(since) < self.cfg.gap_timeout_ns
                || !self.declare_first_hole(now_ns, GapCause::Timeout, out)
            {
                return;
            }
        }
    }

    /// RST: the connection is gone, so no hole can fill any more. Release what is held, with its
    /// holes declared lost, then end.
    fn end_by_reset(&mut self, ts_ns: u64, out: &mut Vec<StreamEvent>) {
        while !self.ooo.is_empty() && self.declare_first_hole(ts_ns, GapCause::End, out) {}
        if self.state == State::Open {
            self.state = State::Ended;
            out.push(StreamEvent::End { reset: true });
        }
    }
}
