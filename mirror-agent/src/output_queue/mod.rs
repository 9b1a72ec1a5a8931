//! One output's writes on a thread of its own, behind a bounded queue (`--record`,
//! `--write-pcap`), so a slow sink never slows the capture path.
//!
//! Owns the rule every such output follows: the capture side only enqueues (never blocks, never
//! encodes); when the queue is full, by items or by bytes, the item is dropped *for that output
//! only* and counted (`queue_full`); after the first write error nothing more is written and
//! every later item is counted (`write_error`); items still queued when the run ends and the
//! writer does not finish within the grace period are counted (`at_exit`). So, at any time:
//!
//! ```text
//! submitted = written + queue_full + write_error + at_exit + queued
//! ```
//!
//! (checked by the tests). Why a thread and not a tokio task: encoding and blocking `write(2)`
//! to a file or a pipe must not run on the runtime's workers that drive the mirrors, nor on the
//! capture driver; a thread blocked on a full pipe costs nothing else.
//!
//! The comparison's `--diff-log` has its own thread and queue (`compare::worker`) with the same
//! policy. The output threads run in the `SCHED_IDLE` class, so on a shared core the recording,
//! not the ring buffer, is what falls behind. Depends on nothing else in the
//! crate but [`crate::sync`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// What an output does with one item, on its own thread.
pub trait OutputWriter: Send + 'static {
    type Item: Send + 'static;
    /// Encodes and writes one item (buffered writes are fine: [`Self::flush`] follows).
    fn write(&mut self, item: Self::Item) -> std::io::Result<()>;
    /// Pushes buffered bytes out; called whenever the queue runs empty.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Writes out everything at the end of the run (by default: [`Self::flush`]).
    fn finish(mut self) -> std::io::Result<()>
    where
        Self: Sized,
    {
        self.flush()
    }
}

/// Bounds of one output's queue. An item is dropped when either would be passed (an item
/// larger than `bytes` is taken when the queue is empty).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub items: usize,
    pub bytes: usize,
}

/// An output's counters (see the module docs for how they add up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputSnapshot {
    pub submitted: u64,
    pub written: u64,
    pub dropped_queue_full: u64,
    pub dropped_write_error: u64,
    pub dropped_at_exit: u64,
    /// Items waiting now.
    pub queued: u64,
    /// Bytes (as the submitter counted them) waiting now.
    pub queued_bytes: u64,
}

impl OutputSnapshot {
    /// Every drop, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_write_error + self.dropped_at_exit
    }

    /// The drops by reason, named as in the metrics and the exit summary.
    pub fn drops_by_reason(&self) -> [(&'static str, u64); 3] {
        [
            ("queue_full", self.dropped_queue_full),
            ("write_error", self.dropped_write_error),
            ("at_exit", self.dropped_at_exit),
        ]
    }
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    written: AtomicU64,
    queue_full: AtomicU64,
    write_error: AtomicU64,
    at_exit: AtomicU64,
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    /// Set by `finish` when it gave up waiting: the writer's late progress is no longer counted,
    /// its remaining items already are (`at_exit`).
    abandoned: AtomicBool,
    /// The first write error, for the exit report.
    error: Mutex<Option<String>>,
}

/// A read-only handle on an output's counters, for the telemetry.
#[derive(Clone)]
pub struct OutputStats {
    name: &'static str,
    counters: Arc<Counters>,
}

impl OutputStats {
    /// The output's name (`record`, `pcap`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn snapshot(&self) -> OutputSnapshot {
        let c = &self.counters;
        OutputSnapshot {
            submitted: c.submitted.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped_queue_full: c.queue_full.load(Ordering::Relaxed),
            dropped_write_error: c.write_error.load(Ordering::Relaxed),
            dropped_at_exit: c.at_exit.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed) as u64,
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed) as u64,
        }
    }
}

impl std::fmt::Debug for OutputStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// How an output ended.
#[derive(Debug, Clone)]
pub struct OutputReport {
    pub name: &'static str,
    pub counters: OutputSnapshot,
    /// The first write or flush error.
    pub error: Option<String>,
    /// The writer did not finish within the grace period (a sink that stopped reading): its
    /// queued items are counted `at_exit`, and its last buffered bytes may not have been written.
    pub unfinished: bool,
}

impl OutputReport {
    /// The exit-summary lines of this output.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let mut s = format!(
            "mirror-agent: {} output\n  written {}\n",
            self.name, c.written
        );
        for (reason, n) in c.drops_by_reason() {
            s.push_str(&format!("  dropped.{reason} {n}\n"));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("  error {e}\n"));
        }
        if self.unfinished {
            s.push_str("  unfinished: the sink stopped taking data; the last bytes may be lost\n");
        }
        s
    }
}

/// An item and what it costs in bytes.
type Msg<T> = (T, usize);

/// The submitting side of one output.
pub struct OutputQueue<T: Send + 'static> {
    name: &'static str,
    tx: Option<SyncSender<Msg<T>>>,
    counters: Arc<Counters>,
    limits: QueueLimits,
    done: Receiver<()>,
}

