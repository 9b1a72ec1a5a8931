//! The kernel's per-CPU counters, summed, and the ring reader's own.

use aya::maps::{MapData, PerCpuArray};
use mirror_common::{counter, maps};

use super::CaptureError;

/// Totals over all CPUs of the classifier counters (see `mirror_common::counter`), plus what the
/// ring reader counts in user space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Matched skbs whose every record was written.
    pub captured: u64,
    /// Records with a chunk offset above 0 (later chunks of skbs over 64 KiB of payload).
    pub chunked_records: u64,
    /// Records not written (the chunk that failed and the later ones of its skb).
    pub chunks_lost: u64,
    /// Largest TCP payload of one skb the classifier recorded (maximum over CPUs).
    pub max_skb_payload: u64,
    /// Captured skbs that lay wholly inside a body nobody needs: recorded without payload.
    pub skipped: u64,
    /// Payload bytes of those skbs, not copied.
    pub skipped_bytes: u64,
    /// Matched packets of ports whose connections are read as TLS plaintext: not recorded.
    pub tls_ciphertext: u64,
    /// User space: records the reader could not decode (among `records`; should stay 0).
    pub malformed_records: u64,
    /// User space: interfaces the classifiers are attached to now.
    pub interfaces: u64,
    /// User space: what following `--iface` globs did.
    pub iface: super::IfaceStats,
    /// User space: bodies the programs were told to skip.
    pub skip: super::SkipStats,
    /// `--tls`: the TLS programs and their reader.
    pub tls: Option<super::tls::TlsCounters>,
}

impl Counters {
    pub(super) fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self, CaptureError> {
        let values = |index: u32| {
            map.get(&index, 0).map_err(|source| CaptureError::Map {
                name: maps::COUNTERS,
                source,
            })
        };
        let get = |index: u32| -> Result<u64, CaptureError> { Ok(values(index)?.iter().sum()) };
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
            captured: get(counter::CAPTURED)?,
            chunked_records: get(counter::CHUNKED_RECORDS)?,
            chunks_lost: get(counter::CHUNKS_LOST)?,
            skipped: get(counter::SKIPPED)?,
            skipped_bytes: get(counter::SKIPPED_BYTES)?,
            tls_ciphertext: get(counter::TLS_CIPHERTEXT)?,
            max_skb_payload: values(counter::MAX_SKB_PAYLOAD)?
                .iter()
                .copied()
                .max()
                .unwrap_or(0),
            // Not kernel counters: LiveCapture::counters fills them in.
            malformed_records: 0,
            interfaces: 0,
            iface: super::IfaceStats::default(),
            skip: super::SkipStats::default(),
            tls: None,
        })
    }

    /// Whether every matched skb is accounted for: captured, dropped (full ring, load error), or
    /// deliberately skipped (ignored, sampled out, empty); see `mirror_common::counter`. Reads of
    /// per-CPU values are not atomic across counters, so check this when traffic has stopped.
    pub fn balanced(&self) -> bool {
        self.matched
            == self.tls_ciphertext
                + self.ignored
                + self.sampled_out
                + self.empty
                + self.captured
                + self.ring_full
                + self.load_error
    }

    /// Packets matched and meant for userspace that did not reach it (wholly or in part).
    pub fn dropped(&self) -> u64 {
        self.ring_full + self.load_error
    }
}

#[cfg(test)]
mod tests {
    use super::Counters;

    #[test]
    fn skbs_balance_and_records_count_chunks() {
        // 10 matched skbs: 1 ignored, 2 empty, 5 captured (one of them in 3 chunks), 1 lost to a
        // full ring after its first of 2 chunks, 1 load error on its only chunk.
        let c = Counters {
            matched: 10,
            ignored: 1,
            empty: 2,
            captured: 5,
            ring_full: 1,
            load_error: 1,
            records: 5 + 2 + 1,
            chunked_records: 2,
            chunks_lost: 1 + 1,
            ..Counters::default()
        };
        assert!(c.balanced());
        assert_eq!(c.dropped(), 2);
        assert!(!Counters { captured: 4, ..c }.balanced());
    }
}
