//! IP fragment reassembly, bounded.
//!
//! Owns the fragments of IP datagrams still being reassembled. The per-datagram work (offsets,
//! overlaps, the 64 KiB limit) is etherparse's `IpDefragBuf`; this module adds what etherparse's
//! own pool lacks and a capture path needs: a maximum number of datagrams in flight, a timeout
//! (RFC 791 suggests a reassembly timer; Linux `ipfrag_time` defaults to 30 s) and a counter for
//! every way a fragment can be lost.

use std::collections::HashMap;
use std::net::IpAddr;

use etherparse::defrag::IpDefragBuf;
use etherparse::{IpFragOffset, IpNumber};

/// Identifies one datagram being reassembled (RFC 791: source, destination, protocol, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub proto: u8,
}

/// Fragment counters. Every fragment packet ends up in exactly one datagram that is either
/// reassembled or lost for one of the reasons below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Fragment packets accepted into a reassembly buffer.
    pub fragments: u64,
    /// Datagrams completed.
    pub reassembled: u64,
    /// Datagrams dropped because their fragments did not all arrive within the timeout.
    pub timed_out: u64,
    /// Datagrams dropped to make room (more than `max_datagrams` in flight).
    pub evicted: u64,
    /// Datagrams dropped because a fragment was inconsistent (bad length, conflicting end).
    pub invalid: u64,
    /// Datagrams still incomplete when the input ended.
    pub incomplete_at_end: u64,
}

struct Pending {
    buf: IpDefragBuf,
    first_ts_ns: u64,
}

/// Bounded set of datagrams in reassembly.
pub struct Defragmenter {
    pending: HashMap<FragKey, Pending>,
    max_datagrams: usize,
    timeout_ns: u64,
    last_sweep_ns: u64,
    pub stats: FragStats,
}

impl Defragmenter {
    pub fn new(max_datagrams: usize, timeout_ns: u64) -> Self {
        Self {
            pending: HashMap::new(),
            max_datagrams: max_datagrams.max(1),
            timeout_ns,
            last_sweep_ns: 0,
            stats: FragStats::default(),
        }
    }

    /// Adds one fragment; returns the whole IP payload when this fragment completes it.
    pub fn add(
        &mut self,
        key: FragKey,
        offset: IpFragOffset,
        more_fragments: bool,
        payload: &[u8],
        ts_ns: u64,
    ) -> Option<Vec<u8>> {
        self.sweep(ts_ns);
        self.stats.fragments += 1;
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_datagrams {
            self.evict_oldest();
        }
        let entry = self.pending.entry(key).or_insert_with(|| Pending {
            buf: IpDefragBuf::new(IpNumber(key.proto), Vec::new(), Vec::new()),
            first_ts_ns: ts_ns,
        });
        if entry.buf.add(offset, more_fragments, payload).is_err() {
            self.pending.remove(&key);
            self.stats.invalid += 1;
            return None;
        }
        if entry.buf.is_complete() {
            let done = self.pending.remove(&key)?;
            self.stats.reassembled += 1;
            return Some(done.buf.take_bufs().0);
        }
        None
    }

    /// Datagrams in reassembly right now.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// End of input: everything still pending is lost.
    pub fn finish(&mut self) {
        self.stats.incomplete_at_end += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Drops datagrams older than the timeout; runs at most once per second of capture time.
    fn sweep(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_sweep_ns) < 1_000_000_000 {
            return;
        }
        self.last_sweep_ns = now_ns;
        let timeout = self.timeout_ns;
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now_ns.saturating_sub(p.first_ts_ns) <= timeout);
        self.stats.timed_out += (before - self.pending.len()) as u64;
    }

    fn evict_oldest(&mut self) {
        // A linear scan: it only runs when the table is full, which a sane capture never reaches.
        if let Some(key) = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.first_ts_ns)
            .map(|(k, _)| *k)
        {
            self.pending.remove(&key);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            id,
            proto: 6,
        }
    }

    #[test]
    fn reassembles_out_of_order_fragments() {
        let mut d = Defragmenter::new(4, 30_000_000_000);
        let data: Vec<u8> = (0..40u8).collect();
        assert!(
            d.add(
                key(1),
                IpFragOffset::try_new(2).unwrap(),
                true,
                &data[16..32],
                0
            )
            .is_none()
        );
        assert!(
            d.add(
                key(1),
                IpFragOffset::try_new(4).unwrap(),
                false,
                &data[32..],
                0
            )
            .is_none()
        );
        let whole = d
            .add(key(1), IpFragOffset::ZERO, true, &data[..16], 0)
            .expect("complete");
        assert_eq!(whole, data);
        assert_eq!(d.stats.fragments, 3);
        assert_eq!(d.stats.reassembled, 1);
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn bounded_and_timed_out() {
        let mut d = Defragmenter::new(2, 1_000_000_000);
        for id in 0..5 {
            d.add(key(id), IpFragOffset::ZERO, true, &[0; 8], 10);
        }
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.stats.evicted, 3);
        // 5 s later both remaining datagrams are stale.
        d.add(key(99), IpFragOffset::ZERO, true, &[0; 8], 5_000_000_000);
        assert_eq!(d.stats.timed_out, 2);
        // Unaligned non-final fragment: invalid.
        d.add(key(100), IpFragOffset::ZERO, true, &[0; 5], 5_000_000_000);
        assert_eq!(d.stats.invalid, 1);
        d.finish();
        assert_eq!(d.stats.incomplete_at_end, 1);
    }
}
