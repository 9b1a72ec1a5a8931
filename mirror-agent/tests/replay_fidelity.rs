//! The mirror receives exactly what the client sent (unless an option says otherwise), over real
//! loopback TCP, IPv4 and IPv6.

mod replay_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirror_agent::replay::filter::Filter;
use mirror_agent::replay::rewrite::{HostMode, RewriteOptions};
use mirror_agent::replay::stats::DropReason;
use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

/// GET with odd header case/order/spacing, a 10 MiB POST, a chunked upload with extensions and
/// trailers, and 200 keep-alive requests: each arrives byte for byte.
async fn byte_identical(bind: &str) {
    let mirror = TestMirror::start_on(bind, Behavior::Ok).await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.max_connections = 1; // one connection: order is preserved and reuse is visible
    cfg.timeout = Duration::from_secs(10);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);

    let mut stream = Vec::new();
    stream.extend_from_slice(
        b"GET /search?q=a%20b&x=1 HTTP/1.1\r\nhost: Example.COM\r\nX-CUSTOM-thing:  spaced  value \r\n\
          accept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\nUser-Agent: curl/8.5.0\r\n\r\n",
    );
    let big: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    stream.extend_from_slice(
        format!("POST /upload HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", big.len())
            .as_bytes(),
    );
    stream.extend_from_slice(&big);
    stream.extend_from_slice(
        b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
    );
    for i in 0..200 {
        stream.extend_from_slice(
            format!("GET /k/{i} HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        );
    }
    let reqs = captured(&stream);
    assert_eq!(reqs.len(), 203);
    for r in &reqs {
        replayer.submit(r);
    }
    wait_until(
        "all requests at the mirror",
        Duration::from_secs(20),
        || mirror.count() == reqs.len(),
    )
    .await;
    let got = mirror.received();
    for (sent, recv) in reqs.iter().zip(&got) {
        assert!(
            sent.request.raw == recv.raw,
            "request {} differs",
            sent.request.target()
        );
    }
    let snap = finish(&replayer).await;
    let m = &snap.mirrors[0];
    assert_eq!((m.sampled, m.sent, m.status[1]), (203, 203, 203), "{m:?}");
    assert_eq!(m.connects, 1, "keep-alive: one connection for all: {m:?}");
    assert_eq!(
        mirror.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(snap.completeness(), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_identical_ipv4() {
    byte_identical("127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_identical_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP byte_identical_ipv6: ::1 is not available on this host");
        return;
    }
    byte_identical("[::1]:0").await;
}

#[tokio::test]
async fn rewrite_options_end_to_end() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.max_connections = 1;
    cfg.rewrite = RewriteOptions {
        set_headers: vec![("X-Mirrored-By".into(), "mirror-agent".into())],
        strip_headers: vec!["authorization".into()],
        host: HostMode::Mirror,
        mirror_body: false,
        max_body_size: None,
    };
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    replayer.submit(&one(b"POST /p HTTP/1.1\r\nHost: primary\r\nAuthorization: Bearer s\r\nContent-Length: 5\r\n\r\nhello"));
    replayer.submit(&one(b"PUT /c HTTP/1.1\r\nHost: primary\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
    wait_until("2 requests", Duration::from_secs(5), || mirror.count() == 2).await;
    let got = mirror.received();
    let host = mirror.addr.to_string();
    assert_eq!(
        std::str::from_utf8(&got[0].raw).unwrap(),
        format!(
            "POST /p HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nX-Mirrored-By: mirror-agent\r\n\r\n"
        )
    );
    assert_eq!(
        std::str::from_utf8(&got[1].raw).unwrap(),
        format!(
            "PUT /c HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nX-Mirrored-By: mirror-agent\r\n\r\n"
        )
    );
    let snap = finish(&replayer).await;
    assert_eq!(snap.mirrors[0].status[1], 2);
}

#[tokio::test]
async fn max_body_size_and_filters_are_counted() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.rewrite.max_body_size = Some(4);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    cfg.filter = Filter::new(
        &s(&["GET", "POST"]),
        &s(&["^/api/"]),
        &s(&["^/api/internal"]),
        &[],
    )
    .unwrap();
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let reqs = [
        &b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n"[..], // sent
        b"POST /api/b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd", // sent
        b"POST /api/c HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde", // too large
        b"DELETE /api/d HTTP/1.1\r\nHost: h\r\n\r\n",   // method
        b"GET /static/e HTTP/1.1\r\nHost: h\r\n\r\n",   // not allowed
        b"GET /api/internal/f HTTP/1.1\r\nHost: h\r\n\r\n", // denied
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", // never mirrored
    ];
    for r in reqs {
        replayer.submit(&one(r));
    }
    wait_until("2 requests", Duration::from_secs(5), || mirror.count() == 2).await;
    let snap = finish(&replayer).await;
    let m = &snap.mirrors[0];
    assert_eq!(m.sampled, 7);
    assert_eq!(m.status[1], 2);
    assert_eq!(m.drop_count(DropReason::BodyTooLarge), 1);
    assert_eq!(m.drop_count(DropReason::Filtered), 4);
    assert_eq!(snap.captured, 7);
    let targets: Vec<_> = mirror
        .received()
        .iter()
        .map(|r| r.target().to_string())
        .collect();
    assert!(targets.contains(&"/api/a".to_string()) && targets.contains(&"/api/b".to_string()));
}

#[tokio::test]
async fn on_connect_runs_after_bind_before_connect() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let seen: Arc<Mutex<Vec<(std::net::SocketAddr, std::net::SocketAddr, bool)>>> =
        Default::default();
    let (seen2, peers) = (seen.clone(), mirror.peers.clone());
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.max_connections = 2;
    let hooks = ConnectionHooks {
        opened: Some(Arc::new(move |local, remote| {
            // Before connect, the server cannot have accepted this local address.
            let accepted = peers.lock().unwrap().contains(&local);
            seen2.lock().unwrap().push((local, remote, accepted));
        })),
        closed: None,
    };
    let replayer = Replayer::start(cfg, hooks, NoObserver);
    replayer.submit(&one(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    wait_until("1 request", Duration::from_secs(5), || mirror.count() == 1).await;
    finish(&replayer).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (local, remote, accepted_before) = seen[0];
    assert_eq!(remote, mirror.addr);
    assert_ne!(local.port(), 0, "bound before the hook: the port is known");
    assert!(!accepted_before, "the hook runs before connect");
    assert_eq!(
        mirror.peers.lock().unwrap().as_slice(),
        &[local],
        "the hooked address is the one that connected"
    );
}
