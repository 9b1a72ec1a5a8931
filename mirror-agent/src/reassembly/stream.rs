//! One direction of a TCP connection: reorders segments and reports holes.
// API agreed between the pipeline and reassembly; implementation in progress.

use bytes::Bytes;

use crate::capture::TcpFlags;

/// Bounds for one direction's reassembly.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Out-of-order bytes kept while waiting for a hole to fill; beyond this the oldest hole is
    /// declared lost.
    pub max_buffered_bytes: usize,
    /// Out-of-order ranges (holes + 1) kept at once.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub bytes_delivered: u64,
    pub retransmitted_bytes: u64,
    /// Overlapping bytes whose content differed from the first copy (the first copy is kept).
    pub overlap_conflict_bytes: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Out-of-order bytes discarded because a bound was hit.
    pub overflow_bytes: u64,
}

/// Reassembly state for one direction.
#[derive(Debug)]
pub struct Stream {
    _cfg: StreamConfig,
}

impl Stream {
    pub fn new(cfg: StreamConfig) -> Self {
        Self { _cfg: cfg }
    }

    /// Feeds one segment. A SYN sets the initial sequence number (its data, TCP Fast Open,
    /// starts at `seq + 1`); without a SYN the stream starts at the first segment seen.
    pub fn push(
        &mut self,
        _seq: u32,
        _flags: TcpFlags,
        _payload: Bytes,
        _ts_ns: u64,
        _out: &mut Vec<StreamEvent>,
    ) {
        unimplemented!("reassembly in progress")
    }

    /// Declares holes older than the gap timeout lost and releases what follows them.
    pub fn poll(&mut self, _now_ns: u64, _out: &mut Vec<StreamEvent>) {
        unimplemented!("reassembly in progress")
    }

    /// End of input (pcap done, flow expired): every remaining hole is lost, buffered data released.
    pub fn flush(&mut self, _out: &mut Vec<StreamEvent>) {
        unimplemented!("reassembly in progress")
    }

    /// Out-of-order bytes held right now (for the global memory budget).
    pub fn buffered_bytes(&self) -> usize {
        0
    }

    pub fn stats(&self) -> &StreamStats {
        unimplemented!("reassembly in progress")
    }
}
