//! Pipelined batches against real loopback servers (tokio), driven through [`run`] directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::http::request::HttpLimits;
use crate::replay::observer::NoObserver;
use crate::replay::pool::PoolConfig;
use crate::replay::stats::{MirrorSnapshot, MirrorStats, Ticket};
use crate::replay::testutil;

fn job(stats: &Arc<MirrorStats>, raw: &str, keep_alive: bool) -> Job<()> {
    let mut copy = testutil::copy(raw.as_bytes());
    copy.head.keep_alive = keep_alive;
    Job {
        copy,
        ticket: Ticket::new(stats.clone()),
        line: 0,
        flight: None,
    }
}

/// Outcomes go to the counters only.
fn tell() -> Tell<NoObserver> {
    Tell {
        mirror: 0,
        observer: Arc::new(NoObserver),
    }
}

fn get(stats: &Arc<MirrorStats>, i: usize) -> Job<()> {
    job(
        stats,
        &format!("GET /{i} HTTP/1.1\r\nHost: m\r\n\r\n"),
        true,
    )
}

#[test]
fn pipelinable_rules() {
    let s = Arc::new(MirrorStats::new("m".into(), 100.0, 1.0));
    let big = format!(
        "PUT /x HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{}",
        "a".repeat(MAX_PIPELINED_REQUEST),
        n = MAX_PIPELINED_REQUEST
    );
    for (raw, keep_alive, want) in [
        ("GET / HTTP/1.1\r\nHost: m\r\n\r\n", true, true),
        ("HEAD / HTTP/1.1\r\n\r\n", true, true),
        ("DELETE /x HTTP/1.1\r\n\r\n", true, true),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false, false),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            true,
            false,
        ),
        ("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true, false),
        ("PATCH / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", true, false),
        (big.as_str(), true, false),
    ] {
        assert_eq!(
            pipelinable(&job(&s, raw, keep_alive).copy),
            want,
            "{raw:.40}"
        );
    }
}

