//! One mirror's bounded queue and the task that drains it into the connection pool.
//!
//! Owns isolation and ordering. The capture side only ever calls [`Dispatcher::offer_all`],
//! which never waits: a full queue is a counted drop. `max_connections` workers each own at
//! most one connection and send one batch at a time under the per-request timeout, so a slow or
//! dead mirror backs up only its own queue.
//!
//! Ordering: the queue keeps one FIFO per client connection (flow), and a flow has at most one
//! batch in flight. So the mirror receives a client connection's requests in the client's order,
//! and a request is written only after the previous one of its flow was answered, or right
//! behind it on the same connection when both may be pipelined (see [`exchange`]): a POST and
//! the GET that follows it reach the mirror in the order the primary saw them. Flows with copies
//! waiting take turns for the next free worker, so a slow request holds up only its own flow.
//! With `--ordering none` each copy is a line of its own (see [`Job::line`]).
//!
//! Batching across flows: when a batch may be pipelined, a worker appends the batches of more
//! ready flows behind it (each flow's own copies in its order, each flow busy until the whole
//! batch is answered), so with many client connections the copies still go out many to a write
//! and their responses come back many to a read.
//!
//! The bound is shared by all flows, in copies and in bytes: copies share the request's
//! `Bytes`, but a queue of 4096 ten-MiB uploads would still pin 40 GiB.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hashbrown::HashTable;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::exchange::{self, Batch};
use super::h2::H2Pool;
use super::job::{Job, Tell};
use super::observer::{NotSent, ReplayObserver};
use super::pool::{Conn, Pool};
use super::stats::{DropReason, MirrorStats, Outcome, Ticket};
use crate::pipeline::RequestKey;
use crate::sync::lock;

/// No copy: the end of a flow's list, or an empty one.
const NIL: u32 = u32::MAX;

/// One client connection waiting for this mirror, in a slot of [`QueueState::slots`]: its
/// copies are a list through [`QueueState::cells`], first to last.
struct FlowQueue {
    /// The flow's line ([`Job::line`]); meaningless while the slot is free.
    id: u64,
    /// The flow's first and last copy's cell ([`NIL`]: none).
    head: u32,
    tail: u32,
    /// A worker is sending a batch of this flow: the next one waits for its outcome.
    busy: bool,
    /// The slot holds a flow (it is in the index).
    live: bool,
}

impl FlowQueue {
    fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

/// A queued copy and the next copy of its flow.
struct Cell<F> {
    job: Option<Job<F>>,
    next: u32,
}

/// Flows with copies waiting or a batch in flight (a flow leaves when neither holds), in slots
/// reused through a free list. The index holds slot numbers only, compared through the slots,
/// as the pipeline's flow table does, and the ready list and the workers name flows by slot:
/// with 10000 client connections each copy's flow has left the caches since its previous copy,
/// and a map holding the queues themselves cost a cache miss at each of the three lookups of a
/// copy (offered, taken, done); now the one lookup reads a small index that stays in cache.
///
/// The copies of all flows share one vector of cells, linked per flow: its size is the most
/// copies queued at once, which the queue bound caps. A queue of its own per flow took room for
/// four copies each (the least a `VecDeque` allocates), kept in each free slot: 1.8 MB per
/// mirror at 10000 client connections, for one copy queued per flow.
struct QueueState<F> {
    index: HashTable<u32>,
    /// foldhash, seeded per process (the flow ids follow the capture).
    hasher: foldhash::fast::RandomState,
    slots: Vec<FlowQueue>,
    free: Vec<u32>,
    cells: Vec<Cell<F>>,
    /// Empty cells, the latest freed first (still in cache when the next copy comes).
    free_cells: Vec<u32>,
    /// Flows with copies waiting and no batch in flight, in the order they became ready.
    ready: VecDeque<u32>,
    /// The workers are gone (drained or aborted): offers are shutdown drops.
    closed: bool,
    /// The slots of a batch of offers (kept for its allocation).
    scratch: Vec<u32>,
}

impl<F> QueueState<F> {
    /// Prefetches what appending a copy to the flow in `slot` writes besides the slot: the
    /// flow's last cell, whose link changes (see [`Dispatcher::offer_all`]).
    fn prefetch_tail(&self, slot: u32) {
        let tail = self.slots[slot as usize].tail;
        if let Some(cell) = self.cells.get(tail as usize) {
            crate::prefetch::prefetch(cell);
        }
    }

