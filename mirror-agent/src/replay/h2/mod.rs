//! Copies to a mirror over HTTP/2 (`protocol=h2`, or `auto` for requests captured as HTTP/2
//! streams): h2c with prior knowledge, or TLS with ALPN `h2` for `https://` mirrors.
//!
//! Owns one mirror's small set of HTTP/2 connections and the exchange of one copy on them.
//! The `h2` crate does the protocol: it multiplexes streams, honours the mirror's SETTINGS
//! (streams beyond the mirror's concurrency limit wait inside the connection, frame sizes,
//! flow-control windows), and ends a connection on GOAWAY. Used directly rather than through
//! hyper's client, which adds a task hop and a body-pipe task per request (a third of the
//! HTTP/2 replay's CPU in `bench h2` profiles); a copy is whole in memory, so the body goes
//! to the stream in one `send_data` and needs no pipe. Connecting (bound source address, the
//! loop-exclusion hooks, TLS, backoff) is the HTTP/1.1 [`Pool`]'s.
//!
//! Isolation is the dispatcher's, as for HTTP/1.1: its workers each carry one copy at a time
//! (so a mirror has at most [`STREAMS_PER_CONNECTION_SLOT`] × `max_connections` streams open),
//! under the per-request timeout (dropping the exchange resets the stream), from the mirror's
//! own bounded queue.
//!
//! A copy is translated from its HTTP/1.1 bytes ([`translate`]), sent, and its answer read to
//! the end and discarded: status, `grpc-status` (trailers, or the headers of a trailers-only
//! answer) and latency are measured, and the head and a body prefix kept for the comparison
//! when it asks. A copy counts as sent once its last frame is handed to the connection (an
//! HTTP/1.1 copy: once its last byte is written). A copy the connection never started (the
//! connection was closing: GOAWAY, or closed while the copy waited), or whose stream the
//! mirror refused (REFUSED_STREAM), is retried once on a fresh connection; nothing the mirror
//! may have processed is sent twice.

pub mod translate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::http::uri::Scheme;
use tokio::sync::Mutex;

use super::exchange::Batch;
use super::job::Tell;
use super::observer::ReplayObserver;
use super::pool::Pool;
use super::stats::{ErrorKind, Outcome};
use crate::http::response::ResponseSample;
use translate::H2Copy;

/// Most HTTP/2 connections per mirror: streams are multiplexed on them, so a few carry what
/// dozens of HTTP/1.1 connections would (one busy connection is served by one mirror thread
/// in many servers, hence more than one).
pub const MAX_H2_CONNECTIONS: usize = 4;

/// Streams in flight per `--max-connections`: an HTTP/2 mirror's copies share at most
/// [`MAX_H2_CONNECTIONS`] connections, so what bounds them is streams, not connections; 4 per
/// connection slot keeps the default (32 slots, 128 streams over 4 connections) within the
/// 100 concurrent streams servers commonly allow per connection.
pub const STREAMS_PER_CONNECTION_SLOT: usize = 4;

/// Receive windows offered to the mirror (as hyper's client offers): answers are read and
/// discarded at once, so large windows only spare WINDOW_UPDATE round trips.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// One open connection: the handle that opens streams on it, and whether its driver ended.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One mirror's HTTP/2 connections.
pub struct H2Pool {
    pool: Pool,
    scheme: Scheme,
    /// `host:port` of the mirror: the `:authority` of a copy without a Host.
    authority: String,
    /// Keep each answer's head and this many body bytes for the observer.
    sample: Option<usize>,
    conns: Vec<std::sync::Mutex<Option<Conn>>>,
    /// Held while a slot's connection is being opened.
    connecting: Vec<Mutex<()>>,
    next: AtomicUsize,
}

