//! Primary-vs-mirror comparison, per mirrored request: status, latency, headers and body.
//!
//! Owns the pairing of the two sides of one request: the primary's response (from the
//! pipeline's egress pairing, [`crate::pipeline::CapturedResponse`], keyed by
//! `(flow_id, seq_in_flow)`) and each mirror's outcome (from the replay dispatcher, with the same
//! key carried on the job). Either side may come first; a request waits in a bounded table
//! until both are known or it expires (counted, never silent). [`Comparator`] is a pure state
//! machine: callers pass time in, it emits [`Verdict`]s and keeps the status counters.
//!
//! With `--compare`, both sides also keep the response head and a bounded prefix of the decoded
//! body ([`crate::http::response::ResponseSample`]); the table holds those within a byte
//! budget (over it a capture is dropped and counted). [`CompareHub`] hands each verdict to a
//! comparison thread ([`worker`]) that, when the statuses are equal, compares headers
//! ([`headers`]) and bodies ([`body`], [`content`]) under the [`rules`], counts header and body
//! mismatches, and writes `--diff-log` lines ([`difflog`]).
//!
//! Kinds counted per compared request: at most one of `status_class`, `status_code` and
//! `no_response`; when the status codes are equal, `header` and/or `body` (a request may count
//! both). Headers and bodies are not compared across different statuses: a 500's body differs
//! from a 200's by nature, and the status mismatch already says so.

pub mod body;
pub mod content;
pub mod difflog;
pub mod headers;
mod hub;
pub mod noise;
pub mod primary;
pub mod rules;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub use hub::CompareHub;
pub use primary::PrimaryObserver;

use crate::http::response::ResponseSample;

pub use crate::pipeline::RequestKey;

/// What the comparison tells the rest of the agent. Telemetry subscribes to it (histograms of
/// the primary's durations and of latency differences), so comparison never imports an
/// exporter and runs the same with telemetry off.
pub trait CompareSubscriber: Send + Sync {
    /// The primary answered a request: method, status, last request byte to first response
    /// byte, and the server's address, as seen on the wire.
    fn primary_exchange(&self, method: &str, status: u16, latency: Duration, server: &str);
    /// One mirror's verdict for one request (`mirror` is its name).
    fn verdict(&self, mirror: &str, verdict: &Verdict);
}

/// Bytes of captured heads and bodies the comparison table holds at most.
pub const DEFAULT_HELD_BYTES: usize = 64 << 20;

/// The primary's side of a request as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySide {
    pub status: u16,
    /// Last request byte to first response byte.
    pub latency: Duration,
}

/// What the content comparison and the diff log need of the primary's request and response
/// (kept only with content comparison on).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrimaryInfo {
    /// From the captured request.
    pub method: String,
    pub target: String,
    /// The primary's response head and body prefix (`None`: not captured or over budget).
    pub capture: Option<ResponseSample>,
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
    /// The primary's request and response details (content comparison on).
    pub info: Option<Arc<PrimaryInfo>>,
    /// The mirror's response head and body prefix (content comparison on).
    pub mirror_capture: Option<Arc<ResponseSample>>,
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
    /// Same status, different headers (content comparison).
    pub header: u64,
    /// Same status, different bodies.
    pub body: u64,
    /// Bodies compared on a prefix only (longer than `--compare-body-limit`).
    pub body_truncated: u64,
    /// Same status, but headers and body not compared: a side's capture is missing (over the
    /// memory budget, or the comparison queue was full).
    pub content_skipped: u64,
    /// Same status, and every header or body difference was noise (learned from the baseline
    /// mirror): not counted in `header` nor `body`.
    pub noise_only: u64,
    /// Candidate verdicts that stopped waiting for the baseline's answer to the same request
    /// (it took longer than the comparison window, or its verdict was lost): judged with the
    /// noise learned so far only.
    pub baseline_wait_expired: u64,
}

/// One mirror's comparisons on one endpoint (with a baseline mirror).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    pub compared: u64,
    /// Requests with a real difference (status, no response, or a header or body difference
    /// that is not noise).
    pub real: u64,
    /// Requests whose only differences were noise.
    pub noise_only: u64,
}