    /// Appends `job` to the queue of its flow, in `slot` ([`Self::slot_of`]); true when it
    /// made `ready` go from empty to not empty (a worker must be woken).
    fn enqueue(&mut self, slot: u32, job: Job<F>) -> bool {
        let cell = Cell {
            job: Some(job),
            next: NIL,
        };
        let at = match self.free_cells.pop() {
            Some(at) => {
                self.cells[at as usize] = cell;
                at
            }
            None => {
                self.cells.push(cell);
                (self.cells.len() - 1) as u32
            }
        };
        let flow = &mut self.slots[slot as usize];
        let was_empty = flow.is_empty();
        match flow.tail {
            NIL => flow.head = at,
            tail => self.cells[tail as usize].next = at,
        }
        flow.tail = at;
        let became_ready = !flow.busy && was_empty;
        became_ready && {
            self.ready.push_back(slot);
            self.ready.len() == 1
        }
    }

    /// Takes the first copy of the flow in `slot`.
    fn pop(&mut self, slot: u32) -> Option<Job<F>> {
        let flow = &mut self.slots[slot as usize];
        let at = flow.head;
        let cell = self.cells.get_mut(at as usize)?;
        flow.head = cell.next;
        if flow.head == NIL {
            flow.tail = NIL;
        }
        self.free_cells.push(at);
        cell.job.take()
    }

    /// The slot of flow `id`, given one if it has none.
    fn slot_of(&mut self, id: u64) -> u32 {
        let hash = self.hasher.hash_one(id);
        let slots = &self.slots;
        if let Some(&slot) = self.index.find(hash, |&s| slots[s as usize].id == id) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(FlowQueue {
                    id,
                    head: NIL,
                    tail: NIL,
                    busy: false,
                    live: false,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let flow = &mut self.slots[slot as usize];
        (flow.id, flow.busy, flow.live) = (id, false, true);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, slot, |&s| hasher.hash_one(slots[s as usize].id));
        slot
    }

    /// Flow in `slot` leaves (nothing queued, no batch in flight): its slot is free.
    fn leave(&mut self, slot: u32) {
        let flow = &mut self.slots[slot as usize];
        debug_assert!(flow.is_empty(), "a flow leaves with nothing queued");
        flow.live = false;
        let hash = self.hasher.hash_one(flow.id);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.free.push(slot);
    }
}

impl<F> Default for QueueState<F> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            slots: Vec::new(),
            free: Vec::new(),
            cells: Vec::new(),
            free_cells: Vec::new(),
            ready: VecDeque::new(),
            closed: false,
            scratch: Vec::new(),
        }
    }
}

/// The per-flow queues and the bound they share.
struct Queue<F> {
    state: Mutex<QueueState<F>>,
    /// Signalled when a flow becomes ready.
    ready: Notify,
    /// Copies and request bytes waiting (not yet taken by a worker).
    len: AtomicUsize,
    bytes: AtomicU64,
    max_len: usize,
    max_bytes: u64,
}

