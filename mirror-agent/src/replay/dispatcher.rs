//! One mirror's bounded queue and the task that drains it into the connection pool.
//!
//! Owns isolation and ordering. The capture side only ever calls [`Dispatcher::offer`], which
//! never waits: a full queue is a counted drop. `max_connections` workers each own at most one
//! connection and send one batch at a time under the per-request timeout, so a slow or dead
//! mirror backs up only its own queue.
//!
//! Ordering: the queue keeps one FIFO per client connection (flow), and a flow has at most one
//! batch in flight. So the mirror receives a client connection's requests in the client's order,
//! and a request is written only after the previous one of its flow was answered, or right
//! behind it on the same connection when both may be pipelined (see [`pipeline`]): a POST and
//! the GET that follows it reach the mirror in the order the primary saw them. Flows with copies
//! waiting take turns for the next free worker, so a slow request holds up only its own flow.
//! With `--ordering none` each copy is a line of its own (see [`Job::line`]).
//!
//! The bound is shared by all flows, in copies and in bytes: copies share the request's
//! `Bytes`, but a queue of 4096 ten-MiB uploads would still pin 40 GiB.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::pipeline;
use super::pool::{Outgoing, Pool};
use super::stats::{DropReason, MirrorStats, Outcome, Ticket};
use crate::http::response::ResponseCapture;

/// A copy waiting for, or being sent to, a mirror.
pub struct Job {
    pub out: Outgoing,
    pub ticket: Ticket,
    /// The queue line the copy waits in, behind the earlier copies of the same line: the
    /// client connection's flow id (ordered), or a number of its own.
    pub line: u64,
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

/// The copies of one client connection waiting for this mirror.
#[derive(Default)]
struct FlowQueue {
    jobs: VecDeque<Job>,
    /// A worker is sending a batch of this flow: the next one waits for its outcome.
    busy: bool,
}

#[derive(Default)]
struct QueueState {
    /// Flows with copies waiting or a batch in flight (an entry leaves when neither holds).
    flows: HashMap<u64, FlowQueue>,
    /// Flows with copies waiting and no batch in flight, in the order they became ready.
    ready: VecDeque<u64>,
    /// The workers are gone (drained or aborted): offers are shutdown drops.
    closed: bool,
}

/// The per-flow queues and the bound they share.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a flow becomes ready.
    ready: Notify,
    /// Copies and request bytes waiting (not yet taken by a worker).
    len: AtomicUsize,
    bytes: AtomicU64,
    max_len: usize,
    max_bytes: u64,
}

