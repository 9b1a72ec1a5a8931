//! The comparison thread: takes verdicts from [`super::CompareHub`] over a bounded queue,
//! compares headers and bodies when the statuses are equal, counts the results, and writes the
//! `--diff-log` lines.
//!
//! A plain OS thread, not a tokio task: JSON parsing of up to two 64 KiB bodies and blocking
//! file writes must not run on the runtime's two workers that also drive the mirrors, nor on the
//! capture driver. The queue is bounded; a full queue is counted (`content_queue_full`, and
//! `content_skipped` for the request), never waited on.
//!
//! With a baseline mirror ([`BaselineRole`]), the thread also learns noise
//! ([`super::noise`]): each baseline verdict teaches what differs between the primary and the
//! baseline on that request, and a candidate's verdict on the same request waits (bounded in
//! count and time, counted when it gives up) for it, so even the first requests of an endpoint
//! are judged with what their own baseline answer shows, as Diffy compares all three answers
//! together. Per-endpoint counters are kept in that mode only.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::content::{self, ContentVerdict};
use super::difflog::DiffLog;
use super::noise::{self, NoiseTable, Observed};
use super::rules::{CompareRules, NoNoise, Noise};
use super::{Comparator, MirrorSide, NoiseSnapshot, RequestKey, Verdict};
use crate::sync::lock;

/// Verdicts waiting for the comparison thread at most.
pub(super) const QUEUE: usize = 4096;
/// Candidate verdicts waiting for their request's baseline answer at most; over it the
/// oldest is judged at once (counted as a wait that expired).
const MAX_WAITING: usize = 4096;
/// Capture bytes those waiting verdicts may hold (both sides counted, shared or not).
const MAX_WAITING_BYTES: usize = 32 << 20;
/// Requests whose baseline answer is remembered for candidates still to come, at most.
const MAX_SETTLED: usize = 65536;
/// How often the learned noise is published to the snapshot.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

enum Msg {
    Verdict(Verdict),
    /// The baseline mirror will not answer this request (not sampled, or dropped unsent).
    BaselineAbsent(RequestKey),
    Flush(mpsc::Sender<()>),
    /// Tests: the thread says it is held, then waits for the release (or its sender's drop).
    #[cfg(test)]
    Hold {
        held: mpsc::Sender<()>,
        release: Receiver<()>,
    },
}

/// The baseline mirror (`role=baseline`): which one, and how long a candidate's verdict waits
/// for the baseline's answer to the same request.
#[derive(Debug, Clone, Copy)]
pub(super) struct BaselineRole {
    pub mirror: usize,
    pub wait: Duration,
}

/// The hub's handle on the comparison thread.
pub(super) struct Content {
    tx: SyncSender<Msg>,
    pub(super) rules: Arc<CompareRules>,
    has_log: bool,
    baseline: Option<usize>,
    inner: Arc<Mutex<Comparator>>,
}

/// The statuses are equal: headers and bodies are compared.
fn same_status(v: &Verdict) -> bool {
    v.mismatch.is_none() && matches!(v.mirror_side, MirrorSide::Answered { .. })
}

/// Both sides' captures, when the statuses are equal (else nothing to compare).
fn captures(
    v: &Verdict,
) -> Option<(
    &crate::http::response::ResponseSample,
    &crate::http::response::ResponseSample,
)> {
    let p = v.info.as_ref()?.capture.as_ref()?;
    let m = v.mirror_capture.as_deref()?;
    same_status(v).then_some((p, m))
}

impl Content {
    pub(super) fn start(
        rules: CompareRules,
        log: Option<DiffLog>,
        inner: Arc<Mutex<Comparator>>,
        names: Arc<Vec<String>>,
        baseline: Option<BaselineRole>,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let rules = Arc::new(rules);
        let has_log = log.is_some();
        let (r, i) = (rules.clone(), inner.clone());
        let spawned = std::thread::Builder::new()
            .name("mirror-compare".into())
            .spawn(move || {
                let mut w = Worker {
                    judge: Judge {
                        rules: &r,
                        log,
                        inner: &i,
                        names: &names,
                        endpoints_seen: HashSet::new(),
                    },
                    baseline: baseline.map(|role| Baseline::new(role, &names)),
                };
                w.run(rx);
            });
        if let Err(e) = spawned {
            // Verdicts then count as queue-full (the receiver is gone): visible, not fatal.
            tracing::warn!(error = %e, "cannot start the comparison thread");
        }
        Self {
            tx,
            rules,
            has_log,
            baseline: baseline.map(|b| b.mirror),
            inner,
        }
    }