/// A GET-only HTTP/1.1 server: answers every complete request head in each read with one
/// write, closes a connection after `per_conn` answers (with `Connection: close`, processing
/// nothing after it). Counts the requests it answered and the most it got in one read.
struct Server {
    addr: std::net::SocketAddr,
    answered: Arc<AtomicUsize>,
    most_per_read: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(per_conn: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let most_per_read = Arc::new(AtomicUsize::new(0));
    let (a, m) = (answered.clone(), most_per_read.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (a, m) = (a.clone(), m.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let mut done = 0;
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    let mut in_read = 0;
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        done += 1;
                        in_read += 1;
                        a.fetch_add(1, Ordering::SeqCst);
                        if done == per_conn {
                            out.extend_from_slice(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                            );
                            let _ = s.write_all(&out).await;
                            m.fetch_max(in_read, Ordering::SeqCst);
                            return;
                        }
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                    m.fetch_max(in_read, Ordering::SeqCst);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Server {
        addr,
        answered,
        most_per_read,
        task,
    }
}

fn pool(addr: std::net::SocketAddr) -> (Pool, Arc<MirrorStats>) {
    pool_with(addr, Duration::from_secs(5))
}

fn pool_with(addr: std::net::SocketAddr, connect_timeout: Duration) -> (Pool, Arc<MirrorStats>) {
    let stats = Arc::new(MirrorStats::new("m".into(), 100.0, 1.0));
    let cfg = PoolConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        max_connections: 1,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        connect_timeout,
        hooks: Default::default(),
        limits: HttpLimits::default(),
        sample: None,
        tls: None,
    };
    (Pool::new(cfg, stats.clone()), stats)
}

fn check_balanced(s: &MirrorSnapshot) {
    assert!(s.balanced(), "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
}

#[tokio::test]
async fn pipelined_batch_is_answered_in_order_on_one_connection() {
    let srv = server(usize::MAX).await;
    let (pool, stats) = pool(srv.addr);
    let mut slot = None;
    // A fresh connection carries one request; once answered promptly it may pipeline.
    let mut batch = VecDeque::from([get(&stats, 0)]);
    run(&pool, &tell(), &mut slot, &mut batch).await;
    assert!(
        may_pipeline(slot.as_ref()),
        "a prompt answer allows pipelining"
    );
    let mut batch: VecDeque<Job<()>> = (1..=100).map(|i| get(&stats, i)).collect();
    run(&pool, &tell(), &mut slot, &mut batch).await;
    assert!(batch.is_empty());
    let s = stats.snapshot();
    check_balanced(&s);
    assert_eq!(
        (s.status[1], s.sent, s.connects, s.retries),
        (101, 101, 1, 0),
        "{s:?}"
    );
    assert_eq!(srv.answered.load(Ordering::SeqCst), 101);
    assert!(
        srv.most_per_read.load(Ordering::SeqCst) > 1,
        "the batch arrived pipelined"
    );
    assert!(slot.is_some(), "the connection is kept");
}

/// The mirror closes after an answer in the middle of a pipelined batch (as nginx does at
/// `keepalive_requests`): the unanswered copies go once more on a fresh connection, and each
/// request is processed exactly once.
#[tokio::test]
async fn close_mid_pipeline_retries_the_unanswered_once() {
    let srv = server(5).await;
    let (pool, stats) = pool(srv.addr);
    let mut slot = None;
    let mut batch = VecDeque::from([get(&stats, 0)]);
    run(&pool, &tell(), &mut slot, &mut batch).await;
    // Answers 1-4 on the first connection, then it closes; 5-8 go on a second one.
    let mut batch: VecDeque<Job<()>> = (1..=8).map(|i| get(&stats, i)).collect();
    run(&pool, &tell(), &mut slot, &mut batch).await;
    let s = stats.snapshot();
    check_balanced(&s);
    assert_eq!(
        (s.status[1], s.sent, s.connects, s.retries),
        (9, 9, 2, 4),
        "{s:?}"
    );
    assert_eq!(
        srv.answered.load(Ordering::SeqCst),
        9,
        "each processed once"
    );
    // The second connection closes after one more answer; the other 9 of this batch are
    // retried one at a time (RFC 9112 9.3.2: no pipelining right after the connection that
    // retries) on a third, which answers 5, the last with `Connection: close`, so the last 4
    // go on a fourth without a write into the closing one. Every copy is answered and nothing
    // is processed twice.
    let mut batch: VecDeque<Job<()>> = (9..=18).map(|i| get(&stats, i)).collect();
    run(&pool, &tell(), &mut slot, &mut batch).await;
    let s = stats.snapshot();
    check_balanced(&s);
    assert_eq!(
        (s.status[1], s.error(ErrorKind::Io), s.connects, s.retries),
        (9 + 10, 0, 4, 4 + 9),
        "{s:?}"
    );
    assert_eq!(
        srv.answered.load(Ordering::SeqCst),
        19,
        "each processed once"
    );
    assert!(
        srv.most_per_read.load(Ordering::SeqCst) > 1,
        "the first batches were pipelined"
    );
}

/// Garbage after the first answer of a pipelined batch: that copy is answered; the framer
/// resynchronises on garbage, so the others wait for the per-request timeout (applied by the
/// worker, as here) and every copy is still accounted for.
#[tokio::test]
async fn garbage_mid_pipeline_fails_the_rest() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let mut answered = 0;
        loop {
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let heads = got.windows(4).filter(|w| w == b"\r\n\r\n").count();
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if answered == 0 && heads >= 1 {
                s.write_all(ok).await.unwrap();
                answered = 1;
            }
            if answered == 1 && heads >= 5 {
                s.write_all(ok).await.unwrap();
                s.write_all(b"garbage, not a status line\r\n\r\n")
                    .await
                    .unwrap();
                answered = 2;
            }
        }
    });
    let (pool, stats) = pool(addr);
    let mut slot = None;
    let mut batch = VecDeque::from([get(&stats, 0)]);
    run(&pool, &tell(), &mut slot, &mut batch).await;
    let mut batch: VecDeque<Job<()>> = (1..=4).map(|i| get(&stats, i)).collect();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(500),
        run(&pool, &tell(), &mut slot, &mut batch),
    )
    .await
    .is_err();
    task.abort();
    for job in batch.drain(..) {
        job.ticket.resolve(Outcome::Timeout);
    }
    let s = stats.snapshot();
    check_balanced(&s);
    assert!(timed_out, "{s:?}");
    assert_eq!(
        (s.status[1], s.error_count() + s.timeouts, s.sent),
        (2, 3, 5),
        "{s:?}"
    );
}

/// A connect that hangs (the listener's accept queue is full, so its SYN is dropped) fails at
/// the connect bound; a probe of the failing mirror cancelled mid-connect (as a copy's timeout
/// cancels it) gives its turn back, so the next copy probes again rather than being dropped
/// for backoff for ever.
#[tokio::test]
async fn a_probe_cancelled_mid_connect_gives_its_turn_back() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(0).unwrap();
    // Never accepted: it fills the queue.
    let _queued = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (pool, stats) = pool_with(addr, Duration::from_millis(300));
    let attempt = || async { pool.connect_or_backoff().await.err() };
    assert_eq!(
        attempt().await,
        Some(ErrorKind::Connect),
        "the connect bound"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), attempt())
            .await
            .is_err(),
        "the probe hangs, and is cancelled"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        attempt().await,
        Some(ErrorKind::Connect),
        "probed again, not refused as another probe's turn"
    );
    assert_eq!(stats.snapshot().connects, 0);
}