impl H2Pool {
    /// `pool` connects (its TLS client, if any, must offer ALPN `h2`).
    pub fn new(pool: Pool, authority: String, tls: bool, sample: Option<usize>) -> Self {
        let n = pool.max_connections().min(MAX_H2_CONNECTIONS);
        Self {
            pool,
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            sample,
            conns: (0..n).map(|_| std::sync::Mutex::new(None)).collect(),
            connecting: (0..n).map(|_| Mutex::new(())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Most copies in flight at once (the dispatcher's workers).
    pub fn max_streams(&self) -> usize {
        self.pool.max_connections() * STREAMS_PER_CONNECTION_SLOT
    }

    /// Sends every copy of `batch` (the dispatcher gives one at a time) and resolves it.
    /// Copies left in `batch` when the caller drops this future are the caller's to resolve.
    pub async fn run<O: ReplayObserver>(&self, tell: &Tell<O>, batch: &mut Batch<O::Flight>) {
        while !batch.is_empty() {
            // Counted once, even when a retry sends it again.
            let mut sent = false;
            let mut retried = false;
            loop {
                let copy =
                    match translate::to_h2(&batch[0].copy.bytes, &self.scheme, &self.authority) {
                        Ok(c) => c,
                        Err(why) => {
                            tracing::debug!(mirror = %self.pool.stats().name, ?why,
                            "copy cannot go over HTTP/2");
                            let job = batch.pop_front().expect("front");
                            tell.resolve(job, Outcome::Error(ErrorKind::Untranslatable));
                            break;
                        }
                    };
                let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
                let conn = match self.conn(slot).await {
                    Ok(Some(c)) => c,
                    Ok(None) => return tell.unreachable(batch, None),
                    Err(kind) => return tell.unreachable(batch, Some(kind)),
                };
                match self.exchange(tell, batch, &conn, copy, &mut sent).await {
                    Ok(()) => break,
                    Err(NotProcessed { closing }) if !retried => {
                        retried = true;
                        self.pool.stats().on_retry();
                        if closing || conn.is_closed() {
                            self.forget(slot, &conn);
                        }
                    }
                    Err(NotProcessed { .. }) => {
                        let job = batch.pop_front().expect("front");
                        tell.resolve(job, Outcome::Error(ErrorKind::Io));
                        break;
                    }
                }
            }
        }
    }

    /// One try of the front copy on `conn`. `Err(NotProcessed)`: the mirror cannot have
    /// acted on it, so it may go again on another connection.
    async fn exchange<O: ReplayObserver>(
        &self,
        tell: &Tell<O>,
        batch: &mut Batch<O::Flight>,
        conn: &Conn,
        copy: H2Copy,
        sent: &mut bool,
    ) -> Result<(), NotProcessed> {
        let start = Instant::now();
        // Ready once the connection can open a stream (it is not closing); a stream over the
        // mirror's concurrency limit then waits inside the connection.
        let Ok(mut send) = conn.send.clone().ready().await else {
            return Err(NotProcessed { closing: true });
        };
        let H2Copy {
            head,
            body,
            trailers,
        } = copy;
        let head_ends = body.is_empty() && trailers.is_none();
        // An error here opened no stream (the connection is closing: GOAWAY): the mirror has
        // seen nothing of this copy.
        let (response, mut stream) = send
            .send_request(head, head_ends)
            .map_err(|_| NotProcessed { closing: true })?;
        // The body and trailers are queued behind the head; the connection sends them as the
        // mirror's windows allow (bounded: the copy is already in memory, shared).
        let queued = if head_ends {
            Ok(())
        } else if !body.is_empty() {
            stream
                .send_data(body, trailers.is_none())
                .and_then(|()| match trailers {
                    Some(t) => stream.send_trailers(t),
                    None => Ok(()),
                })
        } else {
            stream.send_trailers(trailers.unwrap_or_default())
        };
        if let Err(e) = queued {
            // The stream was reset or the connection failed before the copy was handed over.
            tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                "HTTP/2 stream to the mirror failed while sending");
            let job = batch.pop_front().expect("front");
            tell.resolve(job, Outcome::Error(ErrorKind::Io));
            return Ok(());
        }
        if !std::mem::replace(sent, true) {
            self.pool.stats().on_sent();
        }
        let response = match response.await {
            Ok(r) => r,
            Err(e) => {
                if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return Err(NotProcessed { closing: false });
                }
                // Not a stream failed by a GOAWAY: h2 fails the streams above the GOAWAY's
                // last stream id with it, but also, when the connection then ends, streams
                // the mirror did process and answered (seen with nginx's GOAWAY after
                // `keepalive_requests`): a retry would deliver such a copy twice. Those end
                // as io errors, counted.
                tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                    "HTTP/2 stream to the mirror failed");
                let job = batch.pop_front().expect("front");
                tell.resolve(job, Outcome::Error(ErrorKind::Io));
                return Ok(());
            }
        };
        let (parts, mut body) = response.into_parts();
        let mut grpc = grpc_status(&parts.headers);
        let mut sample = self.sample.map(|_| {
            let mut head = format!("HTTP/1.1 {} \r\n", parts.status.as_u16()).into_bytes();
            append_fields(&mut head, &parts.headers);
            Box::new(ResponseSample {
                head,
                body: Vec::new(),
                body_len: 0,
                truncated: false,
            })
        });
        let limit = self.sample.unwrap_or(0);
        let mut broke = None;
        while let Some(data) = body.data().await {
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            };
            // Read and discarded: the window it took is given back at once.
            let _ = body.flow_control().release_capacity(data.len());
            if let Some(s) = sample.as_mut() {
                s.body_len += data.len() as u64;
                let room = limit.saturating_sub(s.body.len());
                s.body.extend_from_slice(&data[..data.len().min(room)]);
                s.truncated |= data.len() > room;
            }
        }
        if broke.is_none() {
            match body.trailers().await {
                Ok(Some(trailers)) => {
                    grpc = grpc.or(grpc_status(&trailers));
                    if let Some(s) = sample.as_mut() {
                        append_fields(&mut s.head, &trailers);
                    }
                }
                Ok(None) => {}
                Err(e) => broke = Some(e),
            }
        }
        if let Some(e) = broke {
            tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                "HTTP/2 answer from the mirror broke off");
            let job = batch.pop_front().expect("front");
            tell.resolve(job, Outcome::Error(ErrorKind::Io));
            return Ok(());
        }
        if let Some(s) = sample.as_mut() {
            s.head.extend_from_slice(b"\r\n");
        }
        if let Some(code) = grpc {
            self.pool.stats().on_grpc_status(code);
        }
        let job = batch.pop_front().expect("front");
        tell.resolve_with(
            job,
            Outcome::Answered {
                status: parts.status.as_u16(),
                latency: start.elapsed(),
                grpc_status: grpc,
            },
            sample,
        );
        Ok(())
    }

    /// The connection in `slot`, opened (under the pool's backoff) when it has none or it
    /// closed. `Ok(None)`: the mirror is in backoff.
    async fn conn(&self, slot: usize) -> Result<Option<Conn>, ErrorKind> {
        if let Some(c) = self.open_conn(slot) {
            return Ok(Some(c));
        }
        // One worker connects a slot at a time; the others wait for its connection.
        let _connecting = self.connecting[slot].lock().await;
        if let Some(c) = self.open_conn(slot) {
            return Ok(Some(c));
        }
        // Boxed: the connect and handshake futures are large and rarely run; inline, they
        // would size (and be moved with) every copy's exchange.
        let Some(conn) = Box::pin(self.connect()).await? else {
            return Ok(None);
        };
        *crate::sync::lock(&self.conns[slot]) = Some(conn.clone());
        Ok(Some(conn))
    }

    /// The connection in `slot`, if it is open.
    fn open_conn(&self, slot: usize) -> Option<Conn> {
        crate::sync::lock(&self.conns[slot])
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// A new HTTP/2 connection (under the pool's backoff: `Ok(None)` while in it), its driver
    /// spawned.
    async fn connect(&self) -> Result<Option<Conn>, ErrorKind> {
        let Some(opened) = self.pool.open_or_backoff().await? else {
            return Ok(None);
        };
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(opened.stream)
            .await
            .map_err(|e| {
                tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                    "HTTP/2 handshake with the mirror failed");
                ErrorKind::Connect
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let close = opened.close;
        let name = self.pool.stats().name.clone();
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(mirror = %name, error = %e, "HTTP/2 connection to the mirror ended");
            }
            ended.store(true, Ordering::Relaxed);
            // The loop-exclusion hook runs once the socket is closed.
            drop(close);
        });
        Ok(Some(Conn { send, closed }))
    }

    /// Forgets the connection in `slot` if it is still `used` (closed, or closing: it takes
    /// no new streams), so the next copy for the slot opens a new one. Streams in flight on it
    /// go on: its driver runs until they end.
    fn forget(&self, slot: usize, used: &Conn) {
        let mut conn = crate::sync::lock(&self.conns[slot]);
        if conn
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.closed, &used.closed))
        {
            *conn = None;
        }
    }
}

/// A copy the mirror cannot have acted on: the connection never started it (`closing`: the
/// connection takes no new streams), or the mirror refused its stream (RFC 9113 8.7:
/// REFUSED_STREAM).
struct NotProcessed {
    closing: bool,
}

/// `grpc-status` of a header or trailer section.
fn grpc_status(fields: &hyper::http::HeaderMap) -> Option<u32> {
    fields
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Fields as HTTP/1.1 lines (`name: value\r\n`), for the comparison's response sample.
fn append_fields(out: &mut Vec<u8>, fields: &hyper::http::HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}
