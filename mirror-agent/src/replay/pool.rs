//! One mirror's keep-alive connection pool: bounded connections, reconnect with backoff, and the
//! request/response exchange on a connection.
//!
//! Owns TCP to the mirror. Requests are written as given (the bytes come from [`super::rewrite`]);
//! responses are read and discarded, framed by [`ResponseFramer`] so a kept-alive connection is
//! only reused when the previous response ended cleanly. It does not queue or sample.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::stats::{ErrorKind, MirrorStats};
use crate::http::request::HttpLimits;
use crate::http::response::{ExpectedResponse, ResponseEvent, ResponseFramer};
use crate::http::{BodyFraming, Version};

/// Called with (local, remote) after the socket is bound and before it connects, so the live
/// capture can exclude the agent's own connections (no mirror loops).
pub type OnConnect = Arc<dyn Fn(SocketAddr, SocketAddr) + Send + Sync>;

/// Connection settings of one mirror.
#[derive(Clone)]
pub struct PoolConfig {
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    /// First reconnect delay after a failed connect; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub on_connect: Option<OnConnect>,
    pub limits: HttpLimits,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("max_connections", &self.max_connections)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

/// An open connection and the framer of its response stream.
pub struct Conn {
    stream: TcpStream,
    framer: ResponseFramer,
    buf: Vec<u8>,
}

/// The outcome of one exchange that produced a final response.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub latency: Duration,
}

/// A failed exchange. `untouched`: the mirror sent no byte back, so on a reused connection the
/// request may be retried once on a fresh one (the keep-alive race of RFC 9112 9.3.1).
#[derive(Debug, Clone, Copy)]
struct Failure {
    kind: ErrorKind,
    untouched: bool,
}

/// The request to send and what the framer must know about its response.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub bytes: Bytes,
    pub expected: ExpectedResponse,
    /// The request allows the connection to stay open (HTTP/1.1 without `Connection: close`).
    pub keep_alive: bool,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

pub struct Pool {
    cfg: PoolConfig,
    stats: Arc<MirrorStats>,
    /// Bounds connections: one permit per open or opening connection in use.
    pub(crate) permits: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
    backoff: Mutex<Backoff>,
    /// While the mirror is failing, one request at a time probes it; the others are dropped.
    probing: AtomicBool,
    epoch: Instant,
}

