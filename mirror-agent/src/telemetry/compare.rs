//! Primary-vs-mirror comparison of status and latency, per mirrored request.
//!
//! Owns the pairing of the two sides of one request: the primary's response (from the
//! pipeline's egress pairing, [`crate::pipeline::CapturedResponse`], keyed by
//! `(flow_id, seq_in_flow)`) and each mirror's outcome (from the replay dispatcher, with the same
//! key carried on the job). Either side may come first; a request waits in a bounded table
//! until both are known or it expires (counted, never silent). Pure state machine: callers pass
//! time in, it emits [`Verdict`]s and keeps counters.
//!
//! Not here yet: body and header comparison (`--compare-ignore`) and the `--diff-log` JSON
//! lines; they need the response bodies, which neither side keeps today.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::request::MirrorRequestRecorder;
use crate::replay::stats::Outcome;

/// Identifies one captured request in a run: `(flow_id, seq_in_flow)`.
pub type RequestKey = (u64, u64);

/// The primary's side of a request as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySide {
    pub status: u16,
    /// Last request byte to first response byte.
    pub latency: Duration,
}

/// One mirror's side: a final status and latency, or no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorSide {
    Answered {
        status: u16,
        latency: Duration,
    },
    /// Error or timeout: compared as a status-class mismatch of kind `no_response`.
    NoResponse,
}

/// What one comparison found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub key: RequestKey,
    pub mirror: usize,
    pub primary: PrimarySide,
    pub mirror_side: MirrorSide,
    /// `None` when status classes agree.
    pub mismatch: Option<MismatchKind>,
    /// Mirror latency minus primary latency, in seconds (when the mirror answered).
    pub latency_difference: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// Different status class (2xx vs 5xx ...).
    StatusClass,
    /// Same class, different code (200 vs 204).
    StatusCode,
    /// The mirror gave no response (error, timeout).
    NoResponse,
}

impl MismatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::StatusClass => "status_class",
            MismatchKind::StatusCode => "status_code",
            MismatchKind::NoResponse => "no_response",
        }
    }
}

/// Counters of one mirror's comparisons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorCompare {
    pub name: String,
    /// Requests with both sides known and compared.
    pub compared: u64,
    pub status_class: u64,
    pub status_code: u64,
    pub no_response: u64,
    /// Mirror outcomes whose primary response never came (expired or evicted).
    pub primary_missing: u64,
}

/// All mirrors' comparison counters plus the table's own losses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompareSnapshot {
    pub mirrors: Vec<MirrorCompare>,
    /// Primary responses no mirror outcome came for (request not sampled or dropped): not a
    /// loss, the mirror simply did not get a copy.
    pub primary_unmatched: u64,
    /// Entries pushed out because the table was full.
    pub evicted: u64,
    /// Filled by [`super::primary::PrimaryObserver::fill`]: requests forgotten unanswered
    /// (bound reached) and responses whose request was not known.
    pub primary_requests_evicted: u64,
    pub primary_responses_unknown: u64,
}

impl CompareSnapshot {
    /// The comparison columns of the exit table: one row per mirror, then the losses.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = format!(
            "{:<16} {:>9} {:>12} {:>11} {:>11} {:>15}\n",
            "mirror", "compared", "status_class", "status_code", "no_response", "primary_missing"
        );
        for m in &self.mirrors {
            let _ = writeln!(
                t,
                "{:<16} {:>9} {:>12} {:>11} {:>11} {:>15}",
                m.name, m.compared, m.status_class, m.status_code, m.no_response, m.primary_missing
            );
        }
        let _ = writeln!(
            t,
            "comparison: primary only {}, table evictions {}, requests forgotten unanswered {}, \
             responses to unknown requests {}",
            self.primary_unmatched,
            self.evicted,
            self.primary_requests_evicted,
            self.primary_responses_unknown
        );
        t
    }
}

#[derive(Debug, Default)]
struct Entry {
    primary: Option<PrimarySide>,
    /// Mirror outcomes waiting for the primary.
    waiting: Vec<(usize, MirrorSide)>,
    /// Mirrors already compared (the primary stays for late mirrors).
    compared: usize,
}

/// The pairing table. `ttl` bounds how long one side waits; `max_entries` bounds memory.
#[derive(Debug)]
pub struct Comparator {
    entries: HashMap<RequestKey, Entry>,
    order: VecDeque<(u64, RequestKey)>,
    ttl_ns: u64,
    max_entries: usize,
    stats: CompareSnapshot,
}