/// What the baseline mirror taught (`role=baseline`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoiseSnapshot {
    /// The baseline mirror's name.
    pub baseline: String,
    pub endpoints: Vec<noise::EndpointFields>,
    pub losses: noise::NoiseLosses,
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
    /// Captures dropped because the table held [`DEFAULT_HELD_BYTES`] already.
    pub captures_over_budget: u64,
    /// Verdicts the comparison thread could not take (its queue was full).
    pub content_queue_full: u64,
    /// `--diff-log` lines written, suppressed by the rate limit, and failed writes.
    pub diff_log: difflog::DiffLogStats,
    /// With a baseline mirror: per (endpoint, mirror index) counts, at most
    /// [`noise::MAX_ENDPOINTS`] endpoints (then [`noise::OTHER_ENDPOINT`]).
    pub endpoints: std::collections::BTreeMap<(String, usize), EndpointCounts>,
    /// With a baseline mirror: the noise fields learned.
    pub noise: Option<NoiseSnapshot>,
}

impl CompareSnapshot {
    /// The comparison columns of the exit table: one row per mirror, then the losses.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = format!(
            "{:<16} {:>9} {:>12} {:>11} {:>11} {:>15} {:>7} {:>7} {:>10} {:>14} {:>15}\n",
            "mirror",
            "compared",
            "status_class",
            "status_code",
            "no_response",
            "primary_missing",
            "header",
            "body",
            "noise_only",
            "body_truncated",
            "content_skipped"
        );
        for m in &self.mirrors {
            let _ = writeln!(
                t,
                "{:<16} {:>9} {:>12} {:>11} {:>11} {:>15} {:>7} {:>7} {:>10} {:>14} {:>15}",
                m.name,
                m.compared,
                m.status_class,
                m.status_code,
                m.no_response,
                m.primary_missing,
                m.header,
                m.body,
                m.noise_only,
                m.body_truncated,
                m.content_skipped
            );
        }
        if let Some(n) = &self.noise {
            self.noise_table(&mut t, n);
        }
        let _ = writeln!(
            t,
            "comparison: primary only {}, table evictions {}, requests forgotten unanswered {}, \
             responses to unknown requests {}, captures over budget {}, comparison queue full {}",
            self.primary_unmatched,
            self.evicted,
            self.primary_requests_evicted,
            self.primary_responses_unknown,
            self.captures_over_budget,
            self.content_queue_full
        );
        let d = &self.diff_log;
        if d.lines + d.suppressed + d.errors > 0 {
            let _ = writeln!(
                t,
                "diff log: lines {}, diff_log_suppressed {}, write errors {}",
                d.lines, d.suppressed, d.errors
            );
        }
        t
    }

    /// With a baseline: per endpoint and mirror, compared, real differences and noise; then
    /// the fields learned per endpoint.
    fn noise_table(&self, t: &mut String, n: &NoiseSnapshot) {
        use std::fmt::Write as _;
        /// Rows and fields printed at most (the metrics have them all).
        const ROWS: usize = 40;
        const FIELDS: usize = 8;
        let fields = |endpoint: &str| {
            n.endpoints
                .iter()
                .find(|e| e.endpoint == endpoint)
                .map_or(0, |e| e.fields.len())
        };
        let _ = writeln!(
            t,
            "{:<40} {:<16} {:>9} {:>7} {:>10} {:>12}",
            "endpoint", "mirror", "compared", "real", "noise_only", "noise_fields"
        );
        for ((endpoint, mirror), c) in self.endpoints.iter().take(ROWS) {
            let name = self.mirrors.get(*mirror).map_or("?", |m| m.name.as_str());
            let _ = writeln!(
                t,
                "{:<40} {:<16} {:>9} {:>7} {:>10} {:>12}",
                endpoint,
                name,
                c.compared,
                c.real,
                c.noise_only,
                fields(endpoint)
            );
        }
        if self.endpoints.len() > ROWS {
            let _ = writeln!(t, "... {} more rows", self.endpoints.len() - ROWS);
        }
        let learned: usize = n.endpoints.iter().map(|e| e.fields.len()).sum();
        let _ = writeln!(
            t,
            "noise learned from baseline `{}`: {} fields on {} endpoints (not learned: endpoint \
             table full {}, endpoint fields full {}); baseline waits expired {}",
            n.baseline,
            learned,
            n.endpoints.len(),
            n.losses.endpoints_full,
            n.losses.fields_full,
            self.mirrors
                .iter()
                .map(|m| m.baseline_wait_expired)
                .sum::<u64>()
        );
        for e in n.endpoints.iter().take(ROWS) {
            let list: Vec<String> = e
                .fields
                .iter()
                .take(FIELDS)
                .map(|(f, k)| format!("{f} ({k})"))
                .collect();
            let more = e.fields.len().saturating_sub(FIELDS);
            let _ = writeln!(
                t,
                "  {}: {}{}",
                e.endpoint,
                list.join(", "),
                if more > 0 {
                    format!(", ... {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
}

type Waiting = (usize, MirrorSide, Option<Arc<ResponseSample>>);

#[derive(Debug, Default)]
struct Entry {
    primary: Option<PrimarySide>,
    info: Option<Arc<PrimaryInfo>>,
    /// Mirror outcomes waiting for the primary.
    waiting: Vec<Waiting>,
    /// Mirrors already compared (the primary stays for late mirrors).
    compared: usize,
    /// Mirrors that will never answer this request: the copy was not sampled, or dropped
    /// before it was sent. Counted so the entry (and the primary's capture) can go as soon as
    /// every mirror is settled, instead of waiting for the ttl or an eviction.
    not_mirrored: usize,
    /// Capture bytes this entry holds (counted in `Comparator::held`).
    held: usize,
}

/// The pairing table. `ttl` bounds how long one side waits; `max_entries` bounds entries and
/// `max_held` the capture bytes they hold.
#[derive(Debug)]
pub struct Comparator {
    entries: HashMap<RequestKey, Entry>,
    order: VecDeque<(u64, RequestKey)>,
    ttl_ns: u64,
    max_entries: usize,
    held: usize,
    max_held: usize,
    stats: CompareSnapshot,
}

impl Comparator {
    pub fn new(mirror_names: &[String], ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            ttl_ns: ttl.as_nanos() as u64,
            max_entries: max_entries.max(1),
            held: 0,
            max_held: DEFAULT_HELD_BYTES,
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

    /// Bound on capture bytes held (default [`DEFAULT_HELD_BYTES`]).
    pub fn with_max_held(mut self, bytes: usize) -> Self {
        self.max_held = bytes;
        self
    }

    fn entry(&mut self, key: RequestKey, now_ns: u64) -> &mut Entry {
        if !self.entries.contains_key(&key) {
            // `order` also keeps keys of entries already removed (fully compared); bound it too.
            while self.entries.len() >= self.max_entries || self.order.len() >= 2 * self.max_entries
            {
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
        self.held -= e.held;
        for (m, _, _) in e.waiting {
            if let Some(s) = self.stats.mirrors.get_mut(m) {
                s.primary_missing += 1;
            }
        }
        if e.primary.is_some() && e.compared == 0 {
            self.stats.primary_unmatched += 1;
        }
    }

    /// Admits `bytes` of capture into the budget, or counts a drop.
    fn admit(&mut self, bytes: usize) -> bool {
        if self.held + bytes > self.max_held {
            self.stats.captures_over_budget += 1;
            false
        } else {
            self.held += bytes;
            true
        }
    }

    fn judge(
        &mut self,
        key: RequestKey,
        w: Waiting,
        p: PrimarySide,
        info: Option<Arc<PrimaryInfo>>,
    ) -> Verdict {
        let (mirror, m, mirror_capture) = w;
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
            info,
            mirror_capture,
        }
    }

    /// The primary answered and every mirror is compared or will never answer: the entry (and
    /// the primary's capture) can go. Until the primary's response is in, the entry stays even
    /// when no mirror will answer, so that response finds it settled instead of waiting for a
    /// mirror until the ttl (and counting as `primary only`).
    fn release_if_done(&mut self, key: RequestKey) {
        let n = self.stats.mirrors.len();
        if self
            .entries
            .get(&key)
            .is_some_and(|e| e.primary.is_some() && e.compared + e.not_mirrored >= n)
            && let Some(e) = self.entries.remove(&key)
        {
            self.held -= e.held;
        }
    }

    /// The primary's response to `key`: compares with mirror outcomes already in.
    pub fn on_primary(&mut self, key: RequestKey, p: PrimarySide, now_ns: u64) -> Vec<Verdict> {
        self.on_primary_with(key, p, None, now_ns)
    }

    /// [`Self::on_primary`] with the request and response details for content comparison.
    pub fn on_primary_with(
        &mut self,
        key: RequestKey,
        p: PrimarySide,
        mut info: Option<PrimaryInfo>,
        now_ns: u64,
    ) -> Vec<Verdict> {
        let bytes = info
            .as_ref()
            .and_then(|i| i.capture.as_ref())
            .map_or(0, ResponseSample::held_bytes);
        let mut held = 0;
        if bytes > 0 {
            if self.admit(bytes) {
                held = bytes;
            } else if let Some(i) = info.as_mut() {
                i.capture = None;
            }
        }
        let info = info.map(Arc::new);
        let e = self.entry(key, now_ns);
        e.primary = Some(p);
        e.info = info.clone();
        e.held += held;
        let waiting = std::mem::take(&mut e.waiting);
        e.compared += waiting.len();
        let verdicts: Vec<Verdict> = waiting
            .into_iter()
            .map(|w| {
                let bytes = w.2.as_ref().map_or(0, |c| c.held_bytes());
                self.held -= bytes;
                if let Some(e) = self.entries.get_mut(&key) {
                    e.held -= bytes;
                }
                self.judge(key, w, p, info.clone())
            })
            .collect();
        self.release_if_done(key);
        verdicts
    }

    /// A mirror's outcome for `key`: compares now if the primary is in, else waits.
    pub fn on_mirror(
        &mut self,
        key: RequestKey,
        mirror: usize,
        side: MirrorSide,
        now_ns: u64,
    ) -> Option<Verdict> {
        self.on_mirror_with(key, mirror, side, None, now_ns)
    }

    /// [`Self::on_mirror`] with the mirror's captured response for content comparison.
    pub fn on_mirror_with(
        &mut self,
        key: RequestKey,
        mirror: usize,
        side: MirrorSide,
        capture: Option<ResponseSample>,
        now_ns: u64,
    ) -> Option<Verdict> {
        let e = self.entry(key, now_ns);
        match e.primary {
            Some(p) => {
                e.compared += 1;
                let info = e.info.clone();
                let v = self.judge(key, (mirror, side, capture.map(Arc::new)), p, info);
                self.release_if_done(key);
                Some(v)
            }
            None => {
                let bytes = capture.as_ref().map_or(0, ResponseSample::held_bytes);
                let capture = match capture {
                    Some(c) if bytes == 0 || self.admit(bytes) => Some(Arc::new(c)),
                    _ => None,
                };
                let held = capture.as_ref().map_or(0, |c| c.held_bytes());
                let e = self.entries.get_mut(&key).expect("entry just made");
                e.held += held;
                e.waiting.push((mirror, side, capture));
                None
            }
        }
    }

    /// `mirror` will not answer `key` (not sampled, or dropped before sending): nothing to
    /// compare for it, and the entry goes once every mirror is settled.
    pub fn on_not_mirrored(&mut self, key: RequestKey, now_ns: u64) {
        self.entry(key, now_ns).not_mirrored += 1;
        self.release_if_done(key);
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

    /// Capture bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    pub fn snapshot(&self) -> CompareSnapshot {
        self.stats.clone()
    }

    /// Counts one content comparison's result for `mirror` (from the comparison thread).
    pub(crate) fn stats_mut(&mut self) -> &mut CompareSnapshot {
        &mut self.stats
    }
}

#[cfg(test)]
mod tests;
