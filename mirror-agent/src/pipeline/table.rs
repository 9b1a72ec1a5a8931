//! The flow table: connections by key, in slots, with a least-recently-active order.
//!
//! Owns where flows live. The key map holds slot numbers; flows sit in a slot vector reused
//! through a free list, so the LRU queue can name flows by slot and be checked and compacted
//! without hashing. The LRU queue is lazy: touching a flow appends `(slot, stamp)` and entries
//! whose stamp is no longer the flow's are stale and skipped; compaction keeps the queue within
//! twice the table.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use super::flow::Flow;

/// Direction-independent connection key: the two endpoints in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    lo: SocketAddr,
    hi: SocketAddr,
}

impl FlowKey {
    pub fn new(a: SocketAddr, b: SocketAddr) -> Self {
        if a <= b {
            Self { lo: a, hi: b }
        } else {
            Self { lo: b, hi: a }
        }
    }
}

impl Hash for FlowKey {
    /// One `write` of the packed addresses: the derived impl feeds SipHash field by field,
    /// which showed up as the top cost of the pipeline benchmark. Still SipHash with a random
    /// key (the key is remote-controlled: no hash flooding).
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut buf = [0u8; 36];
        let mut n = 0;
        for a in [self.lo, self.hi] {
            match a {
                SocketAddr::V4(v) => {
                    buf[n..n + 4].copy_from_slice(&v.ip().octets());
                    n += 4;
                }
                SocketAddr::V6(v) => {
                    buf[n..n + 16].copy_from_slice(&v.ip().octets());
                    n += 16;
                }
            }
            buf[n..n + 2].copy_from_slice(&a.port().to_ne_bytes());
            n += 2;
        }
        state.write(&buf[..n]);
    }
}

pub(super) type Slot = u32;

#[derive(Default)]
pub(super) struct FlowTable {
    index: HashMap<FlowKey, Slot>,
    slots: Vec<Option<(FlowKey, Flow)>>,
    free: Vec<Slot>,
    lru: VecDeque<(Slot, u64)>,
    next_touch: u64,
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn lookup(&self, key: &FlowKey) -> Option<Slot> {
        self.index.get(key).copied()
    }

    pub fn insert(&mut self, key: FlowKey, flow: Flow) -> Slot {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((key, flow));
                s
            }
            None => {
                self.slots.push(Some((key, flow)));
                (self.slots.len() - 1) as Slot
            }
        };
        self.index.insert(key, slot);
        slot
    }

    pub fn key(&self, slot: Slot) -> Option<FlowKey> {
        self.slots.get(slot as usize)?.as_ref().map(|(k, _)| *k)
    }

    pub fn get(&self, slot: Slot) -> Option<&Flow> {
        self.slots.get(slot as usize)?.as_ref().map(|(_, f)| f)
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Flow> {
        self.slots.get_mut(slot as usize)?.as_mut().map(|(_, f)| f)
    }

    pub fn remove(&mut self, slot: Slot) -> Option<Flow> {
        let (key, flow) = self.slots.get_mut(slot as usize)?.take()?;
        self.index.remove(&key);
        self.free.push(slot);
        Some(flow)
    }

    /// Marks the flow in `slot` as the most recently active.
    pub fn touch(&mut self, slot: Slot) {
        self.next_touch += 1;
        let stamp = self.next_touch;
        if let Some(f) = self.get_mut(slot) {
            f.touch = stamp;
        }
        self.lru.push_back((slot, stamp));
        if self.lru.len() > 2 * self.index.len() + 64 {
            let slots = &self.slots;
            self.lru.retain(|(s, st)| is_current(slots, *s, *st));
        }
    }

    /// Least recently active flow, skipping (and dropping) stale queue entries.
    pub fn oldest(&mut self) -> Option<Slot> {
        while let Some(&(slot, stamp)) = self.lru.front() {
            if is_current(&self.slots, slot, stamp) {
                return Some(slot);
            }
            self.lru.pop_front();
        }
        None
    }

    /// Least recently active flow for which `pred` holds (a scan: for rare memory pressure).
    pub fn oldest_where(&mut self, pred: impl Fn(&Flow) -> bool) -> Option<Slot> {
        let slots = &self.slots;
        self.lru
            .iter()
            .find(|(s, st)| {
                is_current(slots, *s, *st)
                    && slots[*s as usize].as_ref().is_some_and(|(_, f)| pred(f))
            })
            .map(|(s, _)| *s)
    }

    /// Slots of all flows, oldest flow first (by creation).
    pub fn all_by_id(&self) -> Vec<Slot> {
        let mut v: Vec<(u64, Slot)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|(_, f)| (f.id, i as Slot)))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Queue length (bounded by twice the table plus a constant).
    #[cfg(test)]
    pub fn lru_len(&self) -> usize {
        self.lru.len()
    }
}

fn is_current(slots: &[Option<(FlowKey, Flow)>], slot: Slot, stamp: u64) -> bool {
    slots
        .get(slot as usize)
        .and_then(Option::as_ref)
        .is_some_and(|(_, f)| f.touch == stamp)
}
