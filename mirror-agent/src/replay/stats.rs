//! Per-mirror counters, the latency histogram, the progress line and the exit table.
//!
//! Owns the accounting identity every copy obeys. A copy is *sampled* when the sampler picks it
//! for a mirror; from then on it is represented by a [`Ticket`] that is resolved exactly once
//! (or, if dropped unresolved, counts as `dropped_shutdown`), so at every moment:
//!
//! ```text
//! sampled = answered + errors + timeouts + dropped + in_flight
//! answered = 1xx(final) + 2xx + 3xx + 4xx + 5xx
//! dropped  = filtered + body_too_large + queue_full + backoff + shutdown
//! ```
//!
//! and after shutdown `in_flight == 0`. `sent` (request bytes fully written to the mirror) is
//! not a term of the identity: a sent copy still ends as answered, error or timeout.

use super::tls::HandshakeFailure;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// How a sampled copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final response was read completely.
    Answered {
        status: u16,
        latency: Duration,
        /// `grpc-status` of an HTTP/2 answer that carried one (trailers, or a trailers-only
        /// answer).
        grpc_status: Option<u32>,
    },
    Error(ErrorKind),
    /// No complete response within the per-request timeout.
    Timeout,
    Dropped(DropReason),
}

/// Why a copy failed at the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// DNS or TCP connect failed (refused, unreachable).
    Connect,
    /// Write or read failed (reset, broken pipe), or the mirror closed before answering.
    Io,
    /// The response could not be framed (malformed, too large, truncated).
    BadResponse,
    /// The copy cannot be written in the mirror's protocol: an HTTP/1.1 upgrade, CONNECT or
    /// a field HTTP/2 forbids, bound for an HTTP/2 mirror (`protocol=h2`).
    Untranslatable,
}

/// gRPC status codes 0-16 (`grpc-status`), and one slot for any other value.
pub const GRPC_STATUS_SLOTS: usize = 18;

/// Why a copy was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Rejected by a method/path/header filter.
    Filtered,
    /// Body larger than `--max-body-size`.
    BodyTooLarge,
    /// The mirror's queue was full (the mirror is slower than the traffic).
    QueueFull,
    /// The mirror is down and in reconnect backoff; copies are not queued behind it.
    Backoff,
    /// Still queued or in flight when the agent stopped.
    Shutdown,
}

/// Live counters of one mirror. Updated with relaxed atomics: counters are read for display and
/// the identity holds at quiescence (tests check it after shutdown).
#[derive(Debug)]
pub struct MirrorStats {
    pub name: String,
    pub percent: f64,
    /// Per captured request probability (`percent / capture_percent`).
    pub probability: f64,
    sampled: AtomicU64,
    sent: AtomicU64,
    status: [AtomicU64; 5],
    errors: [AtomicU64; 4],
    /// HTTP/2 answers carrying `grpc-status`, by code (see [`GRPC_STATUS_SLOTS`]).
    grpc_status: [AtomicU64; GRPC_STATUS_SLOTS],
    timeouts: AtomicU64,
    dropped: [AtomicU64; 5],
    in_flight: AtomicU64,
    /// Requests re-sent once on a fresh connection after a kept-alive one turned out closed.
    retries: AtomicU64,
    connects: AtomicU64,
    /// `https://` mirrors: failed TLS handshakes, indexed like [`HandshakeFailure::ALL`] (each
    /// is also a connect error).
    tls_failures: [AtomicU64; 3],
    latency_us: Mutex<Histogram<u64>>,
}

impl MirrorStats {
    pub fn new(name: String, percent: f64, probability: f64) -> Self {
        Self {
            name,
            percent,
            probability,
            sampled: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            status: Default::default(),
            errors: Default::default(),
            grpc_status: Default::default(),
            timeouts: AtomicU64::new(0),
            dropped: Default::default(),
            in_flight: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            tls_failures: Default::default(),
            // 1 us to 10 min at 3 significant digits: about 160 KiB of counts per mirror.
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds")),
        }
    }