impl Queue {
    /// Counts copies leaving the queue (taken by a worker or abandoned).
    fn release(&self, copies: usize, bytes: usize) {
        self.len.fetch_sub(copies, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Closes the queue and drops what it holds: each ticket resolves as a shutdown drop.
    fn abandon(&self) {
        let flows = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            st.closed = true;
            st.ready.clear();
            std::mem::take(&mut st.flows)
        };
        for flow in flows.into_values() {
            let bytes = flow.jobs.iter().map(|j| j.out.bytes.len()).sum();
            self.release(flow.jobs.len(), bytes);
        }
    }

    /// Takes the next ready flow's batch into `batch` and marks the flow busy; `None` when no
    /// flow is ready.
    fn take(&self, batch: &mut VecDeque<Job>, conn: Option<&super::pool::Conn>) -> Option<u64> {
        let mut st = self.state.lock().ok()?;
        let st = &mut *st;
        while let Some(id) = st.ready.pop_front() {
            let Some(flow) = st.flows.get_mut(&id) else {
                continue;
            };
            if flow.busy || flow.jobs.is_empty() {
                continue;
            }
            flow.busy = true;
            take_batch(&mut flow.jobs, batch, conn);
            return Some(id);
        }
        None
    }

    /// The batch of flow `id` is done: the flow's next copies become ready, or it is forgotten.
    fn done(&self, id: u64) {
        let became_ready = {
            let Ok(mut guard) = self.state.lock() else {
                return;
            };
            let st = &mut *guard;
            let Some(flow) = st.flows.get_mut(&id) else {
                return;
            };
            flow.busy = false;
            if flow.jobs.is_empty() {
                st.flows.remove(&id);
                false
            } else {
                st.ready.push_back(id);
                true
            }
        };
        if became_ready {
            self.ready.notify_one();
        }
    }
}

/// The producer side of one mirror.
pub struct Dispatcher {
    queue: Arc<Queue>,
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
    /// Starts the drain task (`max_connections` workers) on the current tokio runtime.
    pub fn start(
        pool: Pool,
        queue_size: usize,
        max_queue_bytes: u64,
        timeout: Duration,
        phase: watch::Receiver<Phase>,
        telemetry: Option<Telemetry>,
    ) -> Self {
        let stats = pool.stats_handle();
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Notify::new(),
            len: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            max_len: queue_size.max(1),
            max_bytes: max_queue_bytes,
        });
        let task = tokio::spawn(drain(
            Arc::new(pool),
            queue.clone(),
            timeout,
            phase,
            telemetry.map(Arc::new),
        ));
        Self {
            queue,
            stats,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues `job` behind the earlier copies of its flow without waiting, or resolves it as
    /// dropped (counted) and returns `false`.
    pub fn offer(&self, job: Job) -> bool {
        let q = &self.queue;
        if q.len.fetch_add(1, Ordering::Relaxed) >= q.max_len {
            q.len.fetch_sub(1, Ordering::Relaxed);
            job.resolve(Outcome::Dropped(DropReason::QueueFull));
            return false;
        }
        let len = job.out.bytes.len() as u64;
        let before = q.bytes.fetch_add(len, Ordering::Relaxed);
        // Over the byte bound the copy is dropped, unless the queue is empty: a single request
        // larger than the bound must still be sendable.
        if before > 0 && before + len > q.max_bytes {
            q.release(1, len as usize);
            job.resolve(Outcome::Dropped(DropReason::QueueFull));
            return false;
        }
        let id = job.line;
        let mut st = match q.state.lock() {
            Ok(st) if !st.closed => st,
            _ => {
                q.release(1, len as usize);
                job.resolve(Outcome::Dropped(DropReason::Shutdown));
                return false;
            }
        };
        let flow = st.flows.entry(id).or_default();
        flow.jobs.push_back(job);
        let became_ready = !flow.busy && flow.jobs.len() == 1;
        if became_ready {
            st.ready.push_back(id);
        }
        drop(st);
        if became_ready {
            // Stores a permit when no worker is waiting yet: the flow cannot be missed.
            q.ready.notify_one();
        }
        true
    }

    /// Share of the queue in use, 0 to 1.
    pub fn queue_fill(&self) -> f64 {
        self.queue.len.load(Ordering::Relaxed) as f64 / self.queue.max_len as f64
    }

    /// Waits for the drain task to end (after a `Drain` or `Abort` phase).
    pub async fn join(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Runs `max_connections` workers until the queue is drained (`Drain`) or `Abort`.
async fn drain(
    pool: Arc<Pool>,
    queue: Arc<Queue>,
    timeout: Duration,
    phase: watch::Receiver<Phase>,
    telemetry: Option<Arc<Telemetry>>,
) {
    let mut workers = JoinSet::new();
    for _ in 0..pool.max_connections() {
        workers.spawn(worker(
            pool.clone(),
            queue.clone(),
            timeout,
            phase.clone(),
            telemetry.clone(),
        ));
    }
    while workers.join_next().await.is_some() {}
    // After an abort (or a copy offered as the last worker left): shutdown drops.
    queue.abandon();
}

/// One connection's worth of sending: takes the next ready flow's batch, sends it on its own
/// connection under the per-request timeout, repeats. Workers replace a task per request: no
/// spawn, permit or join per copy, and a connection stays with one worker.
async fn worker(
    pool: Arc<Pool>,
    queue: Arc<Queue>,
    timeout: Duration,
    mut phase: watch::Receiver<Phase>,
    telemetry: Option<Arc<Telemetry>>,
) {
    let mut conn = None;
    let mut batch = VecDeque::with_capacity(pipeline::MAX_BATCH);
    loop {
        let current = *phase.borrow_and_update();
        if current == Phase::Abort {
            return;
        }
        let Some(flow) = queue.take(&mut batch, conn.as_ref()) else {
            if current == Phase::Drain {
                // Nothing ready: flows still in flight are finished by their own workers.
                return;
            }
            tokio::select! {
                biased;
                // A dropped sender (replayer gone without shutdown) is an abort.
                changed = phase.changed() => if changed.is_err() { return },
                () = queue.ready.notified() => {}
            }
            continue;
        };
        let bytes = batch.iter().map(|j: &Job| j.out.bytes.len()).sum();
        queue.release(batch.len(), bytes);
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
        queue.done(flow);
    }
}

/// Moves the next batch of a flow: its first copy, and the copies queued behind it while they
/// may be pipelined on this connection (see [`pipeline::may_pipeline`]), within the batch
/// bounds. The flow keeps the rest in order.
fn take_batch(
    jobs: &mut VecDeque<Job>,
    batch: &mut VecDeque<Job>,
    conn: Option<&super::pool::Conn>,
) {
    let Some(first) = jobs.pop_front() else {
        return;
    };
    let mut bytes = first.out.bytes.len();
    let mut more = pipeline::may_pipeline(conn) && pipeline::pipelinable(&first);
    batch.push_back(first);
    while more && batch.len() < pipeline::MAX_BATCH && bytes < pipeline::MAX_BATCH_BYTES {
        let Some(job) = jobs.pop_front() else { break };
        bytes += job.out.bytes.len();
        more = pipeline::pipelinable(&job);
        batch.push_back(job);
    }
}
