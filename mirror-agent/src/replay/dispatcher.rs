//! One mirror's bounded queue and the task that drains it into the connection pool.
//!
//! Owns isolation: the capture side only ever calls [`Dispatcher::offer`], a `try_send` that
//! never waits; a full queue is a counted drop. The drain task runs `max_connections` workers,
//! each owning at most one connection and sending one batch (one copy, or several pipelined
//! when the queue backs up; see [`pipeline`]) at a time under the per-request timeout, so a slow
//! or dead mirror backs up only its own queue. The queue is bounded in copies and in bytes: copies share the request's
//! `Bytes`, but a queue of 4096 ten-MiB uploads would still pin 40 GiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::VecDeque;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::pipeline;
use super::pool::{Outgoing, Pool};
use super::stats::{DropReason, MirrorStats, Outcome, Ticket};
use crate::http::response::ResponseCapture;

/// A copy waiting for, or being sent to, a mirror.
pub struct Job {
    pub out: Outgoing,
    pub ticket: Ticket,
    /// `(flow_id, seq_in_flow)` of the captured request, for the primary/mirror comparison.
    pub key: (u64, u64),
    /// Set when a worker takes the copy: its span and duration histogram, and where its outcome
    /// goes for the comparison.
    pub flight: Option<(crate::telemetry::InFlight, Arc<Telemetry>)>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("out", &self.out)
            .field("key", &self.key)
            .field("traced", &self.flight.is_some())
            .finish()
    }
}

impl Job {
    /// Every outcome of a copy goes through here: telemetry first, then the counters.
    pub fn resolve(self, outcome: Outcome) {
        self.resolve_with(outcome, None);
    }

    /// [`Self::resolve`] with the mirror's captured response (head and body prefix), which
    /// the pool keeps only for the comparison (`--compare`).
    pub fn resolve_with(self, outcome: Outcome, capture: Option<Box<ResponseCapture>>) {
        if let Some((flight, telemetry)) = self.flight {
            flight.finish(&outcome);
            if let Some((hub, index)) = &telemetry.compare {
                hub.mirror_with(self.key, *index, &outcome, capture);
            }
        }
        self.ticket.resolve(outcome);
    }

    /// Starts the copy's span; `traceparent` is rewritten per `--otlp-traceparent` (only its
    /// value bytes change).
    fn start_flight(&mut self, telemetry: &Arc<Telemetry>) {
        let t = telemetry;
        let (flight, bytes) = t
            .recorder
            .start(&t.mirror, &t.host, Some(t.port), &self.out.bytes);
        self.out.bytes = bytes;
        self.flight = Some((flight, telemetry.clone()));
    }
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

/// The producer side of one mirror.
pub struct Dispatcher {
    tx: mpsc::Sender<Job>,
    /// Request bytes waiting in the queue, and their bound.
    queued_bytes: Arc<AtomicU64>,
    max_queue_bytes: u64,
    pub stats: Arc<MirrorStats>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
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
    /// Queues `job`, or resolves it as dropped (counted) and returns `false`.
    pub fn offer(&self, job: Job) -> bool {
        let len = job.out.bytes.len() as u64;
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        // Over the byte bound the copy is dropped, unless the queue is empty: a single request
        // larger than the bound must still be sendable.
        if before > 0 && before + len > self.max_queue_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            job.resolve(Outcome::Dropped(DropReason::QueueFull));
            return false;
        }
        let result = self.tx.try_send(job);
        if result.is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        match result {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(job)) => {
                job.resolve(Outcome::Dropped(DropReason::QueueFull));
                false
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                job.resolve(Outcome::Dropped(DropReason::Shutdown));
                false
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

/// Queue depth from which workers pipeline: below it every queued copy can have a connection of
/// its own; above it the queue is backing up and the alternative to pipelining is shedding.
const PIPELINE_BACKLOG: usize = 16;

/// Runs `max_connections` workers until the queue is closed and empty (`Drain`) or `Abort`.
async fn drain(
    pool: Arc<Pool>,
    rx: mpsc::Receiver<Job>,
    queued_bytes: Arc<AtomicU64>,
    timeout: Duration,
    phase: watch::Receiver<Phase>,
    telemetry: Option<Arc<Telemetry>>,
) {
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = JoinSet::new();
    for _ in 0..pool.max_connections() {
        workers.spawn(worker(
            pool.clone(),
            rx.clone(),
            queued_bytes.clone(),
            timeout,
            phase.clone(),
            telemetry.clone(),
        ));
    }
    while workers.join_next().await.is_some() {}
    // Copies still queued (after an abort) drop their tickets with `rx`: shutdown drops.
}

/// One connection's worth of sending: takes a batch from the queue, sends it on its own
/// connection under the per-request timeout, repeats. Workers replace a task per request: no
/// spawn, permit or join per copy, and a connection stays with one worker.
async fn worker(
    pool: Arc<Pool>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    queued_bytes: Arc<AtomicU64>,
    timeout: Duration,
    mut phase: watch::Receiver<Phase>,
    telemetry: Option<Arc<Telemetry>>,
) {
    let mut conn = None;
    let mut batch = VecDeque::with_capacity(pipeline::MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            match *phase.borrow() {
                Phase::Abort => return,
                // No new copies; what is already queued is still sent.
                Phase::Drain => rx.close(),
                Phase::Running => {}
            }
            let job = tokio::select! {
                biased;
                changed = phase.changed() => {
                    // A dropped sender (replayer gone without shutdown) is an abort.
                    if changed.is_err() || *phase.borrow() == Phase::Abort { return; }
                    continue;
                }
                job = rx.recv() => match job { Some(job) => job, None => return },
            };
            let mut bytes = job.out.bytes.len();
            let mut more = pipeline::may_pipeline(conn.as_ref()) && pipeline::pipelinable(&job);
            batch.push_back(job);
            if more && rx.len() >= PIPELINE_BACKLOG {
                while more && batch.len() < pipeline::MAX_BATCH && bytes < pipeline::MAX_BATCH_BYTES
                {
                    let Ok(job) = rx.try_recv() else { break };
                    bytes += job.out.bytes.len();
                    more = pipeline::pipelinable(&job);
                    batch.push_back(job);
                }
            }
            queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        }
        if let Some(t) = &telemetry {
            // Copies retried from an earlier batch already have their span.
            for job in batch.iter_mut().filter(|j| j.flight.is_none()) {
                job.start_flight(t);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let finished = tokio::select! {
            biased;
            // Aborted: the copies in the batch drop their tickets unresolved (shutdown drops).
            _ = phase.wait_for(|p| *p == Phase::Abort) => return,
            r = tokio::time::timeout_at(deadline, pipeline::run(&pool, &mut conn, &mut batch)) => r.is_ok(),
        };
        if !finished {
            // The connection is mid-exchange: never reused.
            conn = None;
            for job in batch.drain(..) {
                job.resolve(Outcome::Timeout);
            }
        }
    }
}
