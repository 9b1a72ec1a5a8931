//! One batch of copies on one mirror connection: write, then read the responses in order.
//!
//! Owns the exchange on a connection that [`super::dispatcher`]'s workers keep between batches.
//! A batch is one request, or, when copies of one client connection wait behind each other,
//! several of them pipelined on the connection (RFC 9112 9.3.2): written in one go, answered in
//! order, each response resolving
//! its own copy with its own latency. Pipelining saves a round trip, a wake-up and two syscalls
//! per request, which is what lets one mirror connection keep up with a busy primary on a small
//! node. Only requests that are safe to pipeline start or continue a batch (see [`pipelinable`]),
//! and only on a connection that answered its previous batch promptly (see [`PROMPT`]): a fresh
//! connection, or one to a slow mirror, carries one request at a time.
//!
//! Failures: a copy whose response had begun gets the error; copies still unanswered when the
//! connection closes at a response boundary (the keep-alive race of RFC 9112 9.3.1 on a reused
//! connection, or the server closing after an earlier pipelined response) are retried once on a
//! fresh connection, as RFC 9112 9.3.2 asks of a pipelining client, and one at a time there (it
//! forbids pipelining right after establishing the retrying connection). A response with
//! `Connection: close` ends the connection's use. A mirror that answers before the request was
//! fully written (413 to a large upload) and resets the connection still gets its answer read.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::job::{Job, Tell};
use super::observer::{MirrorCopy, ReplayObserver};
use super::pool::{Conn, Pool, StartCheck};
use super::stats::{ErrorKind, Outcome};
use crate::http::response::{ExpectedResponse, ResponseEvent};
use crate::http::{BodyFraming, Version};

/// The copies one worker sends on its connection in one go.
pub type Batch<F> = VecDeque<Job<F>>;

/// Most requests pipelined in one batch.
pub const MAX_BATCH: usize = 128;
/// Largest request that may be followed by another in the same batch.
pub const MAX_PIPELINED_REQUEST: usize = 16 * 1024;
/// Request bytes after which a batch takes no more requests.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// An idle connection unused for longer than this is checked for a close before reuse (a
/// non-blocking read); more recently used ones are written to directly, and a close found then
/// is the keep-alive race, retried.
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(100);
/// A connection pipelines only after answering its previous batch within this time: requests
/// written behind a slow response would wait in the mirror's socket buffer (and time out there)
/// instead of in our queue, and a slow or stuck mirror is not made to take more at once.
const PROMPT: Duration = Duration::from_millis(200);

/// Whether the worker may gather a pipelined batch for this connection (see [`PROMPT`]).
pub fn may_pipeline(conn: Option<&Conn>) -> bool {
    conn.is_some_and(|c| c.prompt)
}