    /// Queues a verdict if there is work for it: a content comparison, a diff-log line, or,
    /// with a baseline mirror, the per-endpoint counts and the baseline's settling.
    pub(super) fn submit(&self, v: Verdict) {
        let same = same_status(&v);
        if !same && !self.has_log && self.baseline.is_none() {
            return;
        }
        let (mirror, full) = match self.tx.try_send(Msg::Verdict(v)) {
            Ok(()) => return,
            Err(
                TrySendError::Full(Msg::Verdict(v)) | TrySendError::Disconnected(Msg::Verdict(v)),
            ) => (v.mirror, true),
            Err(_) => return,
        };
        let mut c = lock(&self.inner);
        let s = c.stats_mut();
        s.content_queue_full += u64::from(full);
        if same && let Some(m) = s.mirrors.get_mut(mirror) {
            m.content_skipped += 1;
        }
    }

    /// `mirror` will not answer `key`: when it is the baseline, candidates stop waiting for it.
    pub(super) fn not_answered(&self, mirror: usize, key: RequestKey) {
        if self.baseline != Some(mirror) {
            return;
        }
        if self.tx.try_send(Msg::BaselineAbsent(key)).is_err() {
            // The candidates of that request wait out the window instead (counted there).
            lock(&self.inner).stats_mut().content_queue_full += 1;
        }
    }

    pub(super) fn flush(&self, timeout: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }

    /// Tests: holds the comparison thread until the returned sender sends or is dropped, so
    /// its queue fills.
    #[cfg(test)]
    pub(super) fn hold(&self) -> mpsc::Sender<()> {
        let (held, is_held) = mpsc::channel();
        let (release, released) = mpsc::channel();
        self.tx
            .send(Msg::Hold {
                held,
                release: released,
            })
            .expect("the comparison thread runs");
        is_held
            .recv_timeout(Duration::from_secs(10))
            .expect("the comparison thread takes the hold");
        release
    }
}

/// Judges verdicts: compares content under the rules and a noise view, counts, logs.
struct Judge<'a> {
    rules: &'a CompareRules,
    log: Option<DiffLog>,
    inner: &'a Mutex<Comparator>,
    names: &'a [String],
    /// Endpoints with per-endpoint counters (bounded by [`noise::MAX_ENDPOINTS`]).
    endpoints_seen: HashSet<String>,
}

impl Judge<'_> {
    /// `endpoint`: with a baseline, the request's endpoint for the per-endpoint counters.
    /// `expired`: a candidate that gave up waiting for the baseline.
    fn judge(&mut self, v: &Verdict, noise: &dyn Noise, endpoint: Option<&str>, expired: bool) {
        let same = same_status(v);
        let verdict: Option<ContentVerdict> =
            captures(v).map(|(p, m)| content::compare_with(self.rules, noise, p, m));
        let real = v.mismatch.is_some()
            || verdict
                .as_ref()
                .is_some_and(|c| c.header_mismatch() || c.body_mismatch());
        let noise_only = !real && verdict.as_ref().is_some_and(ContentVerdict::noise_differs);
        if real && let Some(l) = self.log.as_mut() {
            let name = self.names.get(v.mirror).map_or("", String::as_str);
            l.write(name, v, verdict.as_ref(), Instant::now());
        }
        let endpoint = endpoint.map(|e| {
            if self.endpoints_seen.contains(e) {
                e.to_string()
            } else if self.endpoints_seen.len() < noise::MAX_ENDPOINTS {
                self.endpoints_seen.insert(e.to_string());
                e.to_string()
            } else {
                noise::OTHER_ENDPOINT.to_string()
            }
        });
        let mut c = lock(self.inner);
        let s = c.stats_mut();
        if let Some(l) = &self.log {
            s.diff_log = l.stats;
        }
        if let Some(e) = endpoint {
            let counts = s.endpoints.entry((e, v.mirror)).or_default();
            counts.compared += 1;
            counts.real += u64::from(real);
            counts.noise_only += u64::from(noise_only);
        }
        let Some(m) = s.mirrors.get_mut(v.mirror) else {
            return;
        };
        m.noise_only += u64::from(noise_only);
        m.baseline_wait_expired += u64::from(expired);
        match &verdict {
            Some(cv) => {
                m.header += u64::from(cv.header_mismatch());
                m.body += u64::from(cv.body_mismatch());
                m.body_truncated += u64::from(matches!(&cv.body, Ok(b) if b.truncated));
            }
            None if same => m.content_skipped += 1,
            None => {}
        }
    }

    fn flush_log(&mut self) {
        if let Some(l) = self.log.as_mut() {
            l.flush();
            let stats = l.stats;
            lock(self.inner).stats_mut().diff_log = stats;
        }
    }
}

