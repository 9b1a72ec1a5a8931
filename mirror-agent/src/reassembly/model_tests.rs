//! Model tests: [`Stream`] against an obviously-correct naive reassembler (a byte map keyed by
//! stream offset, first copy wins, every rule applied byte by byte), on random segmentations,
//! orders, duplicates, conflicting overlaps, losses and sequence wraparound (in the manner of
//! smoltcp's assembler `test_random`), and the same comparison under proptest.
//!
//! The model implements the same policy (see `StreamStats`) without sequence numbers, slices or
//! ranges: it is given absolute offsets, so it also checks the wrapping arithmetic. It does not
//! model `max_segments` (a property of the slicing); runs with that bound check the invariants
//! instead.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::tests::assert_accounting;
use super::{Stream, StreamConfig, StreamEvent, StreamStats};
use crate::capture::TcpFlags;

/// Byte `k` of the true stream.
fn pattern(k: u64) -> u8 {
    (k.wrapping_mul(131).wrapping_add(k >> 7) % 251) as u8
}

/// One step of a test case.
#[derive(Debug, Clone)]
enum Op {
    Push(Seg),
    Poll(u64),
}

/// A segment by its true stream offset (offset 0 is the byte after the SYN).
#[derive(Debug, Clone)]
struct Seg {
    off: u64,
    len: usize,
    syn: bool,
    fin: bool,
    rst: bool,
    /// Content differs from the true stream (a conflicting retransmission).
    corrupt: bool,
    ts: u64,
}

impl Seg {
    fn data(&self) -> Vec<u8> {
        (self.off..self.off + self.len as u64)
            .map(|k| pattern(k) ^ if self.corrupt { 0x5A } else { 0 })
            .collect()
    }

    fn seq(&self, isn: u32) -> u32 {
        if self.syn {
            isn
        } else {
            isn.wrapping_add(1).wrapping_add(self.off as u32)
        }
    }

    fn flags(&self) -> TcpFlags {
        let mut f = TcpFlags::ACK;
        if self.syn {
            f |= TcpFlags::SYN;
        }
        if self.fin {
            f |= TcpFlags::FIN;
        }
        if self.rst {
            f = TcpFlags::RST;
        }
        TcpFlags(f)
    }
}

#[derive(Debug, Clone)]
struct Case {
    isn: u32,
    cfg: StreamConfig,
    ops: Vec<Op>,
}

/// Events with consecutive data merged byte by byte, each byte with its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Bytes(Vec<(u8, u64)>),
    Gap(u64, u64),
    End(bool),
}

fn push_byte(evs: &mut Vec<Ev>, b: u8, ts: u64) {
    match evs.last_mut() {
        Some(Ev::Bytes(v)) => v.push((b, ts)),
        _ => evs.push(Ev::Bytes(vec![(b, ts)])),
    }
}

fn normalize(events: &[StreamEvent]) -> Vec<Ev> {
    let mut evs = Vec::new();
    for e in events {
        match e {
            StreamEvent::Data { bytes, ts_ns } => {
                assert!(!bytes.is_empty(), "empty data event");
                bytes.iter().for_each(|&b| push_byte(&mut evs, b, *ts_ns));
            }
            StreamEvent::Gap { len, ts_ns } => {
                assert!(*len > 0, "empty gap");
                evs.push(Ev::Gap(*len, *ts_ns));
            }
            StreamEvent::End { reset } => evs.push(Ev::End(*reset)),
        }
    }
    evs
}

#[derive(Clone, Copy)]
enum Cause {
    Timeout,
    Bound,
    End,
}

/// The naive reassembler.
struct Model {
    cfg: StreamConfig,
    started: bool,
    start: i64,
    next: i64,
    ended: bool,
    fin_at: Option<i64>,
    fin_ts: u64,
    buf: BTreeMap<i64, (u8, u64)>,
    last_ts: u64,
    stats: StreamStats,
    events: Vec<Ev>,
}

impl Model {
    fn new(cfg: StreamConfig) -> Self {
        Self {
            cfg,
            started: false,
            start: 0,
            next: 0,
            ended: false,
            fin_at: None,
            fin_ts: 0,
            buf: BTreeMap::new(),
            last_ts: 0,
            stats: StreamStats::default(),
            events: Vec::new(),
        }
    }