    pub(crate) fn on_sent(&self) {
        self.sent.fetch_add(1, Relaxed);
    }
    pub(crate) fn on_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub(crate) fn on_connect(&self) {
        self.connects.fetch_add(1, Relaxed);
    }
    pub(crate) fn on_tls_failure(&self, why: HandshakeFailure) {
        self.tls_failures[why as usize].fetch_add(1, Relaxed);
    }
    /// An answer's `grpc-status` (trailers, or headers of a trailers-only answer).
    pub(crate) fn on_grpc_status(&self, code: u32) {
        let slot = (code as usize).min(GRPC_STATUS_SLOTS - 1);
        self.grpc_status[slot].fetch_add(1, Relaxed);
    }

    fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Answered {
                status, latency, ..
            } => {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.status[class].fetch_add(1, Relaxed);
                let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
                let _ = crate::sync::lock(&self.latency_us).record(us);
            }
            Outcome::Error(k) => {
                self.errors[k as usize].fetch_add(1, Relaxed);
            }
            Outcome::Timeout => {
                self.timeouts.fetch_add(1, Relaxed);
            }
            Outcome::Dropped(r) => {
                self.dropped[r as usize].fetch_add(1, Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> MirrorSnapshot {
        let l = |a: &AtomicU64| a.load(Relaxed);
        let (p50, p99) = {
            let h = crate::sync::lock(&self.latency_us);
            if h.is_empty() {
                (None, None)
            } else {
                (
                    Some(Duration::from_micros(h.value_at_quantile(0.5))),
                    Some(Duration::from_micros(h.value_at_quantile(0.99))),
                )
            }
        };
        MirrorSnapshot {
            name: self.name.clone(),
            percent: self.percent,
            probability: self.probability,
            sampled: l(&self.sampled),
            sent: l(&self.sent),
            status: self.status.each_ref().map(l),
            errors: self.errors.each_ref().map(l),
            grpc_status: self.grpc_status.each_ref().map(l),
            timeouts: l(&self.timeouts),
            dropped: self.dropped.each_ref().map(l),
            in_flight: l(&self.in_flight),
            retries: l(&self.retries),
            connects: l(&self.connects),
            tls_failures: self.tls_failures.each_ref().map(l),
            p50,
            p99,
        }
    }
}

/// One sampled copy's accounting: created when sampled, resolved exactly once.
#[derive(Debug)]
pub struct Ticket {
    stats: Arc<MirrorStats>,
    open: bool,
}

impl Ticket {
    pub fn new(stats: Arc<MirrorStats>) -> Self {
        stats.sampled.fetch_add(1, Relaxed);
        stats.in_flight.fetch_add(1, Relaxed);
        Self { stats, open: true }
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    pub fn resolve(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if std::mem::take(&mut self.open) {
            self.stats.record(outcome);
            self.stats.in_flight.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Ticket {
    /// A copy dropped without an outcome (queue discarded, task aborted at shutdown).
    fn drop(&mut self) {
        self.finish(Outcome::Dropped(DropReason::Shutdown));
    }
}

/// A point-in-time copy of one mirror's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSnapshot {
    pub name: String,
    pub percent: f64,
    pub probability: f64,
    pub sampled: u64,
    pub sent: u64,
    /// Final responses by class: 1xx (101), 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 5],
    /// Indexed by [`ErrorKind`].
    pub errors: [u64; 4],
    /// Answers by `grpc-status` code (the last slot: any code above 16).
    pub grpc_status: [u64; GRPC_STATUS_SLOTS],
    pub timeouts: u64,
    /// Indexed by [`DropReason`].
    pub dropped: [u64; 5],
    pub in_flight: u64,
    pub retries: u64,
    pub connects: u64,
    /// Failed TLS handshakes, indexed like [`HandshakeFailure::ALL`].
    pub tls_failures: [u64; 3],
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl MirrorSnapshot {
    pub fn answered(&self) -> u64 {
        self.status.iter().sum()
    }
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }
    pub fn dropped_count(&self) -> u64 {
        self.dropped.iter().sum()
    }
    /// `; grpc-status: 0 x12, 5 x1` for the codes seen, empty when none was.
    pub fn grpc_line(&self) -> String {
        let seen: Vec<String> = self
            .grpc_status
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| {
                if code == GRPC_STATUS_SLOTS - 1 {
                    format!("other x{n}")
                } else {
                    format!("{code} x{n}")
                }
            })
            .collect();
        if seen.is_empty() {
            String::new()
        } else {
            format!("; grpc-status: {}", seen.join(", "))
        }
    }
    pub fn error(&self, k: ErrorKind) -> u64 {
        self.errors[k as usize]
    }
    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.dropped[r as usize]
    }
    /// `sampled = answered + errors + timeouts + dropped + in_flight`.
    pub fn balanced(&self) -> bool {
        self.sampled
            == self.answered()
                + self.error_count()
                + self.timeouts
                + self.dropped_count()
                + self.in_flight
    }
}

/// All mirrors plus the number of requests offered to the replayer.
#[derive(Debug)]
pub struct ReplayStats {
    submitted: AtomicU64,
    pub mirrors: Vec<Arc<MirrorStats>>,
}

impl ReplayStats {
    pub fn new(mirrors: Vec<Arc<MirrorStats>>) -> Self {
        Self {
            submitted: AtomicU64::new(0),
            mirrors,
        }
    }
    /// `n` captured requests were offered to the mirrors.
    pub(crate) fn on_submitted(&self, n: usize) {
        self.submitted.fetch_add(n as u64, Relaxed);
    }
    pub fn snapshot(&self) -> ReplaySnapshot {
        ReplaySnapshot {
            captured: self.submitted.load(Relaxed),
            mirrors: self.mirrors.iter().map(|m| m.snapshot()).collect(),
        }
    }
}

/// Counters of a whole run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplaySnapshot {
    /// Requests handed to the replayer (captured and framed).
    pub captured: u64,
    pub mirrors: Vec<MirrorSnapshot>,
}

impl ReplaySnapshot {
    /// Requests delivered (fully written) to a mirror that takes every captured request, over
    /// requests captured: the best such mirror, as a measure of the capture and replay path
    /// (a broken mirror shows its own losses in its row). `None` without such a mirror or
    /// without traffic.
    pub fn completeness(&self) -> Option<f64> {
        self.completeness_of().map(|(_, c)| c)
    }

    /// [`Self::completeness`] with the mirror it was measured on.
    pub fn completeness_of(&self) -> Option<(&str, f64)> {
        if self.captured == 0 {
            return None;
        }
        self.mirrors
            .iter()
            .filter(|m| m.probability >= 1.0)
            .map(|m| (m.name.as_str(), m.sent as f64 / self.captured as f64))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// One line for the periodic progress log; rates against `prev` taken `elapsed` earlier.
    pub fn progress_line(&self, prev: Option<&ReplaySnapshot>, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut line = format!("captured {}", self.captured);
        for (i, m) in self.mirrors.iter().enumerate() {
            let before = prev.and_then(|p| p.mirrors.get(i)).map_or(0, |p| p.sent);
            let rate = m.sent.saturating_sub(before) as f64 / secs;
            let _ = write!(
                line,
                " | {}: sent {} ({rate:.0}/s) 5xx {} err {} timeout {} drop {} p99 {}",
                m.name,
                m.sent,
                m.status[4],
                m.error_count(),
                m.timeouts,
                m.dropped_count(),
                fmt_latency(m.p99),
            );
        }
        if let Some(c) = self.completeness() {
            let _ = write!(line, " | completeness {:.2}%", c * 100.0);
        }
        line
    }

    /// The table printed on exit: one row per mirror, then drop and error breakdowns.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<16} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9}",
            "mirror",
            "pct",
            "sampled",
            "sent",
            "2xx",
            "3xx",
            "4xx",
            "5xx",
            "errors",
            "timeouts",
            "dropped",
            "p50",
            "p99"
        );
        for m in &self.mirrors {
            let _ = writeln!(
                t,
                "{:<16} {:>5} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9}",
                truncate(&m.name, 16),
                format!("{}", m.percent),
                m.sampled,
                m.sent,
                m.status[1],
                m.status[2],
                m.status[3],
                m.status[4],
                m.error_count(),
                m.timeouts,
                m.dropped_count(),
                fmt_latency(m.p50),
                fmt_latency(m.p99),
            );
        }
        for m in &self.mirrors {
            let _ = writeln!(
                t,
                "  {}: dropped: queue full {}, filtered {}, body too large {}, backoff {}, shutdown {}; \
                 errors: connect {}, io {}, bad response {}, untranslatable {}; other final 1xx {}; \
                 in flight {}; retries {}; connections {}{}{}",
                m.name,
                m.drop_count(DropReason::QueueFull),
                m.drop_count(DropReason::Filtered),
                m.drop_count(DropReason::BodyTooLarge),
                m.drop_count(DropReason::Backoff),
                m.drop_count(DropReason::Shutdown),
                m.error(ErrorKind::Connect),
                m.error(ErrorKind::Io),
                m.error(ErrorKind::BadResponse),
                m.error(ErrorKind::Untranslatable),
                m.status[0],
                m.in_flight,
                m.retries,
                m.connects,
                if m.tls_failures.iter().any(|&n| n > 0) {
                    format!(
                        "; TLS handshakes failed: certificate {}, alert {}, other {}",
                        m.tls_failures[0], m.tls_failures[1], m.tls_failures[2]
                    )
                } else {
                    String::new()
                },
                m.grpc_line(),
            );
        }
        let _ = write!(t, "captured requests: {}", self.captured);
        match self.completeness_of() {
            Some((name, c)) => {
                let _ = writeln!(
                    t,
                    "; completeness (delivered to 100% mirror `{name}` / captured): {:.3}%",
                    c * 100.0
                );
            }
            None => t.push('\n'),
        }
        t
    }
}

fn fmt_latency(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_millis(10) => format!("{:.2}ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(10) => format!("{:.0}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_keep_the_identity() {
        let m = Arc::new(MirrorStats::new("m".into(), 100.0, 1.0));
        let lat = Duration::from_millis(3);
        let outcomes = [
            Outcome::Answered {
                status: 200,
                latency: lat,
                grpc_status: None,
            },
            Outcome::Answered {
                status: 503,
                latency: lat,
                grpc_status: None,
            },
            Outcome::Answered {
                status: 101,
                latency: lat,
                grpc_status: None,
            },
            Outcome::Error(ErrorKind::Connect),
            Outcome::Error(ErrorKind::Io),
            Outcome::Timeout,
            Outcome::Dropped(DropReason::QueueFull),
            Outcome::Dropped(DropReason::Filtered),
        ];
        for o in outcomes {
            Ticket::new(m.clone()).resolve(o);
        }
        let pending = Ticket::new(m.clone());
        let s = m.snapshot();
        assert_eq!((s.sampled, s.in_flight), (9, 1));
        assert!(s.balanced(), "{s:?}");
        drop(pending); // unresolved: counts as a shutdown drop
        let s = m.snapshot();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.drop_count(DropReason::Shutdown), 1);
        assert_eq!(s.answered(), 3);
        assert_eq!(s.status, [1, 1, 0, 0, 1]);
        assert!(s.balanced(), "{s:?}");
        assert_eq!(
            s.p50,
            Some(Duration::from_millis(3)).map(|d| {
                // hdrhistogram reports the bucket's highest equivalent value
                Duration::from_micros(
                    m.latency_us
                        .lock()
                        .unwrap()
                        .highest_equivalent(d.as_micros() as u64),
                )
            })
        );
    }

    #[test]
    fn table_and_completeness() {
        let full = Arc::new(MirrorStats::new("app-v2".into(), 100.0, 1.0));
        let half = Arc::new(MirrorStats::new("app-v3".into(), 50.0, 0.5));
        let stats = ReplayStats::new(vec![full.clone(), half.clone()]);
        for _ in 0..4 {
            stats.on_submitted(1);
        }
        for _ in 0..3 {
            full.on_sent();
        }
        let snap = stats.snapshot();
        assert_eq!(snap.completeness(), Some(0.75));
        let table = snap.table();
        assert!(table.starts_with("mirror "), "{table}");
        assert!(table.contains("app-v2"), "{table}");
        assert!(
            table.contains("completeness (delivered to 100% mirror `app-v2` / captured): 75.000%"),
            "{table}"
        );
        let line = snap.progress_line(None, Duration::from_secs(1));
        assert!(line.contains("app-v3: sent 0"), "{line}");
        assert!(!line.contains('\n'));
    }
}