/// The baseline's side of the comparison thread: the noise learned, the baseline answers of
/// recent requests (for candidates still to come), and candidates waiting for theirs.
struct Baseline {
    role: BaselineRole,
    name: String,
    table: NoiseTable,
    /// What each recent request's baseline answer showed (`None`: no answer to compare).
    settled: HashMap<RequestKey, Option<Arc<Observed>>>,
    settled_order: VecDeque<RequestKey>,
    waiting: HashMap<RequestKey, Vec<Verdict>>,
    waiting_order: VecDeque<(Instant, RequestKey)>,
    waiting_len: usize,
    waiting_bytes: usize,
    dirty: bool,
    published: Instant,
}

/// Capture bytes a waiting verdict keeps alive.
fn held_bytes(v: &Verdict) -> usize {
    captures(v).map_or(0, |(p, m)| p.held_bytes() + m.held_bytes())
}

fn endpoint_of(v: &Verdict) -> String {
    v.info.as_ref().map_or_else(
        || "(unknown)".to_string(),
        |i| noise::endpoint(&i.method, &i.target),
    )
}

impl Baseline {
    fn new(role: BaselineRole, names: &[String]) -> Self {
        Self {
            role,
            name: names.get(role.mirror).cloned().unwrap_or_default(),
            table: NoiseTable::default(),
            settled: HashMap::new(),
            settled_order: VecDeque::new(),
            waiting: HashMap::new(),
            waiting_order: VecDeque::new(),
            waiting_len: 0,
            waiting_bytes: 0,
            dirty: true,
            published: Instant::now(),
        }
    }

    /// The baseline's answer to `key` is known: remembers it and hands back the candidates
    /// that waited for it.
    fn settle(&mut self, key: RequestKey, seen: Option<Arc<Observed>>) -> Vec<Verdict> {
        if self.settled.insert(key, seen).is_none() {
            self.settled_order.push_back(key);
            while self.settled_order.len() > MAX_SETTLED {
                if let Some(old) = self.settled_order.pop_front() {
                    self.settled.remove(&old);
                }
            }
        }
        let released = self.waiting.remove(&key).unwrap_or_default();
        self.forget(&released);
        released
    }

    fn wait(&mut self, v: Verdict, now: Instant) {
        let key = v.key;
        self.waiting_bytes += held_bytes(&v);
        self.waiting.entry(key).or_default().push(v);
        self.waiting_order.push_back((now, key));
        self.waiting_len += 1;
    }

    fn forget(&mut self, released: &[Verdict]) {
        self.waiting_len -= released.len();
        self.waiting_bytes -= released.iter().map(held_bytes).sum::<usize>();
    }

