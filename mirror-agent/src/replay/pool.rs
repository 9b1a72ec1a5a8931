//! One mirror's keep-alive connection pool: bounded connections, reconnect with backoff, and the
//! request/response exchange on a connection.
//!
//! Owns TCP to the mirror: connecting (bound source, loop exclusion hook) and backoff. The
//! exchange on a connection (write, read and frame the responses, reuse only after a cleanly
//! ended response) is [`super::exchange`]; each connection belongs to one dispatcher worker, so
//! the pool keeps no idle list. It does not queue or sample.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::observer::{ConnectionHook, ConnectionHooks};
use super::stats::{ErrorKind, MirrorStats};
use super::tls::MirrorTls;
use crate::http::request::HttpLimits;
use crate::http::response::{ResponseEvent, ResponseFramer};

/// Connection settings of one mirror.
#[derive(Clone)]
pub struct PoolConfig {
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    /// First reconnect delay after a failed connect; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Bound on opening a connection: the TCP connect and, for `https://`, the TLS handshake.
    /// Shorter than the per-request timeout, so a mirror that accepts and then says nothing
    /// (a handshake with a port that is not TLS, a blackholed address) is a failed connect,
    /// counted, with backoff, rather than a timeout per copy for ever.
    pub connect_timeout: Duration,
    /// Told of each connection's socket before it connects and after it closes.
    pub hooks: ConnectionHooks,
    pub limits: HttpLimits,
    /// Keep each response's head and this many decoded body bytes for the observer (the
    /// comparison); `None`, the default, keeps nothing.
    pub sample: Option<usize>,
    /// `https://` mirrors: the TLS client, or why it could not be built (then every connect
    /// fails, counted: copies never go out in plain text); `None` for `http://`.
    pub tls: Option<Result<MirrorTls, String>>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("max_connections", &self.max_connections)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// Runs the close hook when dropped: owned by a [`Conn`], or by a connect attempt until it
/// becomes one.
pub(super) struct CloseHook {
    hook: Option<ConnectionHook>,
    local: SocketAddr,
    remote: SocketAddr,
}

impl Drop for CloseHook {
    fn drop(&mut self) {
        if let Some(h) = &self.hook {
            h(self.local, self.remote);
        }
    }
}

/// A connected stream and the hook to run once it is closed.
pub(super) struct Opened {
    pub(super) stream: MirrorStream,
    pub(super) close: CloseHook,
}

/// A connection to a mirror: plain TCP, or TLS over it.
pub(super) enum MirrorStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MirrorStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }

    /// `TCP_QUICKACK` on the socket underneath.
    pub(super) fn set_quickack(&self, on: bool) -> io::Result<()> {
        self.tcp().set_quickack(on)
    }
}

impl AsyncRead for MirrorStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MirrorStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection, the framer of its response stream and its reusable buffers.
pub struct Conn {
    pub(super) stream: MirrorStream,
    pub(super) framer: ResponseFramer,
    pub(super) buf: Vec<u8>,
    /// Pipelined requests are gathered here before one write.
    pub(super) wbuf: Vec<u8>,
    pub(super) events: Vec<ResponseEvent>,
    pub(super) last_used: Instant,
    /// The previous batch was answered promptly: the next one may be pipelined.
    pub(super) prompt: bool,
    /// Declared after `stream`: the hook runs once the socket is closed.
    pub(super) _close: CloseHook,
}