/// Whether another request may be written after this one before its response arrived.
///
/// Not after `Connection: close` or HTTP/1.0 (the server closes after answering), not after a
/// non-idempotent method (RFC 9112 9.3.2: a retry after a close could apply it twice), and not
/// after a large body (the next request would wait behind it without need). Decided from what
/// the framer learned; the bytes are not looked at again.
pub fn pipelinable(copy: &MirrorCopy) -> bool {
    copy.head.keep_alive
        && copy.bytes.len() <= MAX_PIPELINED_REQUEST
        && copy.head.version == Version::Http11
        && matches!(
            copy.method(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        )
}

/// What the response framer must know of the copy's response.
fn expected(copy: &MirrorCopy) -> ExpectedResponse {
    ExpectedResponse {
        head: copy.method() == "HEAD",
        connect: false,
    }
}

/// Why an attempt on a connection failed.
#[derive(Debug, Clone, Copy)]
struct Failure {
    kind: ErrorKind,
    /// No byte of the front copy's response arrived: it may be retried on a new connection.
    untouched: bool,
    /// The connection had answered requests of this batch before it failed.
    answered: bool,
}

/// Sends every copy of `batch` and resolves it (answered, error or backoff drop), using and
/// keeping the connection in `slot`. Copies left in `batch` when the caller drops this future
/// (timeout, abort) are the caller's to resolve; `slot` must then be cleared.
pub async fn run<O: ReplayObserver>(
    pool: &Pool,
    tell: &Tell<O>,
    slot: &mut Option<Conn>,
    batch: &mut Batch<O::Flight>,
) {
    // Copies at the front of `batch` already counted as sent (once per copy, also on retry).
    let mut counted_sent = 0usize;
    let mut retried = false;
    // After a retry the copies go one at a time: RFC 9112 9.3.2 forbids pipelining right after
    // establishing the connection that retries a failed pipeline (the first remaining request
    // may be what made the server close, and would take the others down with it again).
    let mut one_at_a_time = false;
    while !batch.is_empty() {
        if let Some(conn) = slot
            && conn.last_used.elapsed() > IDLE_CHECK_AFTER
            && !conn.still_open()
        {
            *slot = None;
        }
        let reused = slot.is_some();
        if slot.is_none() {
            match pool.connect_or_backoff().await {
                Ok(Some(c)) => *slot = Some(c),
                Ok(None) => return tell.unreachable(batch, None),
                Err(kind) => return tell.unreachable(batch, Some(kind)),
            }
        }
        let Some(conn) = slot.as_mut() else { return };
        let start = Instant::now();
        let n = if one_at_a_time { 1 } else { batch.len() };
        match attempt(pool, tell, conn, batch, n, &mut counted_sent).await {
            Ok(reusable) => {
                conn.last_used = Instant::now();
                conn.prompt = start.elapsed() <= PROMPT;
                if !reusable {
                    *slot = None;
                }
                if one_at_a_time {
                    continue;
                }
                // `attempt` answers the whole batch when it succeeds; never carry a copy over.
                for job in batch.drain(..) {
                    tell.resolve(job, Outcome::Error(ErrorKind::BadResponse));
                }
                return;
            }
            Err(f) if one_at_a_time => {
                // Only the front copy was written. Unanswered on a reused connection (the
                // keep-alive race), it goes once more on a fresh one; otherwise it fails. The
                // rest go on a new connection either way.
                *slot = None;
                if f.untouched && reused {
                    pool.stats().on_retry();
                    continue;
                }
                if let Some(job) = batch.pop_front() {
                    counted_sent = counted_sent.saturating_sub(1);
                    tell.resolve(job, Outcome::Error(f.kind));
                }
            }
            Err(f) => {
                *slot = None;
                if f.untouched && (reused || f.answered) && !retried {
                    retried = true;
                    one_at_a_time = batch.len() > 1;
                    for _ in 0..batch.len() {
                        pool.stats().on_retry();
                    }
                    continue;
                }
                for job in batch.drain(..) {
                    tell.resolve(job, Outcome::Error(f.kind));
                }
                return;
            }
        }
    }
}

/// One attempt: writes the first `n` copies of the batch, then reads responses until each of
/// them is answered (and removed from the batch). Returns whether the connection may carry
/// another batch.
async fn attempt<O: ReplayObserver>(
    pool: &Pool,
    tell: &Tell<O>,
    conn: &mut Conn,
    batch: &mut Batch<O::Flight>,
    n: usize,
    counted_sent: &mut usize,
) -> Result<bool, Failure> {
    let start = Instant::now();
    let io_err = |untouched, answered| Failure {
        kind: ErrorKind::Io,
        untouched,
        answered,
    };
    for job in batch.iter().take(n) {
        conn.framer.expect(expected(&job.copy));
    }
    let mut unanswered = n;
    if let Err(e) = write_batch(pool, conn, batch, n, counted_sent).await {
        // A mirror may answer before the whole request arrived (413 to a large upload) and
        // close; the write then fails, but its answer is still in our receive buffer, ahead of
        // the reset: read it. Any other write error fails the attempt at once.
        if !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return Err(io_err(true, false));
        }
    }
    let mut answered = false;
    // Bytes of the front copy's response (or its 1xx) have arrived.
    let mut partial = false;
    let mut start_check = StartCheck::default();
    let mut events = std::mem::take(&mut conn.events);
    let result = loop {
        let n = match conn.stream.read(&mut conn.buf).await {
            Ok(n) => n,
            Err(e) => {
                if let Some(why) = crate::replay::tls::HandshakeFailure::refusal(&e) {
                    pool.stats().on_tls_failure(why);
                }
                break Err(io_err(!partial, answered));
            }
        };
        // One clock read per read: the responses completed by these bytes all arrived with
        // them, so they share the latency (a read per copy was ~2% of the replay's samples).
        let arrived = Instant::now();
        let latency = arrived.saturating_duration_since(start);
        let now_ns = pool.ns_at(arrived);
        if n == 0 {
            conn.framer.finish(now_ns, &mut events);
        } else {
            partial = true;
            if !start_check.feed(&conn.buf[..n]) {
                break Err(bad_response(answered));
            }
            conn.framer.push(&conn.buf[..n], now_ns, &mut events);
        }
        let mut outcome = None;
        for ev in events.drain(..) {
            match outcome {
                // Anything after the last expected response: the connection is not reused.
                Some(Ok(_)) => {
                    outcome = Some(Ok(false));
                    continue;
                }
                Some(Err(_)) => continue,
                None => {}
            }
            match ev {
                ResponseEvent::Informational(_) => {}
                ResponseEvent::Dropped { .. } => outcome = Some(Err(bad_response(answered))),
                ResponseEvent::Final(r) => {
                    let Some(job) = batch.pop_front().filter(|_| unanswered > 0) else {
                        outcome = Some(Ok(false));
                        continue;
                    };
                    unanswered -= 1;
                    *counted_sent = counted_sent.saturating_sub(1);
                    // Reuse only a cleanly delimited HTTP/1.1 response on an open connection
                    // that the server does not close (`Connection: close`); 101 turns the
                    // connection into a tunnel.
                    let reusable = n > 0
                        && job.copy.head.keep_alive
                        && r.version == Version::Http11
                        && !r.close
                        && r.status != 101
                        && r.framing != BodyFraming::CloseDelimited;
                    // `capture` is `None` unless the observer asked the pool to keep it.
                    tell.resolve_with(
                        job,
                        Outcome::Answered {
                            status: r.status,
                            latency,
                            grpc_status: None,
                        },
                        r.capture,
                    );
                    answered = true;
                    partial = false;
                    if unanswered == 0 {
                        outcome = Some(Ok(reusable));
                    } else if !reusable {
                        // The server ends the connection here; the rest were never answered.
                        outcome = Some(Err(io_err(true, true)));
                    }
                }
            }
        }
        if let Some(o) = outcome {
            break match o {
                Ok(reusable) => Ok(reusable && conn.framer.stats().in_progress() == 0),
                other => other,
            };
        }
        if n > 0 {
            // More is expected. A server without TCP_NODELAY holds its next small write (the
            // next pipelined response, or a body written after its head) until this data is
            // acknowledged (Nagle), while our delayed ACK waits up to 40 ms: acknowledge now.
            // Costs a syscall only on reads that leave the exchange unfinished.
            let _ = conn.stream.set_quickack(true);
        }
        if n == 0 {
            // Closed before every response: no byte of the front one is the keep-alive race.
            break Err(if partial {
                bad_response(answered)
            } else {
                io_err(true, answered)
            });
        }
    };
    conn.events = events;
    result
}