impl<T: Send + 'static> OutputQueue<T> {
    /// Starts the thread that runs `writer`. `name` names the thread, the metrics attribute and
    /// the summary block (`record`, `pcap`).
    pub fn start<W>(name: &'static str, writer: W, limits: QueueLimits) -> std::io::Result<Self>
    where
        W: OutputWriter<Item = T>,
    {
        let (tx, rx) = mpsc::sync_channel(limits.items.max(1));
        let (done_tx, done) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name(format!("mirror-out-{name}"))
            .spawn(move || {
                yield_cpu_to_capture();
                drive(writer, rx, &c);
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            name,
            tx: Some(tx),
            counters,
            limits,
            done,
        })
    }

    /// Queues `item` (`bytes` is what it costs in memory) or drops it, counted. Never blocks.
    pub fn submit(&self, item: T, bytes: usize) {
        self.submit_with(bytes, || item);
    }

    /// [`Self::submit`] of an item made only when there is room for it: an output that must
    /// copy what it keeps (`--write-pcap` copies each segment out of the ring) copies nothing
    /// it then drops.
    pub fn submit_with(&self, bytes: usize, make: impl FnOnce() -> T) {
        let c = &self.counters;
        c.submitted.fetch_add(1, Ordering::Relaxed);
        // An item larger than the whole bound is still taken into an empty queue: otherwise
        // such items could never be written at all.
        let queued = c.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + bytes > self.limits.bytes {
            c.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(tx) = &self.tx else { return };
        // Counted before the send so the writer never sees a count go below zero.
        c.queued.fetch_add(1, Ordering::Relaxed);
        c.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        match tx.try_send((make(), bytes)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                c.queued.fetch_sub(1, Ordering::Relaxed);
                c.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                c.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How full the queue is, 0 to 1 (the larger of items and bytes): file sources pace on it.
    pub fn fill(&self) -> f64 {
        let c = &self.counters;
        let items = c.queued.load(Ordering::Relaxed) as f64 / self.limits.items.max(1) as f64;
        let bytes = c.queued_bytes.load(Ordering::Relaxed) as f64 / self.limits.bytes.max(1) as f64;
        items.max(bytes)
    }

    /// A handle on the counters for the telemetry.
    pub fn stats(&self) -> OutputStats {
        OutputStats {
            name: self.name,
            counters: self.counters.clone(),
        }
    }

    /// The output's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Closes the queue and waits up to `grace` for the writer to write what is queued and
    /// flush. A writer stuck on a sink that stopped reading is left behind (the process exits
    /// soon after) and what it still held is counted `at_exit`.
    pub fn finish(mut self, grace: Duration) -> OutputReport {
        drop(self.tx.take());
        let unfinished = self.done.recv_timeout(grace).is_err();
        let c = &self.counters;
        if unfinished {
            c.abandoned.store(true, Ordering::SeqCst);
            let left = c.queued.swap(0, Ordering::Relaxed);
            c.queued_bytes.store(0, Ordering::Relaxed);
            c.at_exit.fetch_add(left as u64, Ordering::Relaxed);
        }
        OutputReport {
            name: self.name,
            counters: self.stats().snapshot(),
            error: lock(&c.error).clone(),
            unfinished,
        }
    }
}

/// Puts this thread in the `SCHED_IDLE` class: it runs only when nothing else on its CPU wants
/// to. On a core shared with the capture thread (a busy node, or the agent pinned to one CPU) the
/// scheduler then always gives capture the CPU first, so a recording that cannot keep up drops
/// its own records (counted) instead of making the ring buffer overflow; on a core with room it
/// runs as fast as any thread. Needs no privilege (a thread may always lower its own class); a
/// failure leaves the default, logged.
fn yield_cpu_to_capture() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower an output thread's priority"
        );
    }
}

/// The writer thread: writes until the queue is closed and empty, flushing whenever it runs dry.
fn drive<W: OutputWriter>(mut writer: W, rx: Receiver<Msg<W::Item>>, c: &Counters) {
    let mut failed = false;
    let fail = |e: std::io::Error, failed: &mut bool| {
        *failed = true;
        lock(&c.error).get_or_insert_with(|| e.to_string());
    };
    while let Ok((item, bytes)) = rx.recv() {
        let result = if failed {
            Err(None)
        } else {
            writer.write(item).map_err(Some)
        };
        if c.abandoned.load(Ordering::SeqCst) {
            // `finish` gave up and counted this item and the rest `at_exit`: count nothing more.
            continue;
        }
        match result {
            Ok(()) => c.written.fetch_add(1, Ordering::Relaxed),
            Err(first) => {
                if let Some(e) = first {
                    fail(e, &mut failed);
                }
                c.write_error.fetch_add(1, Ordering::Relaxed)
            }
        };
        // After the item is accounted for: `finish` reads `queued` to count what is left.
        let left = c.queued.fetch_sub(1, Ordering::Relaxed) - 1;
        c.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        // Idle: push the buffered lines out, so a reader of the file or pipe sees them now.
        if left == 0
            && !failed
            && let Err(e) = writer.flush()
        {
            fail(e, &mut failed);
        }
    }
    if !failed && let Err(e) = writer.finish() {
        fail(e, &mut failed);
    }
}

#[cfg(test)]
mod tests;
