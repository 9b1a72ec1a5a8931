//! The flow table: connections by key, in slots, with a least-recently-active order.
//!
//! Owns where flows live. The key index holds slot numbers only; flows sit, with their keys, in
//! a slot vector reused through a free list, so the LRU queue can name flows by slot and be
//! checked and compacted without hashing. The LRU queue is lazy: touching a flow appends
//! `(slot, stamp)` and entries whose stamp is no longer the flow's are stale and skipped;
//! compaction keeps the queue within twice the table.
//!
//! Two more lazy queues serve the memory budget, in the same activity order: flows holding
//! bytes, and flows with holes. Without them, finding the next flow to shed or evict scanned
//! every flow on every segment over the budget (100k flows with unfinished 8 KB heads took
//! 100 times as long as with 1 KB heads); with them each entry is skipped at most once.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;

use hashbrown::HashTable;

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
    /// One `write` of the packed addresses: the derived impl feeds the hasher field by field,
    /// which showed up as the top cost of the pipeline benchmark. The table's hasher is seeded
    /// per process (the key is remote-controlled: no hash flooding).
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
    /// Slot numbers by their flow's key, compared through `slots`. Looked up for every segment:
    /// a map holding the 64-byte keys again was 72 bytes an entry, over a MiB at 10000 flows,
    /// and its lookup one cache miss more than the slot's, which is read next anyway (the
    /// lookup was 15% of the agent's samples at 10000 connections). At 4 bytes an entry the
    /// index stays in cache.
    index: HashTable<Slot>,
    /// foldhash, seeded per process (keys come from the network), instead of SipHash, which
    /// showed in the profile.
    hasher: foldhash::fast::RandomState,
    slots: Vec<Option<(FlowKey, Flow)>>,
    /// Each slot's latest touch stamp (0: free), beside the flows: trimming the lazy LRU
    /// queue reads this dense array instead of every flow's cache lines (with 10000 flows
    /// that was two cache misses per segment).
    stamps: Vec<u64>,
    free: Vec<Slot>,
    lru: VecDeque<(Slot, u64)>,
    /// Flows holding bytes (out-of-order data or a partial message), by last activity.
    holding: VecDeque<(Slot, u64)>,
    /// Flows with holes in their reassembly, by last activity.
    holed: VecDeque<(Slot, u64)>,
    next_touch: u64,
    /// Queue entries looked at to find budget victims (the work the lazy queues bound).
    #[cfg(test)]
    pub(super) budget_steps: u64,
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn lookup(&self, key: &FlowKey) -> Option<Slot> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&s| {
                key_at(slots, s) == Some(key)
            })
            .copied()
    }

    pub fn insert(&mut self, key: FlowKey, flow: Flow) -> Slot {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((key, flow));
                self.stamps[s as usize] = 0;
                s
            }
            None => {
                self.slots.push(Some((key, flow)));
                self.stamps.push(0);
                (self.slots.len() - 1) as Slot
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(key), slot, |&s| rehash(slots, hasher, s));
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
        let key = self.key(slot)?;
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher.hash_one(key), |&s| s == slot)
        {
            entry.remove();
        }
        let (_, flow) = self.slots[slot as usize].take()?;
        self.stamps[slot as usize] = 0;
        self.free.push(slot);
        Some(flow)
    }

    /// Marks the flow in `slot` as the most recently active.
    pub fn touch(&mut self, slot: Slot) {
        self.next_touch += 1;
        let stamp = self.next_touch;
        if let Some(f) = self.get_mut(slot) {
            f.touch = stamp;
            self.stamps[slot as usize] = stamp;
        }
        self.lru.push_back((slot, stamp));
        if self.lru.len() > 2 * self.index.len() + 64 {
            let stamps = &self.stamps;
            self.lru.retain(|(s, st)| is_current(stamps, *s, *st));
        }
    }

    /// Least recently active flow, skipping (and dropping) stale queue entries.
    pub fn oldest(&mut self) -> Option<Slot> {
        while let Some(&(slot, stamp)) = self.lru.front() {
            if is_current(&self.stamps, slot, stamp) {
                return Some(slot);
            }
            self.lru.pop_front();
        }
        None
    }

    /// Lists the flow in `slot`, just touched and updated, in the budget queues it belongs to
    /// now (holding bytes, with holes). Call after every segment of the flow: a touch makes its
    /// earlier entries stale.
    pub fn note_held(&mut self, slot: Slot) {
        let Some(f) = self.get(slot) else {
            return;
        };
        let (stamp, holds, holes) = (f.touch, f.held() > 0, f.holed());
        let bound = 2 * self.index.len() + 64;
        if holds {
            self.holding.push_back((slot, stamp));
            if self.holding.len() > bound {
                let slots = &self.slots;
                self.holding
                    .retain(|&(s, st)| current_where(slots, s, st, |f| f.held() > 0));
            }
        }
        if holes {
            self.holed.push_back((slot, stamp));
            if self.holed.len() > bound {
                let slots = &self.slots;
                self.holed
                    .retain(|&(s, st)| current_where(slots, s, st, Flow::holed));
            }
        }
    }

    /// Least recently active flow holding bytes; stale entries are dropped on the way.
    pub fn oldest_holding(&mut self) -> Option<Slot> {
        self.front_where(Queue::Holding)
    }

    /// Least recently active flow with holes; stale entries are dropped on the way.
    pub fn oldest_with_holes(&mut self) -> Option<Slot> {
        self.front_where(Queue::Holed)
    }

    fn front_where(&mut self, which: Queue) -> Option<Slot> {
        let pred: fn(&Flow) -> bool = match which {
            Queue::Holding => |f| f.held() > 0,
            Queue::Holed => Flow::holed,
        };
        let queue = match which {
            Queue::Holding => &mut self.holding,
            Queue::Holed => &mut self.holed,
        };
        while let Some(&(slot, stamp)) = queue.front() {
            #[cfg(test)]
            {
                self.budget_steps += 1;
            }
            if current_where(&self.slots, slot, stamp, pred) {
                return Some(slot);
            }
            queue.pop_front();
        }
        None
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

#[derive(Clone, Copy)]
enum Queue {
    Holding,
    Holed,
}

/// The entry is the flow's latest and the flow is (still) in the queue's class.
fn current_where(
    slots: &[Option<(FlowKey, Flow)>],
    slot: Slot,
    stamp: u64,
    pred: fn(&Flow) -> bool,
) -> bool {
    slots
        .get(slot as usize)
        .and_then(Option::as_ref)
        .is_some_and(|(_, f)| f.touch == stamp && pred(f))
}

/// The key of the flow in `slot`, if the slot holds one.
fn key_at(slots: &[Option<(FlowKey, Flow)>], slot: Slot) -> Option<&FlowKey> {
    slots.get(slot as usize)?.as_ref().map(|(k, _)| k)
}

/// The index's hash of the flow in `slot` (when the index grows). Every slot in the index
/// holds a flow: one leaves the index before its slot is emptied.
fn rehash(
    slots: &[Option<(FlowKey, Flow)>],
    hasher: &foldhash::fast::RandomState,
    slot: Slot,
) -> u64 {
    key_at(slots, slot).map_or(0, |k| hasher.hash_one(k))
}

/// The entry is the latest touch of a flow still in the table (stamps start at 1; a free
/// slot's is 0).
fn is_current(stamps: &[u64], slot: Slot, stamp: u64) -> bool {
    stamps.get(slot as usize) == Some(&stamp)
}
