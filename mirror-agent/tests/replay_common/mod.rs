//! Shared by the replay integration tests: real tokio HTTP servers on loopback that play healthy
//! or broken mirrors and record every request they receive, framed by the project's own
//! `RequestFramer`.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mirror_agent::http::Request;
use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};
use mirror_agent::pipeline::CapturedRequest;
use mirror_agent::replay::spec::MirrorSpec;
use mirror_agent::replay::{ReplayConfig, ReplayObserver, Replayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Builds a scripted response: (bytes, close the connection after).
pub type Script = Arc<dyn Fn(&Request) -> (Vec<u8>, bool) + Send + Sync>;

/// How a test mirror answers each request.
#[derive(Clone)]
pub enum Behavior {
    /// `200 OK` with a small Content-Length body, keep-alive.
    Ok,
    /// Reads requests, never answers.
    Never,
    /// Answers `500` after this delay.
    Slow500(Duration),
    /// Resets the connection (RST) when a request arrives.
    Reset,
    /// Custom response bytes per request; `close` closes the connection after writing.
    Script(Script),
    /// `200 OK` like `Ok`, after the delay this returns for the request.
    Delayed(Arc<dyn Fn(&Request) -> Duration + Send + Sync>),
}

/// What a test mirror saw, in its order (all connections): a request arriving (fully read)
/// or being answered, by target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    Arrived(String),
    Answered(String),
}

/// A mirror service on loopback. Stops (aborts its tasks) on drop.
pub struct TestMirror {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Request>>>,
    /// Arrivals and answers in the mirror's order.
    pub events: Arc<Mutex<Vec<Event>>>,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestMirror {
    pub async fn start(behavior: Behavior) -> Self {
        Self::start_on("127.0.0.1:0", behavior).await
    }

    pub async fn start_on(bind: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind test mirror");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, e, p, c) = (
            received.clone(),
            events.clone(),
            peers.clone(),
            connections.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    break;
                };
                p.lock().unwrap().push(peer);
                c.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(stream, behavior.clone(), r.clone(), e.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            received,
            events,
            peers,
            connections,
            task,
        }
    }

    pub fn received(&self) -> Vec<Request> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn spec(&self, name: &str, percent: f64) -> MirrorSpec {
        spec(self.addr, name, percent)
    }
}

/// A mirror spec for a server at `addr` (a test mirror or a server of the test's own).
pub fn spec(addr: SocketAddr, name: &str, percent: f64) -> MirrorSpec {
    MirrorSpec {
        name: name.into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        percent,
        tls: None,
        role: Default::default(),
        protocol: Default::default(),
    }
}

async fn serve(
    mut stream: TcpStream,
    behavior: Behavior,
    received: Arc<Mutex<Vec<Request>>>,
    log: Arc<Mutex<Vec<Event>>>,
) {
    let mut framer = RequestFramer::new(
        HttpLimits {
            max_body_bytes: 1 << 30,
            ..HttpLimits::default()
        },
        false,
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        framer.push(&Bytes::copy_from_slice(&buf[..n]), 0, &mut events);
        for ev in events.drain(..) {
            let RequestEvent::Request(req) = ev else {
                panic!("test mirror got a non-request event: {ev:?}");
            };
            received.lock().unwrap().push(req.clone());
            log.lock()
                .unwrap()
                .push(Event::Arrived(req.target().to_string()));
            let answered = || {
                log.lock()
                    .unwrap()
                    .push(Event::Answered(req.target().to_string()))
            };
            match &behavior {
                Behavior::Ok | Behavior::Delayed(_) => {
                    if let Behavior::Delayed(delay) = &behavior {
                        tokio::time::sleep(delay(&req)).await;
                    }
                    answered();
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Behavior::Never => {}
                Behavior::Slow500(d) => {
                    tokio::time::sleep(*d).await;
                    let resp = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
                    if stream.write_all(resp).await.is_err() {
                        return;
                    }
                }
                Behavior::Reset => {
                    // SO_LINGER 0: close sends RST instead of FIN.
                    let _ = stream.set_zero_linger();
                    return;
                }
                Behavior::Script(f) => {
                    let (resp, close) = f(&req);
                    if stream.write_all(&resp).await.is_err() || close {
                        return;
                    }
                }
            }
        }
    }
}

/// A loopback port with nothing listening (connection refused).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Cuts `stream` (one client connection's bytes) into captured requests with the real framer.
pub fn captured(stream: &[u8]) -> Vec<CapturedRequest> {
    let mut framer = RequestFramer::new(
        HttpLimits {
            max_body_bytes: 1 << 30,
            ..HttpLimits::default()
        },
        false,
    );
    let mut events = Vec::new();
    framer.push(&Bytes::copy_from_slice(stream), 1, &mut events);
    framer.finish(&mut events);
    events
        .into_iter()
        .filter(|ev| !matches!(ev, RequestEvent::Tunnel)) // after CONNECT/Upgrade
        .enumerate()
        .map(|(i, ev)| match ev {
            RequestEvent::Request(request) => CapturedRequest {
                src: "10.0.0.1:40000".parse().unwrap(),
                dst: "10.0.0.2:80".parse().unwrap(),
                flow_id: 1,
                seq_in_flow: i as u64,
                request,
            },
            other => panic!("test input is not a clean request stream: {other:?}"),
        })
        .collect()
}

/// One request from its bytes.
pub fn one(raw: &[u8]) -> CapturedRequest {
    let mut v = captured(raw);
    assert_eq!(v.len(), 1, "exactly one request");
    v.remove(0)
}

/// Test defaults: short timeouts and backoff, fixed seed.
pub fn config(mirrors: Vec<MirrorSpec>) -> ReplayConfig {
    let mut c = ReplayConfig::new(mirrors);
    c.timeout = Duration::from_millis(300);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c.seed = Some(7);
    c
}

/// Polls `cond` every 10 ms up to `limit`; panics with `what` when it never holds.
pub async fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    wait_until_or(what, limit, cond, String::new).await
}

/// [`wait_until`], printing `context()` (e.g. the replayer's counters) when it fails.
pub async fn wait_until_or(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shuts down and checks the accounting identity of every mirror.
pub async fn finish<O: ReplayObserver>(
    replayer: &Replayer<O>,
) -> mirror_agent::replay::stats::ReplaySnapshot {
    let snap = replayer.shutdown(Duration::from_secs(2)).await;
    for m in &snap.mirrors {
        assert_eq!(
            m.in_flight, 0,
            "{}: nothing in flight after shutdown: {m:?}",
            m.name
        );
        assert!(
            m.balanced(),
            "{}: sampled = answered + errors + timeouts + dropped: {m:?}",
            m.name
        );
    }
    snap
}