impl Comparator {
    pub fn new(mirror_names: &[String], ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl_ns: ttl.as_nanos() as u64,
            max_entries: max_entries.max(1),
            stats: CompareSnapshot {
                mirrors: mirror_names
                    .iter()
                    .map(|n| MirrorCompare {
                        name: n.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn entry(&mut self, key: RequestKey, now_ns: u64) -> &mut Entry {
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.max_entries {
                match self.order.pop_front() {
                    Some((_, old)) => {
                        if let Some(e) = self.entries.remove(&old) {
                            self.stats.evicted += 1;
                            self.account_expired(e);
                        }
                    }
                    None => break,
                }
            }
            self.order.push_back((now_ns, key));
        }
        self.entries.entry(key).or_default()
    }

    fn account_expired(&mut self, e: Entry) {
        for (m, _) in e.waiting {
            if let Some(s) = self.stats.mirrors.get_mut(m) {
                s.primary_missing += 1;
            }
        }
        if e.primary.is_some() && e.compared == 0 {
            self.stats.primary_unmatched += 1;
        }
    }

    fn judge(&mut self, key: RequestKey, mirror: usize, p: PrimarySide, m: MirrorSide) -> Verdict {
        let (mismatch, diff) = match m {
            MirrorSide::NoResponse => (Some(MismatchKind::NoResponse), None),
            MirrorSide::Answered { status, latency } => {
                let d = latency.as_secs_f64() - p.latency.as_secs_f64();
                let k = if status / 100 != p.status / 100 {
                    Some(MismatchKind::StatusClass)
                } else if status != p.status {
                    Some(MismatchKind::StatusCode)
                } else {
                    None
                };
                (k, Some(d))
            }
        };
        if let Some(s) = self.stats.mirrors.get_mut(mirror) {
            s.compared += 1;
            match mismatch {
                Some(MismatchKind::StatusClass) => s.status_class += 1,
                Some(MismatchKind::StatusCode) => s.status_code += 1,
                Some(MismatchKind::NoResponse) => s.no_response += 1,
                None => {}
            }
        }
        Verdict {
            key,
            mirror,
            primary: p,
            mirror_side: m,
            mismatch,
            latency_difference: diff,
        }
    }

    /// The primary's response to `key`: compares with mirror outcomes already in.
    pub fn on_primary(&mut self, key: RequestKey, p: PrimarySide, now_ns: u64) -> Vec<Verdict> {
        let e = self.entry(key, now_ns);
        e.primary = Some(p);
        let waiting = std::mem::take(&mut e.waiting);
        e.compared += waiting.len();
        waiting
            .into_iter()
            .map(|(m, side)| self.judge(key, m, p, side))
            .collect()
    }

    /// A mirror's outcome for `key`: compares now if the primary is in, else waits.
    pub fn on_mirror(
        &mut self,
        key: RequestKey,
        mirror: usize,
        side: MirrorSide,
        now_ns: u64,
    ) -> Option<Verdict> {
        let e = self.entry(key, now_ns);
        match e.primary {
            Some(p) => {
                e.compared += 1;
                Some(self.judge(key, mirror, p, side))
            }
            None => {
                e.waiting.push((mirror, side));
                None
            }
        }
    }

    /// Drops entries older than the ttl, counting what never got its other side.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(t, key)) = self.order.front() {
            if now_ns.saturating_sub(t) < self.ttl_ns {
                break;
            }
            self.order.pop_front();
            if let Some(e) = self.entries.remove(&key) {
                self.account_expired(e);
            }
        }
    }

    /// Entries waiting now.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    pub fn snapshot(&self) -> CompareSnapshot {
        self.stats.clone()
    }
}

/// A [`Comparator`] shared by the pipeline driver (primary side) and the replay dispatchers
/// (mirror side), with its own monotonic clock for expiry (capture timestamps and replay
/// timestamps are different clocks), recording each verdict's latency difference.
#[derive(Clone)]
pub struct CompareHub {
    inner: Arc<Mutex<Comparator>>,
    epoch: Instant,
    names: Arc<Vec<String>>,
    recorder: Option<MirrorRequestRecorder>,
}

impl std::fmt::Debug for CompareHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompareHub")
            .field("mirrors", &self.names)
            .finish()
    }
}

