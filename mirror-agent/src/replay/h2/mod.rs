//! Copies to a mirror over HTTP/2 (`protocol=h2`, or `auto` for requests captured as HTTP/2
//! streams): h2c with prior knowledge, or TLS with ALPN `h2` for `https://` mirrors.
//!
//! Owns one mirror's small set of HTTP/2 connections and the exchange of one copy on them.
//! hyper's HTTP/2 client (over the `h2` crate) does the protocol: it multiplexes streams,
//! honours the mirror's SETTINGS (concurrent streams beyond the mirror's limit wait inside the
//! connection, frame sizes, flow-control windows), and ends a connection on GOAWAY. Connecting
//! (bound source address, the loop-exclusion hooks, TLS, backoff) is the HTTP/1.1 [`Pool`]'s.
//!
//! Isolation is the dispatcher's, as for HTTP/1.1: its workers each carry one copy at a time
//! (so a mirror has at most [`STREAMS_PER_CONNECTION_SLOT`] × `max_connections` streams open),
//! under the per-request timeout (dropping the exchange resets the stream), from the mirror's
//! own bounded queue.
//!
//! A copy is translated from its HTTP/1.1 bytes ([`translate`]), sent, and its answer read to
//! the end and discarded: status, `grpc-status` (trailers, or the headers of a trailers-only
//! answer) and latency are measured, and the head and a body prefix kept for the comparison
//! when it asks. A copy the connection never started (the connection was closing: GOAWAY, or
//! closed while the copy waited), or whose stream the mirror refused (REFUSED_STREAM), is
//! retried once on a fresh connection; nothing the mirror may have processed is sent twice.

pub mod body;
pub mod translate;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper::http::uri::Scheme;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

use super::exchange::Batch;
use super::job::Tell;
use super::observer::ReplayObserver;
use super::pool::Pool;
use super::stats::{ErrorKind, Outcome};
use crate::http::response::ResponseSample;
use body::{CopyBody, SentMark};

/// Most HTTP/2 connections per mirror: streams are multiplexed on them, so a few carry what
/// dozens of HTTP/1.1 connections would (one busy connection is served by one mirror thread
/// in many servers, hence more than one).
pub const MAX_H2_CONNECTIONS: usize = 4;

/// Streams in flight per `--max-connections`: an HTTP/2 mirror's copies share at most
/// [`MAX_H2_CONNECTIONS`] connections, so what bounds them is streams, not connections; 4 per
/// connection slot keeps the default (32 slots, 128 streams over 4 connections) within the
/// 100 concurrent streams servers commonly allow per connection.
pub const STREAMS_PER_CONNECTION_SLOT: usize = 4;

