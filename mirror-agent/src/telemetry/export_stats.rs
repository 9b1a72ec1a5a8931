//! What became of the agent's own OTLP exports: metric export attempts and span batches that
//! reached the collector or failed, and spans the SDK never exported.
//!
//! Owns the counters only; the exporter wrappers in `otel.rs` and the tracer in `trace/`
//! update them, and the model (`model/`) exports them like any stage counter, so a collector
//! that is down shows on `/metrics` and in the exit summary instead of in a log nobody reads.
//!
//! Accounting: every span the tracer started is exported, failed (its batch was refused), or
//! still pending / dropped inside the SDK's batch processor (its queue holds 2048 spans). After
//! the final flush nothing is pending, so `started - exported - failed` is what the SDK dropped.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Live counters, shared by the exporters and the tracer.
#[derive(Debug)]
pub struct ExportStats {
    metric_exports_ok: AtomicU64,
    metric_exports_failed: AtomicU64,
    spans_started: AtomicU64,
    spans_exported: AtomicU64,
    spans_failed: AtomicU64,
    /// When a failure was last logged: failures are logged at most once a minute.
    last_warned: Mutex<Option<Instant>>,
}

/// A copy of [`ExportStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    pub metric_exports_ok: u64,
    pub metric_exports_failed: u64,
    pub spans_started: u64,
    pub spans_exported: u64,
    pub spans_failed: u64,
}

/// Which signal an export carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Traces,
}

const WARN_EVERY: Duration = Duration::from_secs(60);

impl Default for ExportStats {
    fn default() -> Self {
        Self {
            metric_exports_ok: AtomicU64::new(0),
            metric_exports_failed: AtomicU64::new(0),
            spans_started: AtomicU64::new(0),
            spans_exported: AtomicU64::new(0),
            spans_failed: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        }
    }
}

impl ExportStats {
    pub fn span_started(&self) {
        self.spans_started.fetch_add(1, Relaxed);
    }

    /// One metric export attempt ended.
    pub fn metrics_exported(&self, result: Result<(), &dyn std::fmt::Display>) {
        match result {
            Ok(()) => self.metric_exports_ok.fetch_add(1, Relaxed),
            Err(e) => {
                self.warn(Signal::Metrics, e);
                self.metric_exports_failed.fetch_add(1, Relaxed)
            }
        };
    }

    /// One batch of `spans` spans was exported, or refused.
    pub fn spans_exported(&self, spans: usize, result: Result<(), &dyn std::fmt::Display>) {
        let n = spans as u64;
        match result {
            Ok(()) => self.spans_exported.fetch_add(n, Relaxed),
            Err(e) => {
                self.warn(Signal::Traces, e);
                self.spans_failed.fetch_add(n, Relaxed)
            }
        };
    }

    fn warn(&self, signal: Signal, e: &dyn std::fmt::Display) {
        let mut last = crate::sync::lock(&self.last_warned);
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(?signal, error = %e, "OTLP export failed (counted in mirror.otlp.*; next warning in a minute at most)");
        }
    }

    pub fn snapshot(&self) -> ExportSnapshot {
        ExportSnapshot {
            metric_exports_ok: self.metric_exports_ok.load(Relaxed),
            metric_exports_failed: self.metric_exports_failed.load(Relaxed),
            spans_started: self.spans_started.load(Relaxed),
            spans_exported: self.spans_exported.load(Relaxed),
            spans_failed: self.spans_failed.load(Relaxed),
        }
    }
}

impl ExportSnapshot {
    /// Spans neither exported nor refused: pending in the SDK, or dropped by it when its queue
    /// was full (after the final flush: dropped).
    pub fn spans_unexported(&self) -> u64 {
        self.spans_started
            .saturating_sub(self.spans_exported + self.spans_failed)
    }

    /// The exit summary's line.
    pub fn line(&self) -> String {
        format!(
            "otlp: metric exports ok={} failed={}; spans started={} exported={} failed={} not_exported={}",
            self.metric_exports_ok,
            self.metric_exports_failed,
            self.spans_started,
            self.spans_exported,
            self.spans_failed,
            self.spans_unexported()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_add_up() {
        let s = ExportStats::default();
        for _ in 0..5 {
            s.span_started();
        }
        s.spans_exported(2, Ok(()));
        s.spans_exported(1, Err(&"refused"));
        s.metrics_exported(Ok(()));
        s.metrics_exported(Err(&"unavailable"));
        s.metrics_exported(Err(&"unavailable"));
        let snap = s.snapshot();
        assert_eq!((snap.metric_exports_ok, snap.metric_exports_failed), (1, 2));
        assert_eq!((snap.spans_exported, snap.spans_failed), (2, 1));
        assert_eq!(snap.spans_unexported(), 2);
        assert_eq!(
            snap.line(),
            "otlp: metric exports ok=1 failed=2; spans started=5 exported=2 failed=1 not_exported=2"
        );
    }
}