    fn push(&mut self, seg: &Seg) {
        let data = seg.data();
        let len = data.len() as u64;
        self.stats.segments += 1;
        self.stats.bytes_offered += len;
        self.last_ts = self.last_ts.max(seg.ts);
        if self.ended {
            self.stats.after_end_bytes += len;
            return;
        }
        if !self.started {
            if len == 0 && !(seg.syn || seg.fin || seg.rst) {
                return;
            }
            self.started = true;
            self.start = seg.off as i64;
        }
        if seg.rst {
            self.stats.after_end_bytes += len;
            while !self.buf.is_empty() && self.declare(seg.ts, Cause::End) {}
            if !self.ended {
                self.ended = true;
                self.events.push(Ev::End(true));
            }
            return;
        }
        let s = seg.off as i64 - self.start;
        if seg.fin {
            let at = s + len as i64;
            if self.fin_at.is_none() && at >= self.next {
                self.fin_at = Some(at);
                self.fin_ts = seg.ts;
                let beyond = self.buf.split_off(&at);
                self.stats.after_end_bytes += beyond.len() as u64;
            }
        }
        for (i, &b) in data.iter().enumerate() {
            let o = s + i as i64;
            if o < 0 {
                self.stats.before_start_bytes += 1;
            } else if self.fin_at.is_some_and(|f| o >= f) {
                self.stats.after_end_bytes += 1;
            } else if o < self.next {
                self.stats.retransmitted_bytes += 1;
            } else if let Some(&(held, _)) = self.buf.get(&o) {
                self.stats.retransmitted_bytes += 1;
                if held != b {
                    self.stats.overlap_conflict_bytes += 1;
                }
            } else {
                self.buf.insert(o, (b, seg.ts));
            }
        }
        self.release();
        while self.buf.len() > self.cfg.max_buffered_bytes && self.declare(seg.ts, Cause::Bound) {}
        self.expire(seg.ts);
    }

    fn release(&mut self) {
        while let Some((b, ts)) = self.buf.remove(&self.next) {
            push_byte(&mut self.events, b, ts);
            self.stats.bytes_delivered += 1;
            self.next += 1;
        }
        if !self.ended && self.fin_at == Some(self.next) {
            self.ended = true;
            self.events.push(Ev::End(false));
        }
    }

    fn declare(&mut self, ts: u64, cause: Cause) -> bool {
        if self.ended {
            return false;
        }
        let to = match (self.buf.keys().next(), self.fin_at) {
            (Some(&k), _) => k,
            (None, Some(f)) if f > self.next => f,
            _ => return false,
        };
        let len = (to - self.next) as u64;
        self.stats.gaps += 1;
        self.stats.gap_bytes += len;
        match cause {
            Cause::Timeout => self.stats.gaps_timeout += 1,
            Cause::Bound => self.stats.gaps_bound += 1,
            Cause::End => self.stats.gaps_end += 1,
        }
        self.events.push(Ev::Gap(len, ts));
        self.next = to;
        self.release();
        true
    }

    fn expire(&mut self, now: u64) {
        while self.started && !self.ended {
            let fin_waiting = self.fin_at.is_some_and(|f| f > self.next);
            let oldest_byte = self.buf.values().map(|&(_, ts)| ts).min();
            let since = match (oldest_byte, fin_waiting) {
                (Some(t), true) => t.min(self.fin_ts),
                (Some(t), false) => t,
                (None, true) => self.fin_ts,
                (None, false) => return,
            };
            if now.saturating_sub(since) < self.cfg.gap_timeout_ns
                || !self.declare(now, Cause::Timeout)
            {
                return;
            }
        }
    }

    fn poll(&mut self, now: u64) {
        self.last_ts = self.last_ts.max(now);
        self.expire(now);
    }

    fn flush(&mut self) {
        while self.started && self.declare(self.last_ts, Cause::End) {}
    }
}

fn run_stream(
    case: &Case,
    cfg: StreamConfig,
    mut check: impl FnMut(&Stream),
) -> (Stream, Vec<StreamEvent>) {
    let mut s = Stream::new(cfg);
    let mut out = Vec::new();
    for op in &case.ops {
        match op {
            Op::Push(seg) => {
                let payload = Bytes::from(seg.data());
                s.push(seg.seq(case.isn), seg.flags(), payload, seg.ts, &mut out);
            }
            Op::Poll(now) => s.poll(*now, &mut out),
        }
        check(&s);
    }
    s.flush(&mut out);
    check(&s);
    (s, out)
}

