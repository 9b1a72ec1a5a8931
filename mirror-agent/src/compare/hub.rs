//! [`CompareHub`]: the [`Comparator`] shared by the pipeline driver (primary side) and the
//! replay dispatchers (mirror side), with its own monotonic clock for expiry (capture and
//! replay timestamps are different clocks). It records each verdict's latency difference and,
//! with content comparison on, hands verdicts to the comparison thread ([`super::worker`]) so
//! neither the capture path nor a mirror worker ever parses a body.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::difflog::DiffLog;
use super::rules::CompareRules;
use super::worker::{BaselineRole, Content};
use super::{
    Comparator, CompareSnapshot, CompareSubscriber, MirrorSide, PrimaryInfo, PrimarySide,
    RequestKey, Verdict,
};
use crate::http::response::ResponseSample;
use crate::replay::stats::Outcome;
use crate::replay::{MirrorCopy, NotSent, ReplayObserver};

#[derive(Clone)]
pub struct CompareHub {
    inner: Arc<Mutex<Comparator>>,
    epoch: Instant,
    names: Arc<Vec<String>>,
    subscriber: Option<Arc<dyn CompareSubscriber>>,
    content: Option<Arc<Content>>,
}

impl std::fmt::Debug for CompareHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompareHub")
            .field("mirrors", &self.names)
            .field("content", &self.content.is_some())
            .finish()
    }
}

impl CompareHub {
    /// `mirror_names` in the replayer's mirror order (the index the dispatchers pass);
    /// `subscriber` hears every verdict and every primary exchange (telemetry).
    pub fn new(
        mirror_names: Vec<String>,
        ttl: Duration,
        max_entries: usize,
        subscriber: Option<Arc<dyn CompareSubscriber>>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Comparator::new(&mirror_names, ttl, max_entries))),
            epoch: Instant::now(),
            names: Arc::new(mirror_names),
            subscriber,
            content: None,
        }
    }

    /// Turns on header and body comparison (and the diff log): starts the comparison thread.
    pub fn with_content(self, rules: CompareRules, diff_log: Option<DiffLog>) -> Self {
        self.with_content_and_baseline(rules, diff_log, None)
    }

    /// [`Self::with_content`], and with `baseline` = `Some((mirror index, wait))` that mirror
    /// is the baseline: noise is learned from it, and each candidate's verdict waits up to
    /// `wait` for the baseline's answer to the same request.
    pub fn with_content_and_baseline(
        mut self,
        rules: CompareRules,
        diff_log: Option<DiffLog>,
        baseline: Option<(usize, Duration)>,
    ) -> Self {
        self.content = Some(Arc::new(Content::start(
            rules,
            diff_log,
            self.inner.clone(),
            self.names.clone(),
            baseline.map(|(mirror, wait)| BaselineRole { mirror, wait }),
        )));
        self
    }

    /// Body bytes each side should keep per response: `Some` only with content comparison on.
    pub fn capture_limit(&self) -> Option<usize> {
        self.content.as_ref().map(|c| c.rules.capture_limit())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Comparator) -> T) -> T {
        f(&mut crate::sync::lock(&self.inner))
    }

    fn emit(&self, v: Verdict) {
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
        if let Some(s) = &self.subscriber {
            s.verdict(name, &v);
        }
        if let Some(c) = &self.content {
            c.submit(v);
        }
    }

    /// Tells the subscriber of one primary exchange seen on the wire.
    pub(super) fn primary_exchange(
        &self,
        method: &str,
        status: u16,
        latency: Duration,
        server: &str,
    ) {
        if let Some(s) = &self.subscriber {
            s.primary_exchange(method, status, latency, server);
        }
    }

    /// The primary's final response to `key`.
    pub fn primary(&self, key: RequestKey, side: PrimarySide) {
        self.primary_with(key, side, None);
    }

    /// The primary's final response with its request and captured response (content
    /// comparison; ignored when it is off).
    pub fn primary_with(&self, key: RequestKey, side: PrimarySide, info: Option<PrimaryInfo>) {
        let info = info.filter(|_| self.content.is_some());
        let now = self.now();
        let verdicts = self.with(|c| c.on_primary_with(key, side, info, now));
        for v in verdicts {
            self.emit(v);
        }
    }

    /// Mirror `mirror`'s outcome for `key`. Copies never sent (drops) are not compared.
    pub fn mirror(&self, key: RequestKey, mirror: usize, outcome: &Outcome) {
        self.mirror_with(key, mirror, outcome, None);
    }

    /// [`Self::mirror`] with the mirror's captured response (content comparison).
    pub fn mirror_with(
        &self,
        key: RequestKey,
        mirror: usize,
        outcome: &Outcome,
        capture: Option<Box<ResponseSample>>,
    ) {
        let side = match *outcome {
            Outcome::Answered {
                status, latency, ..
            } => MirrorSide::Answered { status, latency },
            Outcome::Error(_) | Outcome::Timeout => MirrorSide::NoResponse,
            Outcome::Dropped(_) => return self.not_answered(key, mirror),
        };
        let capture = capture.filter(|_| self.content.is_some()).map(|b| *b);
        let now = self.now();
        if let Some(v) = self.with(|c| c.on_mirror_with(key, mirror, side, capture, now)) {
            self.emit(v);
        }
    }

    /// Mirror `mirror` will not answer `key`: its copy was not sampled or was dropped.
    pub fn not_answered(&self, key: RequestKey, mirror: usize) {
        let now = self.now();
        self.with(|c| c.on_not_mirrored(key, now));
        if let Some(c) = &self.content {
            c.not_answered(mirror, key);
        }
    }

    /// Expires entries past the ttl; call about once a second with the metrics update.
    pub fn expire(&self) {
        let now = self.now();
        self.with(|c| c.expire(now));
    }

    /// Waits (up to `timeout`) until the comparison thread has handled every verdict so far
    /// and flushed the diff log; call before the final snapshot.
    pub fn flush(&self, timeout: Duration) {
        if let Some(c) = &self.content {
            c.flush(timeout);
        }
    }

    pub fn snapshot(&self) -> CompareSnapshot {
        self.with(|c| c.snapshot())
    }

    /// Tests: holds the comparison thread (see `Content::hold`).
    #[cfg(test)]
    pub(super) fn hold_content(&self) -> std::sync::mpsc::Sender<()> {
        self.content.as_ref().expect("content comparison on").hold()
    }
}

/// The comparison's mirror side: each copy's outcome (and the mirror's response sample, with
/// content comparison on) meets the primary's answer to the same request; copies that never
/// leave settle their entry at once, so it does not wait for an outcome that cannot come.
impl ReplayObserver for CompareHub {
    type Flight = ();

    fn sending(&self, _: usize, _: &mut MirrorCopy) {}

    fn not_sent(&self, mirror: usize, key: RequestKey, _: NotSent) {
        self.not_answered(key, mirror);
    }

    fn finished(
        &self,
        mirror: usize,
        copy: &MirrorCopy,
        (): (),
        outcome: &Outcome,
        response: &mut Option<Box<ResponseSample>>,
    ) {
        self.mirror_with(copy.key(), mirror, outcome, response.take());
    }

    fn response_sample_limit(&self) -> Option<usize> {
        self.capture_limit()
    }
}
