//! The kernel's per-CPU counters, summed, and the ring reader's own.

use aya::maps::{MapData, PerCpuArray};
use mirror_common::{counter, maps};

use super::CaptureError;

/// Totals over all CPUs of the classifier counters (see `mirror_common::counter`), plus what the
/// ring reader counts in user space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub seen: u64,
    pub matched: u64,
    pub sampled_out: u64,
    pub records: u64,
    pub ring_full: u64,
    pub payload_bytes: u64,
    pub truncated: u64,
    pub unparseable: u64,
    pub empty: u64,
    pub ignored: u64,
    pub load_error: u64,
    /// User space: records the reader could not decode (among `records`; should stay 0).
    pub malformed_records: u64,
}

impl Counters {
    pub(super) fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self, CaptureError> {
        let get = |index: u32| -> Result<u64, CaptureError> {
            let values = map.get(&index, 0).map_err(|source| CaptureError::Map {
                name: maps::COUNTERS,
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(Self {
            seen: get(counter::SEEN)?,
            matched: get(counter::MATCHED)?,
            sampled_out: get(counter::SAMPLED_OUT)?,
            records: get(counter::RECORDS)?,
            ring_full: get(counter::RING_FULL)?,
            payload_bytes: get(counter::PAYLOAD_BYTES)?,
            truncated: get(counter::TRUNCATED)?,
            unparseable: get(counter::UNPARSEABLE)?,
            empty: get(counter::EMPTY)?,
            ignored: get(counter::IGNORED)?,
            load_error: get(counter::LOAD_ERROR)?,
            // Not a kernel counter: LiveCapture::counters fills it in.
            malformed_records: 0,
        })
    }

    /// Whether every matched packet is accounted for: written, dropped for a full ring, or
    /// deliberately skipped (ignored, sampled out, empty). Reads of per-CPU values are not atomic
    /// across counters, so check this when traffic has stopped.
    pub fn balanced(&self) -> bool {
        self.matched
            == self.ignored
                + self.sampled_out
                + self.empty
                + self.records
                + self.ring_full
                + self.load_error
    }

    /// Packets matched and meant for userspace that did not reach it.
    pub fn dropped(&self) -> u64 {
        self.ring_full + self.load_error
    }
}