/// Runs one case through both and compares events and counters; then runs it again with a
/// small `max_segments` and checks the invariants only.
fn check_case(case: &Case) {
    let mut model = Model::new(case.cfg.clone());
    for op in &case.ops {
        match op {
            Op::Push(seg) => model.push(seg),
            Op::Poll(now) => model.poll(*now),
        }
    }
    model.flush();
    let cfg = StreamConfig {
        max_segments: usize::MAX,
        ..case.cfg.clone()
    };
    let (s, out) = run_stream(case, cfg, |s| {
        assert_accounting(s);
        assert!(s.buffered_bytes() <= case.cfg.max_buffered_bytes);
    });
    assert_eq!(
        normalize(&out),
        model.events,
        "events differ from the model"
    );
    assert_eq!(*s.stats(), model.stats, "counters differ from the model");
    assert_eq!(s.buffered_bytes(), model.buf.len());

    // Bounded pieces: whatever is delivered is real bytes at their real offsets.
    let copies = offered_copies(case);
    let max_segments = 1 + (case.isn as usize % 8);
    let cfg = StreamConfig {
        max_segments,
        ..case.cfg.clone()
    };
    let (s, out) = run_stream(case, cfg, |s| {
        assert_accounting(s);
        assert!(s.buffered_segments() <= max_segments);
        assert!(s.buffered_bytes() <= case.cfg.max_buffered_bytes);
    });
    let start = stream_start(case);
    let mut off = 0u64;
    for e in &out {
        match e {
            StreamEvent::Data { bytes, .. } => {
                for &b in bytes.iter() {
                    let k = (start + off as i64) as u64;
                    assert!(
                        copies.get(&k).is_some_and(|c| c.contains(&b)),
                        "invented byte at {k}"
                    );
                    off += 1;
                }
            }
            StreamEvent::Gap { len, .. } => off += len,
            StreamEvent::End { .. } => {}
        }
    }
    assert_eq!(off, s.stream_offset());
    assert!(s.stats().bytes_delivered <= s.stats().bytes_offered);
}

/// Every byte value offered at each true offset.
fn offered_copies(case: &Case) -> BTreeMap<u64, BTreeSet<u8>> {
    let mut m: BTreeMap<u64, BTreeSet<u8>> = BTreeMap::new();
    for op in &case.ops {
        if let Op::Push(seg) = op {
            for (i, b) in seg.data().into_iter().enumerate() {
                m.entry(seg.off + i as u64).or_default().insert(b);
            }
        }
    }
    m
}

/// True offset of stream offset 0: where the first segment that starts the stream begins.
fn stream_start(case: &Case) -> i64 {
    case.ops
        .iter()
        .find_map(|op| match op {
            Op::Push(s) if s.len > 0 || s.syn || s.fin || s.rst => Some(s.off as i64),
            _ => None,
        })
        .unwrap_or(0)
}