impl<F> Queue<F> {
    /// Counts copies leaving the queue (taken by a worker or abandoned).
    fn release(&self, copies: usize, bytes: usize) {
        self.len.fetch_sub(copies, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Closes the queue and drops what it holds: each ticket resolves as a shutdown drop.
    fn abandon(&self) {
        let cells = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.ready.clear();
            st.index.clear();
            st.free.clear();
            st.slots.clear();
            st.free_cells.clear();
            std::mem::take(&mut st.cells)
        };
        let jobs: Vec<_> = cells.into_iter().filter_map(|c| c.job).collect();
        let bytes = jobs.iter().map(|j| j.copy.bytes.len()).sum();
        self.release(jobs.len(), bytes);
    }

    /// Takes the next ready flow's batch into `batch` and marks the flow busy; while the batch
    /// may go on being pipelined, the batches of the next ready flows follow it. Returns the
    /// flows taken into `flows`; none when no flow is ready.
    ///
    /// Waking workers: `ready` going from empty to not empty wakes one worker (or leaves it a
    /// permit); a worker that leaves flows in `ready` wakes the next. So a capture batch that
    /// makes a thousand flows ready costs a wakeup per worker batch, not one per flow (with
    /// many client connections nearly every copy makes its flow ready).
    fn take(&self, batch: &mut Batch<F>, flows: &mut Vec<u32>, conn: Option<&Conn>) {
        let more = self.take_locked(batch, flows, conn);
        if more {
            self.ready.notify_one();
        }
    }

    /// [`Self::take`] under the lock; true when flows are left in `ready`.
    fn take_locked(&self, batch: &mut Batch<F>, flows: &mut Vec<u32>, conn: Option<&Conn>) -> bool {
        let mut st = lock(&self.state);
        let st = &mut *st;
        // Request bytes in `batch`, kept as it grows (summing it per flow would cost
        // quadratic time in batches of many one-copy flows).
        let mut bytes = batch.iter().map(|j| j.copy.bytes.len()).sum();
        while let Some(slot) = st.ready.pop_front() {
            let flow = &mut st.slots[slot as usize];
            if !flow.live || flow.busy || flow.is_empty() {
                continue;
            }
            flow.busy = true;
            take_batch(st, slot, batch, &mut bytes, conn);
            flows.push(slot);
            if !room_behind(batch, bytes, conn) {
                return !st.ready.is_empty();
            }
        }
        false
    }

    /// The batch of each flow in `slots` is done: each flow's next copies become ready, or the
    /// flow leaves. One lock for the whole worker batch: with many client connections a batch
    /// holds a copy of each of up to [`exchange::MAX_BATCH`] flows.
    fn done(&self, slots: &mut Vec<u32>) {
        let became_ready = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let was_empty = st.ready.is_empty();
            for slot in slots.drain(..) {
                let Some(flow) = st.slots.get_mut(slot as usize).filter(|f| f.live) else {
                    continue;
                };
                flow.busy = false;
                if flow.is_empty() {
                    st.leave(slot);
                } else {
                    st.ready.push_back(slot);
                }
            }
            was_empty && !st.ready.is_empty()
        };
        // As in `offer_all`: only `ready` going from empty to not empty wakes a worker.
        if became_ready {
            self.ready.notify_one();
        }
    }
}

/// How a dispatcher's workers reach the mirror.
pub enum Transport {
    /// HTTP/1.1: a connection per worker, batches pipelined (see [`exchange`]).
    Http1(Pool),
    /// HTTP/2: streams on a few shared connections, one copy per worker at a time.
    Http2(H2Pool),
}

impl Transport {
    /// Copies in flight at once: one per HTTP/1.1 connection; over HTTP/2, where streams share
    /// a few connections, [`super::h2::STREAMS_PER_CONNECTION_SLOT`] per `--max-connections`.
    fn workers(&self) -> usize {
        match self {
            Self::Http1(p) => p.max_connections(),
            Self::Http2(h) => h.max_streams(),
        }
    }

    fn pool(&self) -> &Pool {
        match self {
            Self::Http1(p) => p,
            Self::Http2(h) => h.pool(),
        }
    }
}

