//! One mirror's bounded queue and the task that drains it into the connection pool.
//!
//! Owns isolation: the capture side only ever calls [`Dispatcher::offer`], a `try_send` that
//! never waits; a full queue is a counted drop. The drain task runs at most `max_connections`
//! exchanges at once, each under the per-request timeout, so a slow or dead mirror backs up only
//! its own queue. The queue is bounded in copies and in bytes: copies share the request's
//! `Bytes`, but a queue of 4096 ten-MiB uploads would still pin 40 GiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::pool::{Outgoing, Pool};
use super::stats::{DropReason, MirrorStats, Outcome, Ticket};

/// A copy waiting for, or being sent to, a mirror.
#[derive(Debug)]
pub struct Job {
    pub out: Outgoing,
    pub ticket: Ticket,
    /// `(flow_id, seq_in_flow)` of the captured request, for the primary/mirror comparison.
    pub key: (u64, u64),
}

/// The producer side of one mirror.
pub struct Dispatcher {
    tx: mpsc::Sender<Job>,
    /// Request bytes waiting in the queue, and their bound.
    queued_bytes: Arc<AtomicU64>,
    max_queue_bytes: u64,
    pub stats: Arc<MirrorStats>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Per-mirror telemetry: the duration histogram and span of each copy.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub recorder: crate::telemetry::MirrorRequestRecorder,
    pub mirror: String,
    pub host: String,
    pub port: u16,
    /// The comparison hub and this mirror's index in it (`--compare`).
    pub compare: Option<(crate::telemetry::compare::CompareHub, usize)>,
}

/// Stop signals shared by all dispatchers: `Drain` stops intake and sends what is queued;
/// `Abort` also abandons what is queued and in flight (counted as shutdown drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Drain,
    Abort,
}

impl Dispatcher {
    /// Starts the drain task on the current tokio runtime.
    pub fn start(
        pool: Pool,
        queue_size: usize,
        max_queue_bytes: u64,
        timeout: Duration,
        phase: watch::Receiver<Phase>,
        telemetry: Option<Telemetry>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue_size.max(1));
        let stats = pool.stats_handle();
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(drain(
            Arc::new(pool),
            rx,
            queued_bytes.clone(),
            timeout,
            phase,
            telemetry.map(Arc::new),
        ));
        Self {
            tx,
            queued_bytes,
            max_queue_bytes,
            stats,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues a copy without waiting. A full or closed queue resolves the ticket as a drop.
    pub fn offer(&self, job: Job) {
        let len = job.out.bytes.len() as u64;
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        // Over the byte bound the copy is dropped, unless the queue is empty: a single request
        // larger than the bound must still be sendable.
        if before > 0 && before + len > self.max_queue_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            job.ticket.resolve(Outcome::Dropped(DropReason::QueueFull));
            return;
        }
        let result = self.tx.try_send(job);
        if result.is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        match result {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                job.ticket.resolve(Outcome::Dropped(DropReason::QueueFull));
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                job.ticket.resolve(Outcome::Dropped(DropReason::Shutdown));
            }
        }
    }

    /// Share of the queue in use, 0 to 1.
    pub fn queue_fill(&self) -> f64 {
        let max = self.tx.max_capacity();
        (max - self.tx.capacity()) as f64 / max as f64
    }

    /// Waits for the drain task to end (after a `Drain` or `Abort` phase).
    pub async fn join(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn drain(
    pool: Arc<Pool>,
    mut rx: mpsc::Receiver<Job>,
    queued_bytes: Arc<AtomicU64>,
    timeout: Duration,
    mut phase: watch::Receiver<Phase>,
    telemetry: Option<Arc<Telemetry>>,
) {
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        if *phase.borrow() >= Phase::Drain {
            // No new copies; what is already queued is still sent.
            rx.close();
        }
        let job = tokio::select! {
            biased;
            changed = phase.changed() => {
                // A dropped sender (replayer gone without shutdown) is an abort.
                if changed.is_err() || *phase.borrow() == Phase::Abort { break; }
                continue;
            }
            job = rx.recv() => match job { Some(job) => job, None => break },
        };
        queued_bytes.fetch_sub(job.out.bytes.len() as u64, Ordering::Relaxed);
        let permit = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p == Phase::Abort) => break,
            p = pool.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let pool = pool.clone();
        let telemetry = telemetry.clone();
        running.spawn(async move {
            let _permit = permit;
            let Job {
                mut out,
                ticket,
                key,
            } = job;
            // The span starts as the copy leaves the queue; `traceparent` is rewritten per
            // `--otlp-traceparent` (only its value bytes change).
            let flight = telemetry.as_ref().map(|t| {
                let (flight, bytes) =
                    t.recorder
                        .start(&t.mirror, &t.host, Some(t.port), &out.bytes);
                out.bytes = bytes;
                flight
            });
            let outcome = match tokio::time::timeout(timeout, pool.send(&out)).await {
                Err(_) => Outcome::Timeout,
                Ok(Ok(Some(a))) => Outcome::Answered {
                    status: a.status,
                    latency: a.latency,
                },
                Ok(Ok(None)) => Outcome::Dropped(DropReason::Backoff),
                Ok(Err(kind)) => Outcome::Error(kind),
            };
            if let Some(flight) = flight {
                flight.finish(&outcome);
            }
            if let Some((hub, index)) = telemetry.as_ref().and_then(|t| t.compare.as_ref()) {
                hub.mirror(key, *index, &outcome);
            }
            ticket.resolve(outcome);
        });
    }
    // Let in-flight exchanges finish unless aborted; aborted ones drop their tickets unresolved,
    // which counts them as shutdown drops. Copies still queued are dropped with `rx` likewise.
    let aborted = tokio::select! {
        biased;
        _ = phase.wait_for(|p| *p == Phase::Abort) => true,
        _ = async { while running.join_next().await.is_some() {} } => false,
    };
    if aborted {
        running.abort_all();
        while running.join_next().await.is_some() {}
    }
    drop(rx);
}
