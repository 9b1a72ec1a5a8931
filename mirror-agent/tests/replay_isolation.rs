//! Isolation: broken mirrors (down, silent, slow, resetting, not speaking TLS, refusing HTTP/2
//! streams) only lose their own copies, every lost copy is counted, and a healthy mirror next to
//! them gets every request.

mod replay_common;

use std::sync::Arc;
use std::time::Duration;

use mirror_agent::replay::stats::{DropReason, ErrorKind};
use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

fn get(i: usize) -> mirror_agent::pipeline::CapturedRequest {
    one(format!("GET /r/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_of_two_mirrors() {
    let full = TestMirror::start(Behavior::Ok).await;
    let half = TestMirror::start(Behavior::Ok).await;
    let mut cfg = config(vec![full.spec("full", 100.0), half.spec("half", 50.0)]);
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 4000;
    for i in 0..n {
        replayer.submit(&get(i));
        if i % 500 == 499 {
            // Bounded bursts: the queue (4096) never fills, so no copy is dropped.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_until("full mirror has all", Duration::from_secs(20), || {
        full.count() == n
    })
    .await;
    let snap = finish(&replayer).await;
    let (f, h) = (&snap.mirrors[0], &snap.mirrors[1]);
    assert_eq!(
        (f.sampled, f.sent, f.status[1]),
        (n as u64, n as u64, n as u64),
        "{f:?}"
    );
    let share = h.sampled as f64 * 100.0 / n as f64;
    // Binomial(4000, 0.5): 1 sd = 0.8 points; 2.5 points is > 3 sd.
    assert!((share - 50.0).abs() <= 2.5, "half mirror share {share}");
    assert_eq!(h.status[1], h.sampled, "{h:?}");
    assert_eq!(half.count() as u64, h.sampled);
    assert_eq!(snap.completeness(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_mirrors_do_not_hurt_the_healthy_one() {
    let healthy = TestMirror::start(Behavior::Ok).await;
    let silent = TestMirror::start(Behavior::Never).await;
    let resetting = TestMirror::start(Behavior::Reset).await;
    let down = dead_addr().await;
    let mut specs = vec![
        healthy.spec("healthy", 100.0),
        silent.spec("silent", 100.0),
        resetting.spec("reset", 100.0),
    ];
    specs.push(mirror_agent::replay::spec::MirrorSpec {
        name: "down".into(),
        host: down.ip().to_string(),
        port: down.port(),
        percent: 100.0,
        tls: None,
        role: Default::default(),
        protocol: Default::default(),
    });
    let mut cfg = config(specs);
    cfg.timeout = Duration::from_millis(200);
    cfg.queue_size = 16;
    cfg.max_connections = 4;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 300;
    for i in 0..n {
        replayer.submit(&get(i));
        // Paced so the healthy mirror's small queue (sized to make the broken ones overflow)
        // keeps up.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    wait_until_or(
        "healthy mirror has all",
        Duration::from_secs(20),
        || healthy.count() == n,
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    let by = |name: &str| {
        snap.mirrors
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .clone()
    };
    let (h, s, r, d) = (by("healthy"), by("silent"), by("reset"), by("down"));
    for m in [&h, &s, &r, &d] {
        assert_eq!(
            m.sampled, n as u64,
            "every mirror samples every request: {m:?}"
        );
    }
    assert_eq!(h.status[1], n as u64, "{h:?}");
    assert_eq!(h.dropped_count() + h.error_count() + h.timeouts, 0, "{h:?}");
    // Silent: each copy is a timeout, or dropped because the queue was full behind timeouts,
    // or still queued at shutdown.
    assert_eq!(s.answered() + s.error_count(), 0, "{s:?}");
    assert!(s.timeouts >= 4, "{s:?}");
    assert_eq!(
        s.timeouts + s.drop_count(DropReason::QueueFull) + s.drop_count(DropReason::Shutdown),
        n as u64,
        "{s:?}"
    );
    // Resetting: I/O errors (or drops behind them), never an answer.
    assert_eq!(r.answered(), 0, "{r:?}");
    assert!(r.error(ErrorKind::Io) > 0, "{r:?}");
    assert_eq!(
        r.error(ErrorKind::Io) + r.dropped_count(),
        n as u64,
        "{r:?}"
    );
    // Down: connect errors while probing, the rest dropped during backoff.
    assert_eq!(
        d.answered() + d.timeouts + d.error(ErrorKind::Io),
        0,
        "{d:?}"
    );
    assert!(d.error(ErrorKind::Connect) >= 1, "{d:?}");
    assert_eq!(
        d.error(ErrorKind::Connect) + d.dropped_count(),
        n as u64,
        "{d:?}"
    );
    assert!(
        d.drop_count(DropReason::Backoff) > 0,
        "backoff spares a dead mirror: {d:?}"
    );
    let table = snap.table();
    for name in ["healthy", "silent", "reset", "down"] {
        assert!(table.contains(name), "{table}");
    }
    println!("{table}");
}

/// A mirror answering 500 after 2 s: counted as 5xx with its latency; its queue overflows
/// (counted) while the healthy mirror gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_500_mirror() {
    let healthy = TestMirror::start(Behavior::Ok).await;
    let slow = TestMirror::start(Behavior::Slow500(Duration::from_secs(2))).await;
    let mut cfg = config(vec![
        healthy.spec("healthy", 100.0),
        slow.spec("slow", 100.0),
    ]);
    cfg.timeout = Duration::from_secs(4);
    cfg.queue_size = 2;
    cfg.max_connections = 2;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 20;
    for i in 0..n {
        replayer.submit(&get(i));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_until_or(
        "healthy mirror has all",
        Duration::from_secs(5),
        || healthy.count() == n,
        || replayer.snapshot().table(),
    )
    .await;
    // The slow mirror holds 2 exchanges, 1 copy waiting for a connection and 2 queued; the
    // rest overflow its queue.
    wait_until("slow mirror answered twice", Duration::from_secs(5), || {
        replayer.snapshot().mirrors[1].status[4] == 2
    })
    .await;
    let snap = replayer.snapshot();
    let s = &snap.mirrors[1];
    assert!(
        s.drop_count(DropReason::QueueFull) >= (n - 5) as u64,
        "{s:?}"
    );
    assert!(
        s.p50.unwrap() >= Duration::from_secs(2),
        "latency is recorded: {s:?}"
    );
    let snap = replayer.shutdown(Duration::from_millis(100)).await;
    let s = &snap.mirrors[1];
    assert!(s.balanced() && s.in_flight == 0, "{s:?}");
    assert_eq!(
        s.status[4] + s.drop_count(DropReason::QueueFull) + s.drop_count(DropReason::Shutdown),
        n as u64,
        "{s:?}"
    );
    let h = &snap.mirrors[0];
    assert_eq!(h.status[1], n as u64, "{h:?}");
}

/// A replayer whose one mirror never answers, with room for 4 copies and one connection (the
/// mirror must outlive the replayer).
async fn stuck_replayer() -> (TestMirror, Replayer) {
    let silent = TestMirror::start(Behavior::Never).await;
    let mut cfg = config(vec![silent.spec("silent", 100.0)]);
    cfg.queue_size = 4;
    cfg.max_connections = 1;
    cfg.timeout = Duration::from_secs(30);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    (silent, replayer)
}

/// submit never blocks: with a mirror that never answers and a tiny queue, thousands of
/// submits return and are all accounted for; shutdown abandons the rest, counted.
#[tokio::test]
async fn full_queue_drops_and_shutdown_accounts() {
    let (_silent, replayer) = stuck_replayer().await;
    for i in 0..5000 {
        replayer.submit(&get(i));
    }
    let snap = replayer.shutdown(Duration::from_millis(100)).await;
    let s = &snap.mirrors[0];
    assert_eq!(s.sampled, 5000);
    assert!(s.drop_count(DropReason::QueueFull) >= 5000 - 5, "{s:?}");
    assert!(
        s.drop_count(DropReason::Shutdown) >= 1,
        "the stuck request is abandoned: {s:?}"
    );
    assert_eq!(s.in_flight, 0);
    assert!(s.balanced(), "{s:?}");
    // After shutdown, submits are counted as shutdown drops.
    replayer.submit(&get(0));
    let s = replayer.snapshot().mirrors[0].clone();
    assert!(s.balanced() && s.sampled == 5001, "{s:?}");
}

/// A batch larger than the queue (`submit_all`, as the live agent submits a capture batch):
/// the queue takes what fits in order, the rest are counted queue-full drops, and after
/// shutdown a batch is counted as shutdown drops.
#[tokio::test] // current-thread runtime: the drain task cannot run during the submit
async fn a_batch_over_the_queue_bound_drops_the_excess_counted() {
    let (_silent, replayer) = stuck_replayer().await;
    let batch: Vec<_> = (0..100)
        .map(|i| {
            let mut c = get(i);
            c.flow_id = (i % 10) as u64;
            c
        })
        .collect();
    replayer.submit_all(&batch);
    let s = replayer.snapshot().mirrors[0].clone();
    assert_eq!(s.sampled, 100, "{s:?}");
    assert_eq!(s.drop_count(DropReason::QueueFull), 96, "{s:?}");
    assert!(s.balanced(), "{s:?}");
    let snap = replayer.shutdown(Duration::from_millis(100)).await;
    let s = &snap.mirrors[0];
    assert_eq!(s.drop_count(DropReason::Shutdown), 4, "{s:?}");
    assert!(s.balanced(), "{s:?}");
    replayer.submit_all(&batch);
    let s = replayer.snapshot().mirrors[0].clone();
    assert_eq!(s.drop_count(DropReason::Shutdown), 104, "{s:?}");
    assert!(s.balanced() && s.sampled == 200, "{s:?}");
}

/// The queue is bounded in bytes too: big uploads behind a stuck mirror do not pin memory.
#[tokio::test] // current-thread runtime: the drain task cannot run during the submit loop
async fn queue_bounded_in_bytes() {
    let silent = TestMirror::start(Behavior::Never).await;
    let mut cfg = config(vec![silent.spec("silent", 100.0)]);
    cfg.max_queue_bytes = 1000;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let body = "x".repeat(400 - 52);
    let req = one(format!(
        "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .as_bytes());
    assert_eq!(req.request.raw.len(), 400);
    for _ in 0..10 {
        replayer.submit(&req);
    }
    let s = replayer.snapshot().mirrors[0].clone();
    assert_eq!(
        s.drop_count(DropReason::QueueFull),
        8,
        "two 400-byte copies fit in 1000: {s:?}"
    );
    let s = replayer.shutdown(Duration::from_millis(50)).await.mirrors[0].clone();
    assert!(s.balanced() && s.in_flight == 0, "{s:?}");
}

/// A batch of copies is admitted in order, each as if offered alone: a copy over the byte bound
/// is refused and a smaller one behind it still fits.
#[tokio::test] // current-thread runtime: the drain task cannot run during the submit
async fn a_batch_is_bounded_in_bytes_copy_by_copy() {
    let silent = TestMirror::start(Behavior::Never).await;
    let mut cfg = config(vec![silent.spec("silent", 100.0)]);
    cfg.max_queue_bytes = 1000;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    // A POST of `len` bytes in all (the head is 49 bytes plus the Content-Length's digits).
    let post = |len: usize| {
        let digits = if len >= 49 + 3 + 100 { 3 } else { 2 };
        let body = "x".repeat(len - 49 - digits);
        let req = one(format!(
            "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes());
        assert_eq!(req.request.raw.len(), len);
        req
    };
    // 400 + 400 fit in 1000; the third 400 does not, the 100 behind it does (900), the
    // last 400 does not.
    let batch = [post(400), post(400), post(400), post(100), post(400)];
    replayer.submit_all(&batch);
    let s = replayer.snapshot().mirrors[0].clone();
    assert_eq!(s.drop_count(DropReason::QueueFull), 2, "{s:?}");
    assert_eq!(replayer.snapshot().captured, 5);
    let s = replayer.shutdown(Duration::from_millis(50)).await.mirrors[0].clone();
    assert!(s.balanced() && s.in_flight == 0, "{s:?}");
}

/// The kernel captures 50% of flows; a 50% mirror then takes every captured request and a 25%
/// mirror half of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_scaled_by_capture_percent() {
    let a = TestMirror::start(Behavior::Ok).await;
    let b = TestMirror::start(Behavior::Ok).await;
    let mut cfg = config(vec![a.spec("fifty", 50.0), b.spec("quarter", 25.0)]);
    cfg.capture_percent = 50.0;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 2000;
    for i in 0..n {
        replayer.submit(&get(i));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_until("fifty has all", Duration::from_secs(20), || a.count() == n).await;
    let snap = finish(&replayer).await;
    assert_eq!(snap.mirrors[0].sampled, n as u64);
    let share = snap.mirrors[1].sampled as f64 * 100.0 / n as f64;
    // Binomial(2000, 0.5): 1 sd = 1.1 points.
    assert!(
        (share - 50.0).abs() <= 3.5,
        "quarter mirror takes half the captured: {share}"
    );
    assert_eq!(
        snap.completeness(),
        Some(1.0),
        "fifty takes every captured request"
    );
}

/// An `https://` mirror whose port speaks plain HTTP (here a server that waits for a request
/// head the ClientHello never completes): each handshake is given up at the connect bound (half
/// the request timeout) as neither a refused certificate nor an alert (`tls_failures` "other"),
/// the copies are connect errors or dropped while the mirror backs off, never timeouts, and a
/// healthy mirror beside it gets every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_mirror_that_is_not_tls_fails_its_handshakes_counted() {
    let healthy = TestMirror::start(Behavior::Ok).await;
    let plain = TestMirror::start(Behavior::Ok).await;
    let mut not_tls =
        mirror_agent::replay::spec::parse_mirror(&format!("https://{},name=not-tls", plain.addr))
            .expect("mirror spec");
    not_tls.percent = 100.0;
    let mut cfg = config(vec![healthy.spec("healthy", 100.0), not_tls]);
    cfg.timeout = Duration::from_secs(1);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 20;
    for i in 0..n {
        replayer.submit(&get(i));
    }
    wait_until_or(
        "both mirrors resolved every copy",
        Duration::from_secs(20),
        || {
            let s = replayer.snapshot();
            healthy.count() == n && s.mirrors.iter().all(|m| m.in_flight == 0)
        },
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    let m = snap.mirrors.iter().find(|m| m.name == "not-tls").unwrap();
    assert_eq!(
        plain.count(),
        0,
        "nothing reached the plain server as a request"
    );
    assert_eq!(
        m.answered() + m.timeouts + m.error(ErrorKind::Io),
        0,
        "{m:?}"
    );
    assert!(m.error(ErrorKind::Connect) >= 1, "{m:?}");
    assert_eq!(
        m.error(ErrorKind::Connect) + m.dropped_count(),
        n as u64,
        "{m:?}"
    );
    assert_eq!(m.tls_failures, [0, 0, m.error(ErrorKind::Connect)], "{m:?}");
    assert!(m.balanced(), "{m:?}");
    let h = snap.mirrors.iter().find(|m| m.name == "healthy").unwrap();
    assert_eq!(h.status[1], n as u64, "{h:?}");
}

/// Copies an HTTP/2 mirror cannot take (a WebSocket upgrade would turn its stream into a
/// tunnel) are resolved as `untranslatable` errors before any connection is made; an ordinary
/// request to the same mirror still goes (here to a server that does not speak HTTP/2: an I/O
/// or connect error, counted apart).
#[tokio::test]
async fn copies_an_http2_mirror_cannot_take_are_counted_untranslatable() {
    let dead = dead_addr().await;
    let mut spec = spec(dead, "h2", 100.0);
    spec.protocol = mirror_agent::replay::spec::MirrorProtocol::Http2;
    let replayer = Replayer::start(config(vec![spec]), ConnectionHooks::default(), NoObserver);
    for _ in 0..3 {
        replayer.submit(&one(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ));
    }
    replayer.submit(&get(0));
    wait_until_or(
        "every copy resolved",
        Duration::from_secs(10),
        || replayer.snapshot().mirrors[0].in_flight == 0,
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    let m = &snap.mirrors[0];
    assert_eq!(m.sampled, 4, "{m:?}");
    assert_eq!(m.error(ErrorKind::Untranslatable), 3, "{m:?}");
    assert_eq!(
        m.error(ErrorKind::Connect) + m.error(ErrorKind::Io) + m.dropped_count(),
        1,
        "the ordinary request went its own way: {m:?}"
    );
    assert!(m.balanced(), "{m:?}");
    assert!(snap.table().contains("untranslatable"), "{}", snap.table());
}

/// An HTTP/2 mirror (the `h2` crate's server) that refuses, resets and breaks off streams:
/// a refused stream (REFUSED_STREAM: the mirror did not act on it) is sent once more, counted as
/// a retry, and an I/O error when refused again; a stream reset before its answer and an answer
/// broken off by a reset are I/O errors, never sent twice; the ordinary copy is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_refused_reset_or_broken_off_are_counted() {
    use std::sync::Mutex;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let server_seen = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let seen = server_seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let path = request.uri().path().to_string();
                    seen.lock().unwrap().push(path.clone());
                    match path.as_str() {
                        "/refuse" => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        "/reset" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                        "/broken" => {
                            let mut s = respond
                                .send_response(hyper::Response::new(()), false)
                                .unwrap();
                            let _ = s.send_data(bytes::Bytes::from_static(b"part"), false);
                            s.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                        _ => {
                            let mut s = respond
                                .send_response(hyper::Response::new(()), false)
                                .unwrap();
                            let _ = s.send_data(bytes::Bytes::from_static(b"ok"), true);
                        }
                    }
                }
            });
        }
    });
    let mut spec = spec(addr, "h2", 100.0);
    spec.protocol = mirror_agent::replay::spec::MirrorProtocol::Http2;
    let mut cfg = config(vec![spec]);
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    for path in ["/refuse", "/reset", "/broken", "/ok"] {
        replayer.submit(&one(
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()
        ));
    }
    wait_until_or(
        "every copy resolved",
        Duration::from_secs(10),
        || {
            let m = &replayer.snapshot().mirrors[0];
            m.sampled == 4 && m.in_flight == 0
        },
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    server.abort();
    let m = &snap.mirrors[0];
    assert_eq!(m.error(ErrorKind::Io), 3, "{m:?}");
    assert_eq!((m.status[1], m.retries, m.timeouts), (1, 1, 0), "{m:?}");
    assert_eq!(m.dropped_count(), 0, "{m:?}");
    assert!(m.balanced(), "{m:?}");
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["/broken", "/ok", "/refuse", "/refuse", "/reset"],
        "a refused stream goes twice, nothing else does"
    );
}