fn bad_response(answered: bool) -> Failure {
    Failure {
        kind: ErrorKind::BadResponse,
        untouched: false,
        answered,
    }
}

/// Writes the first `n` requests of the batch, one syscall when they fit the socket buffer,
/// and counts each copy sent once its last byte is written.
async fn write_batch<F>(
    pool: &Pool,
    conn: &mut Conn,
    batch: &Batch<F>,
    n: usize,
    counted_sent: &mut usize,
) -> io::Result<()> {
    let mut mark = |i: usize| {
        if i >= *counted_sent {
            pool.stats().on_sent();
            *counted_sent = i + 1;
        }
    };
    if n == 1 {
        conn.stream.write_all(&batch[0].copy.bytes).await?;
        mark(0);
        return Ok(());
    }
    // Small requests are copied into one buffer (a few hundred bytes each: cheaper than a
    // syscall per request, and simpler to resume than a partially written IoSlice list).
    conn.wbuf.clear();
    let mut ends = Vec::with_capacity(n);
    for job in batch.iter().take(n) {
        conn.wbuf.extend_from_slice(&job.copy.bytes);
        ends.push(conn.wbuf.len());
    }
    let mut off = 0;
    let mut next = 0;
    while off < conn.wbuf.len() {
        let n = conn.stream.write(&conn.wbuf[off..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        off += n;
        while next < ends.len() && ends[next] <= off {
            mark(next);
            next += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