/// One mirror's HTTP/2 connections.
pub struct H2Pool {
    pool: Pool,
    scheme: Scheme,
    /// `host:port` of the mirror: the `:authority` of a copy without a Host.
    authority: String,
    /// Keep each answer's head and this many body bytes for the observer.
    sample: Option<usize>,
    conns: Vec<std::sync::Mutex<Option<SendRequest<CopyBody>>>>,
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
            let sent = SentMark::new(self.pool.stats_handle());
            let mut retried = false;
            loop {
                let request =
                    match translate::to_h2(&batch[0].copy.bytes, &self.scheme, &self.authority) {
                        Ok(r) => r.map(|b| b.with_mark(sent.clone())),
                        Err(why) => {
                            tracing::debug!(mirror = %self.pool.stats().name, ?why,
                            "copy cannot go over HTTP/2");
                            let job = batch.pop_front().expect("front");
                            tell.resolve(job, Outcome::Error(ErrorKind::Untranslatable));
                            break;
                        }
                    };
                let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
                let mut sender = match self.sender(slot).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return tell.unreachable(batch, None),
                    Err(kind) => return tell.unreachable(batch, Some(kind)),
                };
                match self
                    .exchange(tell, batch, &mut sender, request, &sent)
                    .await
                {
                    Ok(()) => break,
                    Err(NotProcessed) if !retried => {
                        retried = true;
                        self.pool.stats().on_retry();
                        self.forget(slot, &sender);
                    }
                    Err(NotProcessed) => {
                        let job = batch.pop_front().expect("front");
                        tell.resolve(job, Outcome::Error(ErrorKind::Io));
                        break;
                    }
                }
            }
        }
    }

    /// One try of the front copy on `sender`. `Err(NotProcessed)`: the mirror cannot have
    /// acted on it, so it may go again on another connection.
    async fn exchange<O: ReplayObserver>(
        &self,
        tell: &Tell<O>,
        batch: &mut Batch<O::Flight>,
        sender: &mut SendRequest<CopyBody>,
        req: hyper::http::Request<CopyBody>,
        sent: &SentMark,
    ) -> Result<(), NotProcessed> {
        let start = Instant::now();
        if sender.ready().await.is_err() {
            return Err(NotProcessed);
        }
        let response = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                if e.message().is_some() || not_processed(e.error()) {
                    return Err(NotProcessed);
                }
                tracing::debug!(mirror = %self.pool.stats().name, error = %e.error(),
                    "HTTP/2 stream to the mirror failed");
                let job = batch.pop_front().expect("front");
                tell.resolve(job, Outcome::Error(ErrorKind::Io));
                return Ok(());
            }
        };
        sent.mark();
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
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(s) = sample.as_mut() {
                            s.body_len += data.len() as u64;
                            let room = limit.saturating_sub(s.body.len());
                            s.body.extend_from_slice(&data[..data.len().min(room)]);
                            s.truncated |= data.len() > room;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            grpc = grpc.or(grpc_status(&trailers));
                            if let Some(s) = sample.as_mut() {
                                append_fields(&mut s.head, &trailers);
                            }
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                        "HTTP/2 answer from the mirror broke off");
                    let job = batch.pop_front().expect("front");
                    tell.resolve(job, Outcome::Error(ErrorKind::Io));
                    return Ok(());
                }
            }
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
    async fn sender(&self, slot: usize) -> Result<Option<SendRequest<CopyBody>>, ErrorKind> {
        if let Some(s) = self.open_sender(slot) {
            return Ok(Some(s));
        }
        // One worker connects a slot at a time; the others wait for its connection.
        let _connecting = self.connecting[slot].lock().await;
        if let Some(s) = self.open_sender(slot) {
            return Ok(Some(s));
        }
        // Boxed: the connect and handshake futures are large and rarely run; inline, they
        // would size (and be moved with) every copy's exchange.
        let Some(send) = Box::pin(self.connect()).await? else {
            return Ok(None);
        };
        *crate::sync::lock(&self.conns[slot]) = Some(send.clone());
        Ok(Some(send))
    }

    /// The connection in `slot`, if it is open.
    fn open_sender(&self, slot: usize) -> Option<SendRequest<CopyBody>> {
        crate::sync::lock(&self.conns[slot])
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// A new HTTP/2 connection (under the pool's backoff: `Ok(None)` while in it), its driver
    /// spawned.
    async fn connect(&self) -> Result<Option<SendRequest<CopyBody>>, ErrorKind> {
        let Some(opened) = self.pool.open_or_backoff().await? else {
            return Ok(None);
        };
        let mut builder = Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let (send, connection) = builder
            .handshake(TokioIo::new(opened.stream))
            .await
            .map_err(|e| {
                tracing::debug!(mirror = %self.pool.stats().name, error = %e,
                    "HTTP/2 handshake with the mirror failed");
                ErrorKind::Connect
            })?;
        let close = opened.close;
        let name = self.pool.stats().name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(mirror = %name, error = %e, "HTTP/2 connection to the mirror ended");
            }
            // The loop-exclusion hook runs once the socket is closed.
            drop(close);
        });
        Ok(Some(send))
    }

    /// Forgets the connection in `slot` if it is `used` and closed.
    fn forget(&self, slot: usize, used: &SendRequest<CopyBody>) {
        if used.is_closed() {
            let mut conn = crate::sync::lock(&self.conns[slot]);
            if conn.as_ref().is_some_and(SendRequest::is_closed) {
                *conn = None;
            }
        }
    }
}

/// A copy the mirror cannot have acted on: the connection never started it, or the mirror
/// refused its stream (RFC 9113 8.7: REFUSED_STREAM).
struct NotProcessed;

fn not_processed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // Not a stream failed by a GOAWAY: h2 fails the streams above the GOAWAY's last
            // stream id with it, but also, when the connection then ends, streams the mirror
            // did process and answered (seen with nginx's GOAWAY after `keepalive_requests`):
            // a retry would deliver such a copy twice. Those end as io errors, counted.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
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