/// A realistic case: a stream cut into segments, some lost, duplicated, re-sent with other
/// bytes, overlapped and reordered, often across the sequence wrap.
fn random_case(rng: &mut StdRng) -> Case {
    let total: u64 = rng.random_range(0..2000);
    let isn = if rng.random_bool(0.5) {
        0u32.wrapping_sub(rng.random_range(0..=total as u32 + 2))
    } else {
        rng.random()
    };
    let seg = |off, len| Seg {
        off,
        len,
        syn: false,
        fin: false,
        rst: false,
        corrupt: false,
        ts: 0,
    };
    let mut segs = Vec::new();
    let mut pos = 0;
    let tiny = rng.random_bool(0.2);
    while pos < total {
        let max = if tiny { 4 } else { 300 };
        let len = rng.random_range(1..=max.min(total - pos));
        segs.push(seg(pos, len as usize));
        pos += len;
    }
    if rng.random_bool(0.8) {
        if !segs.is_empty() && rng.random_bool(0.3) {
            segs[0].syn = true; // TCP Fast Open
        } else {
            let mut s = seg(0, 0);
            s.syn = true;
            segs.insert(0, s);
        }
    }
    if rng.random_bool(0.6) {
        match segs.last_mut() {
            Some(last) if rng.random_bool(0.7) => last.fin = true,
            _ => {
                let mut s = seg(total, 0);
                s.fin = true;
                segs.push(s);
            }
        }
    }
    let n = segs.len();
    for _ in 0..rng.random_range(0..=n / 2) {
        let mut dup = segs[rng.random_range(0..n)].clone();
        dup.corrupt = rng.random_bool(0.3);
        segs.push(dup);
    }
    if total > 0 {
        for _ in 0..rng.random_range(0..=n / 2) {
            let a = rng.random_range(0..total);
            let b = rng.random_range(a + 1..=total.min(a + 200));
            let mut s = seg(a, (b - a) as usize);
            s.corrupt = rng.random_bool(0.3);
            segs.push(s);
        }
    }
    let loss = [0.0, 0.02, 0.1][rng.random_range(0..3)];
    segs.retain(|_| !rng.random_bool(loss));
    if rng.random_bool(0.3) {
        segs.shuffle(rng);
    } else {
        for _ in 0..segs.len() {
            let i = rng.random_range(0..segs.len());
            let j = (i + rng.random_range(0..4)).min(segs.len() - 1);
            segs.swap(i, j);
        }
    }
    if rng.random_bool(0.1) {
        let mut s = seg(rng.random_range(0..=total), rng.random_range(0..3));
        s.rst = true;
        let at = rng.random_range(0..=segs.len());
        segs.insert(at, s);
    }
    let mut ts = 0;
    let mut ops = Vec::new();
    for mut s in segs {
        ts += rng.random_range(0..20);
        s.ts = ts;
        ops.push(Op::Push(s));
        if rng.random_bool(0.1) {
            ts += rng.random_range(0..50);
            ops.push(Op::Poll(ts));
        }
    }
    let cfg = StreamConfig {
        max_buffered_bytes: if rng.random_bool(0.5) {
            usize::MAX
        } else {
            rng.random_range(0..800)
        },
        max_segments: usize::MAX,
        gap_timeout_ns: if rng.random_bool(0.5) {
            u64::MAX
        } else {
            rng.random_range(1..200)
        },
    };
    Case { isn, cfg, ops }
}

#[test]
fn random_segmentations_match_the_model() {
    let mut rng = StdRng::seed_from_u64(0x5EED_2026);
    for i in 0..2000 {
        let case = random_case(&mut rng);
        let res = std::panic::catch_unwind(|| check_case(&case));
        if res.is_err() {
            panic!("case {i} failed: {case:#?}");
        }
    }
}

fn seg_strategy() -> impl Strategy<Value = Op> {
    (0u64..600, 0usize..80, 0u8..24, any::<bool>(), 0u64..30).prop_map(
        |(off, len, kind, corrupt, ts)| {
            if kind == 0 {
                return Op::Poll(ts);
            }
            Op::Push(Seg {
                off: if kind == 1 { 0 } else { off },
                len,
                syn: kind == 1,
                fin: kind == 2 || kind == 3,
                rst: kind == 4,
                corrupt,
                ts,
            })
        },
    )
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![any::<u32>(), (0u32..700).prop_map(|d| 0u32.wrapping_sub(d))],
        prop_oneof![Just(usize::MAX), 0usize..400],
        prop_oneof![Just(u64::MAX), 1u64..100],
        prop::collection::vec(seg_strategy(), 0..40),
    )
        .prop_map(|(isn, max_bytes, timeout, mut ops)| {
            // Time only moves forward: ts fields are increments.
            let mut now = 0;
            for op in &mut ops {
                match op {
                    Op::Push(s) => {
                        now += s.ts;
                        s.ts = now;
                    }
                    Op::Poll(t) => {
                        now += *t;
                        *t = now;
                    }
                }
            }
            Case {
                isn,
                cfg: StreamConfig {
                    max_buffered_bytes: max_bytes,
                    max_segments: usize::MAX,
                    gap_timeout_ns: timeout,
                },
                ops,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn proptest_matches_the_model(case in case_strategy()) {
        check_case(&case);
    }
}
