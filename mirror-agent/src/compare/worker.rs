//! The comparison thread: takes verdicts from [`super::CompareHub`] over a bounded queue,
//! compares headers and bodies when the statuses are equal, counts the results, and writes the
//! `--diff-log` lines.
//!
//! A plain OS thread, not a tokio task: JSON parsing of up to two 64 KiB bodies and blocking
//! file writes must not run on the runtime's two workers that also drive the mirrors, nor on the
//! capture driver. The queue is bounded; a full queue is counted (`content_queue_full`, and
//! `content_skipped` for the request), never waited on.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::content::{self, ContentVerdict};
use super::difflog::DiffLog;
use super::rules::CompareRules;
use super::{Comparator, MirrorSide, Verdict};
use crate::sync::lock;

/// Verdicts waiting for the comparison thread at most.
const QUEUE: usize = 4096;

enum Msg {
    Verdict(Verdict),
    Flush(mpsc::Sender<()>),
}

/// The hub's handle on the comparison thread.
pub(super) struct Content {
    tx: SyncSender<Msg>,
    pub(super) rules: Arc<CompareRules>,
    has_log: bool,
    inner: Arc<Mutex<Comparator>>,
}

/// The statuses are equal: headers and bodies are compared.
fn same_status(v: &Verdict) -> bool {
    v.mismatch.is_none() && matches!(v.mirror_side, MirrorSide::Answered { .. })
}

impl Content {
    pub(super) fn start(
        rules: CompareRules,
        log: Option<DiffLog>,
        inner: Arc<Mutex<Comparator>>,
        names: Arc<Vec<String>>,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let rules = Arc::new(rules);
        let has_log = log.is_some();
        let (r, i) = (rules.clone(), inner.clone());
        let spawned = std::thread::Builder::new()
            .name("mirror-compare".into())
            .spawn(move || run(rx, &r, log, &i, &names));
        if let Err(e) = spawned {
            // Verdicts then count as queue-full (the receiver is gone): visible, not fatal.
            tracing::warn!(error = %e, "cannot start the comparison thread");
        }
        Self {
            tx,
            rules,
            has_log,
            inner,
        }
    }

    /// Queues a verdict if there is work for it: a content comparison, or a diff-log line.
    pub(super) fn submit(&self, v: Verdict) {
        let same = same_status(&v);
        if !same && !self.has_log {
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

    pub(super) fn flush(&self, timeout: Duration) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(timeout);
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    rules: &CompareRules,
    mut log: Option<DiffLog>,
    inner: &Mutex<Comparator>,
    names: &[String],
) {
    for msg in rx {
        let v = match msg {
            Msg::Verdict(v) => v,
            Msg::Flush(done) => {
                if let Some(l) = log.as_mut() {
                    l.flush();
                }
                let _ = done.send(());
                continue;
            }
        };
        let same = same_status(&v);
        let primary = v.info.as_ref().and_then(|i| i.capture.as_ref());
        let verdict: Option<ContentVerdict> = match (same, primary, v.mirror_capture.as_deref()) {
            (true, Some(p), Some(m)) => Some(content::compare(rules, p, m)),
            _ => None,
        };
        let mismatch = v.mismatch.is_some()
            || verdict
                .as_ref()
                .is_some_and(|c| c.header_mismatch() || c.body_mismatch());
        if mismatch && let Some(l) = log.as_mut() {
            let name = names.get(v.mirror).map_or("", String::as_str);
            l.write(name, &v, verdict.as_ref(), Instant::now());
        }
        let mut c = lock(inner);
        let s = c.stats_mut();
        if let Some(l) = &log {
            s.diff_log = l.stats;
        }
        let Some(m) = s.mirrors.get_mut(v.mirror) else {
            continue;
        };
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
}