impl Pool {
    pub fn new(cfg: PoolConfig, stats: Arc<MirrorStats>) -> Self {
        let n = cfg.max_connections.max(1);
        Self {
            cfg,
            stats,
            permits: Arc::new(Semaphore::new(n)),
            idle: Mutex::new(Vec::with_capacity(n)),
            backoff: Mutex::new(Backoff::default()),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    pub fn stats_handle(&self) -> Arc<MirrorStats> {
        self.stats.clone()
    }

    pub fn max_connections(&self) -> usize {
        self.cfg.max_connections.max(1)
    }

    /// Sends one request and reads its response. `Ok(None)`: not attempted, the mirror is in
    /// reconnect backoff. Marks the copy sent (once) through `stats` when fully written.
    pub async fn send(&self, out: &Outgoing) -> Result<Option<Answer>, ErrorKind> {
        let mut sent = false;
        if let Some(mut conn) = self.take_idle() {
            match self.exchange(&mut conn, out, &mut sent).await {
                Ok((answer, reusable)) => {
                    if reusable && out.keep_alive {
                        self.put_idle(conn);
                    }
                    return Ok(Some(answer));
                }
                Err(f) if f.untouched => self.stats.on_retry(),
                Err(f) => return Err(f.kind),
            }
        }
        let Some(mut conn) = self.connect_or_backoff().await? else {
            return Ok(None);
        };
        let (answer, reusable) = self
            .exchange(&mut conn, out, &mut sent)
            .await
            .map_err(|f| f.kind)?;
        if reusable && out.keep_alive {
            self.put_idle(conn);
        }
        Ok(Some(answer))
    }

    /// Most recently used idle connection that is still open (LIFO keeps few connections warm).
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            // An idle connection must have nothing to read: EOF means the mirror closed it,
            // data means it sent something unsolicited. Either way it is not reused.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_connections()
        {
            idle.push(conn);
        }
    }

    async fn connect_or_backoff(&self) -> Result<Option<Conn>, ErrorKind> {
        let failing = {
            let b = self.backoff.lock().map_err(|_| ErrorKind::Connect)?;
            if b.until.is_some_and(|t| Instant::now() < t) {
                return Ok(None);
            }
            b.failures > 0
        };
        if failing && self.probing.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let result = self.connect().await;
        if failing {
            self.probing.store(false, Ordering::Release);
        }
        let mut b = self.backoff.lock().map_err(|_| ErrorKind::Connect)?;
        match result {
            Ok(conn) => {
                *b = Backoff::default();
                Ok(Some(conn))
            }
            Err(e) => {
                b.failures = b.failures.saturating_add(1);
                let delay = self
                    .cfg
                    .backoff_min
                    .saturating_mul(1 << (b.failures - 1).min(16))
                    .min(self.cfg.backoff_max);
                b.until = Some(Instant::now() + delay);
                tracing::debug!(mirror = %self.stats.name, error = %e, failures = b.failures,
                    delay_ms = delay.as_millis() as u64, "mirror connect failed");
                Err(ErrorKind::Connect)
            }
        }
    }

    async fn connect(&self) -> io::Result<Conn> {
        let remote = tokio::net::lookup_host((self.cfg.host.as_str(), self.cfg.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let socket = if remote.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Bind to the source address the kernel would pick for this destination (a connected
        // UDP socket reveals it without sending anything) and an ephemeral port, so the full
        // 4-tuple is known before the SYN leaves (see OnConnect).
        let udp = std::net::UdpSocket::bind(if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        udp.connect(remote)?;
        socket.bind(SocketAddr::new(udp.local_addr()?.ip(), 0))?;
        let local = socket.local_addr()?;
        if let Some(hook) = &self.cfg.on_connect {
            hook(local, remote);
        }
        let stream = socket.connect(remote).await?;
        stream.set_nodelay(true)?;
        self.stats.on_connect();
        Ok(Conn {
            stream,
            framer: ResponseFramer::new(self.cfg.limits.clone()),
            buf: vec![0; 16 * 1024],
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Writes the request and reads until its final response is complete. Returns the answer
    /// and whether the connection may carry another request.
    async fn exchange(
        &self,
        conn: &mut Conn,
        out: &Outgoing,
        sent: &mut bool,
    ) -> Result<(Answer, bool), Failure> {
        let io_err = |untouched| Failure {
            kind: ErrorKind::Io,
            untouched,
        };
        let start = Instant::now();
        conn.framer.expect(out.expected);
        conn.stream
            .write_all(&out.bytes)
            .await
            .map_err(|_| io_err(true))?;
        if !std::mem::replace(sent, true) {
            self.stats.on_sent();
        }
        let mut events = Vec::new();
        let mut received = false;
        let mut start_check = StartCheck::default();
        loop {
            let n = conn
                .stream
                .read(&mut conn.buf)
                .await
                .map_err(|_| io_err(!received))?;
            if n == 0 {
                conn.framer.finish(self.now_ns(), &mut events);
            } else {
                received = true;
                if !start_check.feed(&conn.buf[..n]) {
                    return Err(Failure {
                        kind: ErrorKind::BadResponse,
                        untouched: false,
                    });
                }
                conn.framer.push(&conn.buf[..n], self.now_ns(), &mut events);
            }
            for ev in events.drain(..) {
                match ev {
                    ResponseEvent::Informational(_) => {}
                    ResponseEvent::Dropped { .. } => {
                        return Err(Failure {
                            kind: ErrorKind::BadResponse,
                            untouched: false,
                        });
                    }
                    ResponseEvent::Final(r) => {
                        // Reuse only a cleanly delimited HTTP/1.1 response on an open connection;
                        // 101 turns the connection into a tunnel.
                        let reusable = n > 0
                            && r.version == Version::Http11
                            && r.status != 101
                            && r.framing != BodyFraming::CloseDelimited;
                        let answer = Answer {
                            status: r.status,
                            latency: start.elapsed(),
                        };
                        return Ok((answer, reusable));
                    }
                }
            }
            if n == 0 {
                // Closed before a final response: no byte at all is the keep-alive race.
                return Err(if received {
                    Failure {
                        kind: ErrorKind::BadResponse,
                        untouched: false,
                    }
                } else {
                    io_err(true)
                });
            }
        }
    }
}

/// Checks that a response starts with `HTTP/` (after optional blank lines).
///
/// The response framer resynchronises on garbage, as a passive observer must; as the client we
/// know a response must start right here, so garbage fails the exchange at once instead of
/// waiting for the timeout (RFC 9112 4: a status line starts with the HTTP-version).
#[derive(Debug, Default)]
struct StartCheck {
    matched: usize,
}

impl StartCheck {
    const PREFIX: &'static [u8] = b"HTTP/";

    /// False as soon as the bytes cannot start a response.
    fn feed(&mut self, data: &[u8]) -> bool {
        for &b in data {
            if self.matched == Self::PREFIX.len() {
                return true;
            }
            if self.matched == 0 && (b == b'\r' || b == b'\n') {
                continue;
            }
            if b != Self::PREFIX[self.matched] {
                return false;
            }
            self.matched += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::StartCheck;

    #[test]
    fn start_check_every_split() {
        let good = b"\r\nHTTP/1.1 200 OK\r\n";
        for split in 0..good.len() {
            let mut c = StartCheck::default();
            assert!(
                c.feed(&good[..split]) && c.feed(&good[split..]),
                "split {split}"
            );
        }
        for bad in [&b"garbage"[..], b"HTTX/1.1", b"\nhttp/1.1"] {
            assert!(!StartCheck::default().feed(bad), "{bad:?}");
        }
    }
}