impl CompareHub {
    /// `mirror_names` in the replayer's mirror order (the index the dispatchers pass).
    pub fn new(
        mirror_names: Vec<String>,
        ttl: Duration,
        max_entries: usize,
        recorder: Option<MirrorRequestRecorder>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Comparator::new(&mirror_names, ttl, max_entries))),
            epoch: Instant::now(),
            names: Arc::new(mirror_names),
            recorder,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut Comparator) -> T) -> T {
        match self.inner.lock() {
            Ok(mut c) => f(&mut c),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn emit(&self, v: &Verdict) {
        let name = self.names.get(v.mirror).map_or("", String::as_str);
        if let Some(kind) = v.mismatch {
            tracing::debug!(
                mirror = name,
                flow = v.key.0,
                seq = v.key.1,
                kind = kind.as_str(),
                primary = v.primary.status,
                mirror_side = ?v.mirror_side,
                "primary/mirror mismatch"
            );
        }
        if let Some(r) = &self.recorder {
            r.record_comparison(name, v);
        }
    }

    /// The primary's final response to `key`.
    pub fn primary(&self, key: RequestKey, side: PrimarySide) {
        let now = self.now();
        let verdicts = self.with(|c| c.on_primary(key, side, now));
        for v in &verdicts {
            self.emit(v);
        }
    }

    /// Mirror `mirror`'s outcome for `key`. Copies never sent (drops) are not compared.
    pub fn mirror(&self, key: RequestKey, mirror: usize, outcome: &Outcome) {
        let side = match *outcome {
            Outcome::Answered { status, latency } => MirrorSide::Answered { status, latency },
            Outcome::Error(_) | Outcome::Timeout => MirrorSide::NoResponse,
            Outcome::Dropped(_) => return,
        };
        let now = self.now();
        if let Some(v) = self.with(|c| c.on_mirror(key, mirror, side, now)) {
            self.emit(&v);
        }
    }

    /// Expires entries past the ttl; call about once a second with the metrics update.
    pub fn expire(&self) {
        let now = self.now();
        self.with(|c| c.expire(now));
    }

    pub fn snapshot(&self) -> CompareSnapshot {
        self.with(|c| c.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn p(status: u16, lat: u64) -> PrimarySide {
        PrimarySide {
            status,
            latency: ms(lat),
        }
    }
    fn m(status: u16, lat: u64) -> MirrorSide {
        MirrorSide::Answered {
            status,
            latency: ms(lat),
        }
    }

    #[test]
    fn either_side_first_gives_one_verdict() {
        let names = ["a".to_string(), "b".to_string()];
        let mut c = Comparator::new(&names, Duration::from_secs(10), 100);
        // Mirror first, then primary.
        assert!(c.on_mirror((1, 0), 0, m(500, 30), 1).is_none());
        let v = c.on_primary((1, 0), p(200, 10), 2);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].mismatch, Some(MismatchKind::StatusClass));
        assert!((v[0].latency_difference.unwrap() - 0.020).abs() < 1e-9);
        // Primary first, then a late second mirror on the same request.
        let v = c.on_mirror((1, 0), 1, m(200, 5), 3).unwrap();
        assert_eq!(v.mismatch, None);
        // A different code in the same class, and no response.
        c.on_primary((1, 1), p(200, 10), 4);
        assert_eq!(
            c.on_mirror((1, 1), 0, m(204, 10), 5).unwrap().mismatch,
            Some(MismatchKind::StatusCode)
        );
        assert_eq!(
            c.on_mirror((1, 1), 1, MirrorSide::NoResponse, 6)
                .unwrap()
                .mismatch,
            Some(MismatchKind::NoResponse)
        );
        let s = c.snapshot();
        assert_eq!((s.mirrors[0].compared, s.mirrors[1].compared), (2, 2));
        assert_eq!(s.mirrors[0].status_class, 1);
        assert_eq!(s.mirrors[0].status_code, 1);
        assert_eq!(s.mirrors[1].no_response, 1);
    }

    #[test]
    fn expiry_and_eviction_are_counted() {
        let names = ["a".to_string()];
        let mut c = Comparator::new(&names, ms(100), 2);
        c.on_mirror((1, 0), 0, m(200, 1), 0);
        c.on_primary((2, 0), p(200, 1), 0);
        // Full: the oldest (a waiting mirror outcome) is evicted.
        c.on_primary((3, 0), p(200, 1), 0);
        assert_eq!(c.pending(), 2);
        c.expire(200_000_000);
        assert_eq!(c.pending(), 0);
        let s = c.snapshot();
        assert_eq!(s.evicted, 1);
        assert_eq!(s.mirrors[0].primary_missing, 1);
        assert_eq!(s.primary_unmatched, 2);
        assert_eq!(s.mirrors[0].compared, 0);
    }

    #[test]
    fn hub_converts_outcomes_and_skips_drops() {
        use crate::replay::stats::{DropReason, ErrorKind};
        let hub = CompareHub::new(vec!["a".into()], Duration::from_secs(5), 16, None);
        hub.primary((1, 0), p(200, 5));
        hub.primary((1, 1), p(200, 5));
        hub.primary((1, 2), p(404, 5));
        hub.mirror(
            (1, 0),
            0,
            &Outcome::Answered {
                status: 503,
                latency: ms(1),
            },
        );
        hub.mirror((1, 1), 0, &Outcome::Error(ErrorKind::Connect));
        hub.mirror((1, 2), 0, &Outcome::Dropped(DropReason::QueueFull));
        let s = hub.snapshot();
        let table = s.table();
        assert!(table.starts_with("mirror "), "{table}");
        assert!(table.lines().nth(1).unwrap().starts_with("a "), "{table}");
        assert_eq!(s.mirrors[0].compared, 2);
        assert_eq!(s.mirrors[0].status_class, 1);
        assert_eq!(s.mirrors[0].no_response, 1);
        hub.expire();
        assert_eq!(hub.snapshot().primary_unmatched, 0, "ttl not reached");
    }
}