impl Conn {
    /// An idle connection must have nothing to read: EOF means the mirror closed it, data
    /// means it sent something unsolicited. Either way it is not reused.
    pub(super) fn still_open(&mut self) -> bool {
        match &mut self.stream {
            MirrorStream::Plain(s) => {
                let mut probe = [0u8; 1];
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // One read attempt without waiting: TLS records that carry no data (session
            // tickets, key updates) are consumed by rustls and leave it pending.
            MirrorStream::Tls(s) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                matches!(
                    Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }
}

/// The turn to probe a failing mirror, given back when dropped.
struct ProbeTurn<'a>(&'a AtomicBool);

impl Drop for ProbeTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

pub struct Pool {
    cfg: PoolConfig,
    stats: Arc<MirrorStats>,
    backoff: Mutex<Backoff>,
    /// While the mirror is failing, one request at a time probes it; the others are dropped.
    probing: AtomicBool,
    epoch: Instant,
}

impl Pool {
    pub fn new(cfg: PoolConfig, stats: Arc<MirrorStats>) -> Self {
        Self {
            cfg,
            stats,
            backoff: Mutex::new(Backoff::default()),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    pub(super) fn stats(&self) -> &MirrorStats {
        &self.stats
    }

    /// `at` in nanoseconds since the pool started (the response framer's clock).
    pub(super) fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub fn stats_handle(&self) -> Arc<MirrorStats> {
        self.stats.clone()
    }

    pub fn max_connections(&self) -> usize {
        self.cfg.max_connections.max(1)
    }

    /// An open connection, or `Ok(None)` while the mirror is in reconnect backoff (one
    /// caller at a time probes a failing mirror).
    pub(super) async fn connect_or_backoff(&self) -> Result<Option<Conn>, ErrorKind> {
        self.gated(|| self.connect()).await
    }

    /// A connected stream (TLS done) and its close hook, under the same backoff: what an
    /// HTTP/2 connection is built on (see [`super::h2`]).
    pub(super) async fn open_or_backoff(&self) -> Result<Option<Opened>, ErrorKind> {
        self.gated(|| self.open()).await
    }

    /// Runs `attempt` unless the mirror is in backoff; a failure starts or lengthens it.
    async fn gated<T, F>(&self, attempt: impl FnOnce() -> F) -> Result<Option<T>, ErrorKind>
    where
        F: Future<Output = io::Result<T>>,
    {
        let failing = {
            let b = crate::sync::lock(&self.backoff);
            if b.until.is_some_and(|t| Instant::now() < t) {
                return Ok(None);
            }
            b.failures > 0
        };
        if failing && self.probing.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        // Released however the attempt ends, also when the caller drops it mid-way (the copy's
        // timeout): a flag left set would keep every later copy from probing, for ever.
        let probe = failing.then(|| ProbeTurn(&self.probing));
        let result = attempt().await;
        drop(probe);
        let mut b = crate::sync::lock(&self.backoff);
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
        let Opened { stream, close } = self.open().await?;
        Ok(Conn {
            stream,
            framer: ResponseFramer::new(self.cfg.limits.clone()).with_capture(self.cfg.sample),
            buf: vec![0; 32 * 1024],
            wbuf: Vec::new(),
            events: Vec::new(),
            last_used: Instant::now(),
            prompt: false,
            _close: close,
        })
    }

    async fn open(&self) -> io::Result<Opened> {
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
        // 4-tuple is known before the SYN leaves (see ConnectionHooks::opened).
        let udp = std::net::UdpSocket::bind(if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        udp.connect(remote)?;
        socket.bind(SocketAddr::new(udp.local_addr()?.ip(), 0))?;
        let local = socket.local_addr()?;
        if let Some(hook) = &self.cfg.hooks.opened {
            hook(local, remote);
        }
        let close = CloseHook {
            hook: self.cfg.hooks.closed.clone(),
            local,
            remote,
        };
        let deadline = tokio::time::Instant::now() + self.cfg.connect_timeout;
        let stream = tokio::time::timeout_at(deadline, socket.connect(remote))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let stream = match &self.cfg.tls {
            None => MirrorStream::Plain(stream),
            Some(Err(e)) => {
                self.stats
                    .on_tls_failure(super::tls::HandshakeFailure::Other);
                return Err(io::Error::other(format!("TLS configuration: {e}")));
            }
            Some(Ok(tls)) => match tokio::time::timeout_at(deadline, tls.handshake(stream))
                .await
                .unwrap_or_else(|_| {
                    Err((
                        super::tls::HandshakeFailure::Other,
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
                    ))
                }) {
                Ok(s) => MirrorStream::Tls(Box::new(s)),
                Err((why, e)) => {
                    self.stats.on_tls_failure(why);
                    if why != super::tls::HandshakeFailure::Other {
                        // The same refusal repeats on every attempt: say why once per backoff
                        // round rather than hide it at debug level.
                        tracing::warn!(mirror = %self.stats.name, reason = why.as_str(), error = %e,
                            "TLS handshake with the mirror failed");
                    }
                    return Err(e);
                }
            },
        };
        self.stats.on_connect();
        Ok(Opened { stream, close })
    }
}

/// Checks that a response starts with `HTTP/` (after optional blank lines).
///
/// The response framer resynchronises on garbage, as a passive observer must; as the client we
/// know a response must start right here, so garbage fails the exchange at once instead of
/// waiting for the timeout (RFC 9112 4: a status line starts with the HTTP-version).
#[derive(Debug, Default)]
pub(super) struct StartCheck {
    matched: usize,
}

impl StartCheck {
    const PREFIX: &'static [u8] = b"HTTP/";

    /// False as soon as the bytes cannot start a response.
    pub(super) fn feed(&mut self, data: &[u8]) -> bool {
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