/// The producer side of one mirror (one per protocol the mirror is reached with).
pub struct Dispatcher<O: ReplayObserver> {
    queue: Arc<Queue<O::Flight>>,
    tell: Arc<Tell<O>>,
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

impl<O: ReplayObserver> Dispatcher<O> {
    /// Starts the drain task (`max_connections` workers) on the current tokio runtime.
    pub fn start(
        transport: Transport,
        queue_size: usize,
        max_queue_bytes: u64,
        timeout: Duration,
        phase: watch::Receiver<Phase>,
        tell: Tell<O>,
    ) -> Self {
        let stats = transport.pool().stats_handle();
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            ready: Notify::new(),
            len: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            max_len: queue_size.max(1),
            max_bytes: max_queue_bytes,
        });
        let tell = Arc::new(tell);
        let task = tokio::spawn(drain(
            Arc::new(transport),
            queue.clone(),
            timeout,
            phase,
            tell.clone(),
        ));
        Self {
            queue,
            tell,
            stats,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues each of `jobs` behind the earlier copies of its flow, in their order, without
    /// waiting, or resolves it as dropped (counted); empties `jobs`. One lock of the queue for
    /// them all: with many client connections nearly every copy lands on a flow of its own,
    /// whose queue entry has left the caches: offered one at a time, each lock's release
    /// waited for the previous copy's stores to those cold lines; in one go they overlap.
    pub fn offer_all(&self, jobs: &mut Vec<Job<O::Flight>>) {
        let admitted = self.admit(jobs);
        for job in jobs.drain(admitted..) {
            self.tell
                .resolve(job, Outcome::Dropped(DropReason::QueueFull));
        }
        if jobs.is_empty() {
            return;
        }
        let mut st = lock(&self.queue.state);
        if st.closed {
            drop(st);
            // Admitted, then the queue was found closed: out of the bounds, shutdown drops.
            for job in jobs.drain(..) {
                self.queue.release(1, job.copy.bytes.len());
                self.tell
                    .resolve(job, Outcome::Dropped(DropReason::Shutdown));
            }
            return;
        }
        // Two passes: first every copy's flow is found (or given a slot) and the room its copy
        // will take is prefetched, then the copies move in. The flows' slots and queues have
        // left the caches (with many client connections each copy is on a flow of its own):
        // found one after another the misses overlap, which they cannot while each copy is
        // moved before the next flow is looked up.
        let mut slots = std::mem::take(&mut st.scratch);
        slots.extend(jobs.iter().map(|job| {
            let slot = st.slot_of(job.line);
            st.prefetch_tail(slot);
            slot
        }));
        let mut wake = false;
        for (job, &slot) in jobs.drain(..).zip(&slots) {
            wake |= st.enqueue(slot, job);
        }
        slots.clear();
        st.scratch = slots;
        drop(st);
        if wake {
            // Stores a permit when no worker is waiting yet: the flow cannot be missed.
            self.queue.ready.notify_one();
        }
    }

    /// Counts the copies of `jobs` into the queue's bounds, in order, each as if offered alone:
    /// one is refused when the queue is full in copies, or in bytes unless the queue is empty
    /// (a single request larger than the bound must still be sendable). The admitted keep their
    /// order at the front of `jobs`; returns how many. The bounds' counters move twice per
    /// batch, not twice per copy: each atomic add waited for the earlier stores to cold lines.
    /// Another thread offering at the same time sees the whole batch counted until the refused
    /// are taken back, so it may refuse more, never admit past the bounds.
    fn admit(&self, jobs: &mut [Job<O::Flight>]) -> usize {
        let q = &self.queue;
        let total: u64 = jobs.iter().map(|j| j.copy.bytes.len() as u64).sum();
        let len_before = q.len.fetch_add(jobs.len(), Ordering::Relaxed);
        let mut queued_bytes = q.bytes.fetch_add(total, Ordering::Relaxed);
        let mut room = q.max_len.saturating_sub(len_before);
        let mut admitted = 0;
        for i in 0..jobs.len() {
            let len = jobs[i].copy.bytes.len() as u64;
            let over_bytes = queued_bytes > 0 && queued_bytes + len > q.max_bytes;
            if room == 0 || over_bytes {
                continue;
            }
            room -= 1;
            queued_bytes += len;
            // Moved only when a refused one is before it.
            if admitted != i {
                jobs.swap(admitted, i);
            }
            admitted += 1;
        }
        let refused = &jobs[admitted..];
        if !refused.is_empty() {
            q.release(
                refused.len(),
                refused.iter().map(|j| j.copy.bytes.len()).sum(),
            );
        }
        admitted
    }

    /// Tells the observer of a copy that never reached the queue (not sampled, filtered, too
    /// large, shut down) and counts it: `ticket` is the copy's.
    pub fn not_sent(&self, key: RequestKey, ticket: Ticket, reason: DropReason) {
        let why = NotSent::Dropped(reason);
        self.tell.observer.not_sent(self.tell.mirror, key, why);
        ticket.resolve(Outcome::Dropped(reason));
    }

    /// Tells the observer that this mirror's sampling passed the request over.
    pub fn not_sampled(&self, key: RequestKey) {
        let why = NotSent::NotSampled;
        self.tell.observer.not_sent(self.tell.mirror, key, why);
    }

    /// Share of the queue in use, 0 to 1.
    pub fn queue_fill(&self) -> f64 {
        self.queue.len.load(Ordering::Relaxed) as f64 / self.queue.max_len as f64
    }

    /// Waits for the drain task to end (after a `Drain` or `Abort` phase).
    pub async fn join(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Runs `max_connections` workers until the queue is drained (`Drain`) or `Abort`.
async fn drain<O: ReplayObserver>(
    transport: Arc<Transport>,
    queue: Arc<Queue<O::Flight>>,
    timeout: Duration,
    phase: watch::Receiver<Phase>,
    tell: Arc<Tell<O>>,
) {
    let mut workers = JoinSet::new();
    let total = transport.workers();
    // HTTP/1.1: a task per worker (each owns its connection). HTTP/2: workers grouped into
    // tasks of `H2_WORKERS_PER_TASK`, so one wake-up of a task serves every one of its copies
    // whose answer came in the same read, and the copies it starts in one poll reach the
    // connection together (one write for their HEADERS, not one each).
    let per_task = match &*transport {
        Transport::Http1(_) => 1,
        Transport::Http2(_) => H2_WORKERS_PER_TASK,
    };
    let mut left = total;
    while left > 0 {
        let n = per_task.min(left);
        left -= n;
        let (transport, queue, phase, tell) = (
            transport.clone(),
            queue.clone(),
            phase.clone(),
            tell.clone(),
        );
        workers.spawn(async move {
            if n == 1 {
                return worker(transport, queue, timeout, phase, tell).await;
            }
            let mut group: FuturesUnordered<_> = (0..n)
                .map(|_| {
                    worker(
                        transport.clone(),
                        queue.clone(),
                        timeout,
                        phase.clone(),
                        tell.clone(),
                    )
                })
                .collect();
            while group.next().await.is_some() {}
        });
    }
    while workers.join_next().await.is_some() {}
    // After an abort (or a copy offered as the last worker left): shutdown drops.
    queue.abandon();
}

/// HTTP/2 workers that share a task (see [`drain`]).
const H2_WORKERS_PER_TASK: usize = 64;

/// One connection's worth of sending: takes the next ready flow's batch, sends it on its own
/// connection under the per-request timeout, repeats. Workers replace a task per request: no
/// spawn, permit or join per copy, and a connection stays with one worker.
async fn worker<O: ReplayObserver>(
    transport: Arc<Transport>,
    queue: Arc<Queue<O::Flight>>,
    timeout: Duration,
    mut phase: watch::Receiver<Phase>,
    tell: Arc<Tell<O>>,
) {
    let mut conn = None;
    // An HTTP/1.1 worker's batch grows to [`exchange::MAX_BATCH`] copies; an HTTP/2 worker
    // carries one copy at a time, and a mirror reached over both keeps 4 HTTP/2 workers per
    // connection slot, most of them idle: room for 128 copies each was 3 MB per mirror.
    let mut batch = match &*transport {
        Transport::Http1(_) => VecDeque::with_capacity(exchange::MAX_BATCH),
        Transport::Http2(_) => VecDeque::new(),
    };
    let mut flows = Vec::new();
    loop {
        let current = *phase.borrow_and_update();
        if current == Phase::Abort {
            return;
        }
        queue.take(&mut batch, &mut flows, conn.as_ref());
        if flows.is_empty() {
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
        }
        let bytes = batch.iter().map(|j| j.copy.bytes.len()).sum();
        queue.release(batch.len(), bytes);
        for job in batch.iter_mut() {
            tell.take(job);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let finished = tokio::select! {
            biased;
            // Aborted: the copies in the batch drop their tickets unresolved (shutdown drops).
            _ = phase.wait_for(|p| *p == Phase::Abort) => return,
            r = tokio::time::timeout_at(deadline, async {
                match &*transport {
                    Transport::Http1(pool) => exchange::run(pool, &tell, &mut conn, &mut batch).await,
                    Transport::Http2(h2) => h2.run(&tell, &mut batch).await,
                }
            }) => r.is_ok(),
        };
        if !finished {
            // The connection is mid-exchange: never reused.
            conn = None;
            for job in batch.drain(..) {
                tell.resolve(job, Outcome::Timeout);
            }
        }
        queue.done(&mut flows);
    }
}

/// Whether another flow's copies may be written behind `batch` on this connection before its
/// responses arrive: its last copy may be pipelined, and the batch bounds leave room.
fn room_behind<F>(batch: &Batch<F>, bytes: usize, conn: Option<&Conn>) -> bool {
    exchange::may_pipeline(conn)
        && batch.len() < exchange::MAX_BATCH
        && bytes < exchange::MAX_BATCH_BYTES
        && batch.back().is_some_and(|j| exchange::pipelinable(&j.copy))
}

/// Moves the next batch of a flow: its first copy, and the copies queued behind it while they
/// may be pipelined on this connection (see [`exchange::may_pipeline`]), within the batch
/// bounds (`bytes`: the request bytes in `batch`, kept up to date). The flow keeps the rest
/// in order.
fn take_batch<F>(
    st: &mut QueueState<F>,
    slot: u32,
    batch: &mut Batch<F>,
    bytes: &mut usize,
    conn: Option<&Conn>,
) {
    let Some(first) = st.pop(slot) else {
        return;
    };
    // Counted over the whole batch: other flows' copies may be in it already.
    *bytes += first.copy.bytes.len();
    let mut more = exchange::may_pipeline(conn) && exchange::pipelinable(&first.copy);
    batch.push_back(first);
    while more && batch.len() < exchange::MAX_BATCH && *bytes < exchange::MAX_BATCH_BYTES {
        let Some(job) = st.pop(slot) else { break };
        *bytes += job.copy.bytes.len();
        more = exchange::pipelinable(&job.copy);
        batch.push_back(job);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::replay::stats::{MirrorStats, Ticket};
    use crate::replay::testutil;

    fn job(stats: &Arc<MirrorStats>, line: u64) -> Job<()> {
        Job {
            copy: testutil::copy(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n"),
            ticket: Ticket::new(stats.clone()),
            line,
            flight: None,
        }
    }

    /// Queues `job` as `offer_all` does, past admission.
    fn enqueue(st: &mut QueueState<()>, job: Job<()>) -> bool {
        let slot = st.slot_of(job.line);
        st.enqueue(slot, job)
    }

    /// Takes every ready flow's copies (as a worker would) and finishes them.
    fn drain_all(st: &mut QueueState<()>) -> usize {
        let mut taken = 0;
        while let Some(slot) = st.ready.pop_front() {
            while st.pop(slot).is_some() {
                taken += 1;
            }
            st.leave(slot);
        }
        taken
    }

    /// The copies queued for flow `line`, first to last (as the cells link them).
    fn queued(st: &mut QueueState<()>, line: u64) -> Vec<u32> {
        let slot = st.slot_of(line);
        let mut at = st.slots[slot as usize].head;
        let mut cells = Vec::new();
        while at != NIL {
            cells.push(at);
            at = st.cells[at as usize].next;
        }
        cells
    }

    #[test]
    fn flows_leave_their_slots_to_later_flows_and_cells_are_reused() {
        let stats = Arc::new(MirrorStats::new("m".into(), 100.0, 1.0));
        let mut st = QueueState::<()>::default();
        // One flow with a long queue, then it leaves.
        for _ in 0..100 {
            enqueue(&mut st, job(&stats, 7));
        }
        assert_eq!((st.slots.len(), queued(&mut st, 7).len()), (1, 100));
        assert_eq!(drain_all(&mut st), 100);
        assert!(st.index.is_empty());
        // A thousand flows, one copy each, in rounds, interleaved with a flow of three: the
        // slots and cells are reused, every copy lands in its own flow's list and the index
        // holds the live flows only.
        for round in 0..3u64 {
            for line in 0..1000u64 {
                assert!(enqueue(&mut st, job(&stats, line)) == (line == 0));
                if line % 400 == 0 {
                    enqueue(&mut st, job(&stats, 5000));
                }
            }
            assert_eq!(st.index.len(), 1001);
            for line in 0..1000u64 {
                let slot = st.slot_of(line);
                assert_eq!(st.slots[slot as usize].id, line, "round {round}");
                assert_eq!(queued(&mut st, line).len(), 1);
            }
            assert_eq!(queued(&mut st, 5000).len(), 3);
            assert_eq!(drain_all(&mut st), 1003);
            assert!(st.index.is_empty());
        }
        assert_eq!(st.slots.len(), 1001, "slots reused across rounds");
        assert_eq!(
            st.cells.len(),
            1003,
            "cells: the most copies queued at once"
        );
        assert_eq!(st.free_cells.len(), st.cells.len());
    }
}