    /// Candidates that waited past the window (or beyond [`MAX_WAITING`]; all of them with
    /// `all`): they are judged without their request's baseline answer.
    fn expired(&mut self, now: Instant, all: bool) -> Vec<Verdict> {
        let mut out = Vec::new();
        while let Some(&(t, key)) = self.waiting_order.front() {
            let over = self.waiting_len > MAX_WAITING || self.waiting_bytes > MAX_WAITING_BYTES;
            if !all && !over && now.saturating_duration_since(t) < self.role.wait {
                break;
            }
            self.waiting_order.pop_front();
            // A key may be queued more than once (several candidates); the first pop takes all.
            if let Some(vs) = self.waiting.remove(&key) {
                self.forget(&vs);
                out.extend(vs);
            }
        }
        out
    }

    fn publish(&mut self, inner: &Mutex<Comparator>, now: Instant, force: bool) {
        if !self.dirty || (!force && now.duration_since(self.published) < PUBLISH_EVERY) {
            return;
        }
        let snap = NoiseSnapshot {
            baseline: self.name.clone(),
            endpoints: self.table.snapshot(),
            losses: self.table.losses(),
        };
        lock(inner).stats_mut().noise = Some(snap);
        self.dirty = false;
        self.published = now;
    }
}

struct Worker<'a> {
    judge: Judge<'a>,
    baseline: Option<Baseline>,
}

impl Worker<'_> {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let msg = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            match msg {
                Some(Msg::Verdict(v)) => self.on_verdict(v, now),
                Some(Msg::BaselineAbsent(key)) => self.on_baseline(key, None),
                Some(Msg::Flush(done)) => {
                    // The end of the run: nothing more will come for those still waiting.
                    self.expire(now, true);
                    if let Some(b) = self.baseline.as_mut() {
                        b.publish(self.judge.inner, now, true);
                    }
                    self.judge.flush_log();
                    let _ = done.send(());
                    continue;
                }
                #[cfg(test)]
                Some(Msg::Hold { held, release }) => {
                    let _ = held.send(());
                    let _ = release.recv();
                    continue;
                }
                None => {}
            }
            self.expire(now, false);
            if let Some(b) = self.baseline.as_mut() {
                b.publish(self.judge.inner, now, false);
            }
        }
    }

    fn on_verdict(&mut self, v: Verdict, now: Instant) {
        let Some(b) = self.baseline.as_mut() else {
            return self.judge.judge(&v, &NoNoise, None, false);
        };
        let endpoint = endpoint_of(&v);
        if v.mirror == b.role.mirror {
            // Whatever differs between the primary and the baseline is noise.
            let seen =
                captures(&v).map(|(p, m)| Arc::new(Observed::between(self.judge.rules, p, m)));
            if let Some(o) = &seen {
                b.table.learn(&endpoint, o);
                b.dirty |= !o.is_empty();
            }
            let view = b.table.view(&endpoint, seen.as_deref());
            self.judge.judge(&v, &view, Some(&endpoint), false);
            self.on_baseline(v.key, seen);
        } else if captures(&v).is_none() {
            // Nothing to compare beyond the statuses: no noise to wait for.
            self.judge.judge(&v, &NoNoise, Some(&endpoint), false);
        } else {
            match b.settled.get(&v.key) {
                Some(seen) => {
                    let view = b.table.view(&endpoint, seen.as_deref());
                    self.judge.judge(&v, &view, Some(&endpoint), false);
                }
                None => b.wait(v, now),
            }
        }
    }

    /// The baseline answered `key` (`seen`: what it showed) or never will (`None`).
    fn on_baseline(&mut self, key: RequestKey, seen: Option<Arc<Observed>>) {
        let Some(b) = self.baseline.as_mut() else {
            return;
        };
        for v in b.settle(key, seen.clone()) {
            let endpoint = endpoint_of(&v);
            let view = b.table.view(&endpoint, seen.as_deref());
            self.judge.judge(&v, &view, Some(&endpoint), false);
        }
    }

    fn expire(&mut self, now: Instant, all: bool) {
        let Some(b) = self.baseline.as_mut() else {
            return;
        };
        for v in b.expired(now, all) {
            let endpoint = endpoint_of(&v);
            let view = b.table.view(&endpoint, None);
            self.judge.judge(&v, &view, Some(&endpoint), true);
        }
    }
}
