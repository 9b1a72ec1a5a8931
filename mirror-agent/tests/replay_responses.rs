//! Mirror responses are read with correct framing and discarded; a connection is reused only
//! after a cleanly delimited response.

mod replay_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mirror_agent::http::Request;
use mirror_agent::replay::stats::ErrorKind;
use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

fn respond(req: &Request) -> (Vec<u8>, bool) {
    let r = |s: &str, close| (s.as_bytes().to_vec(), close);
    match req.target() {
        "/chunked" => r(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nX-T: 1\r\n\r\n",
            false,
        ),
        // HEAD: the Content-Length describes the GET body, none follows.
        "/head" => r("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", false),
        "/204" => r("HTTP/1.1 204 No Content\r\n\r\n", false),
        "/304" => r(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            false,
        ),
        "/continue" => r(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
            false,
        ),
        "/close-delimited" => r("HTTP/1.1 200 OK\r\n\r\nbody until close", true),
        "/server-close" => r(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            true,
        ),
        "/bad" => r("garbage that is not HTTP\r\n\r\n", false),
        other => panic!("unexpected target {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framing_and_connection_reuse() {
    let mirror = TestMirror::start(Behavior::Script(Arc::new(respond))).await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    // One connection: the connection sequence below is deterministic. The copies are queued at
    // once, so they are pipelined behind each other where allowed; copies written behind a
    // response that ends the connection are retried one at a time (counted as retries).
    cfg.max_connections = 1;
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let seq = [
        ("GET", "/chunked"),
        ("HEAD", "/head"),
        ("GET", "/204"),
        ("GET", "/304"),
        ("POST", "/continue"),
        ("GET", "/close-delimited"), // not reused: the body ends at close
        ("GET", "/chunked"),         // connection 2
        ("GET", "/server-close"),    // the mirror closes after answering
        ("GET", "/chunked"),         // connection 3 (closed idle connection detected or retried)
        ("GET", "/bad"),             // bad response: error, connection dropped
        ("GET", "/chunked"),         // connection 4
    ];
    for (method, target) in seq {
        let body = if method == "POST" {
            "Content-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
        } else {
            "\r\n"
        };
        replayer.submit(&one(format!(
            "{method} {target} HTTP/1.1\r\nHost: h\r\n{body}"
        )
        .as_bytes()));
    }
    wait_until_or(
        "all resolved",
        Duration::from_secs(10),
        || {
            let m = &replayer.snapshot().mirrors[0];
            m.in_flight == 0 && m.sampled == seq.len() as u64
        },
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    let m = &snap.mirrors[0];
    assert_eq!(m.status, [0, 9, 1, 0, 0], "{m:?}");
    assert_eq!(m.error(ErrorKind::BadResponse), 1, "{m:?}");
    assert_eq!(m.error_count(), 1, "{m:?}");
    assert_eq!(m.connects, 4, "{m:?}");
    assert_eq!(mirror.connections.load(Ordering::SeqCst), 4);
    // A retry follows a write into a connection the mirror had already closed (or behind a
    // response that closed it): the mirror never read it, so every request arrives exactly once.
    assert_eq!(mirror.count(), seq.len());
}

/// A 101 answer turns the connection into a tunnel: counted as a final 1xx, never reused.
#[tokio::test]
async fn switching_protocols_is_not_reused() {
    let mirror = TestMirror::start(Behavior::Script(Arc::new(|_: &Request| {
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(), false)
    })))
    .await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.max_connections = 1;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    for _ in 0..2 {
        replayer.submit(&one(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ));
    }
    wait_until("both answered", Duration::from_secs(5), || {
        replayer.snapshot().mirrors[0].status[0] == 2
    })
    .await;
    let snap = finish(&replayer).await;
    assert_eq!(snap.mirrors[0].connects, 2);
}

/// `Connection: close` from the client (and HTTP/1.0 without keep-alive): the mirror will close,
/// so the agent does not keep the connection.
#[tokio::test]
async fn client_connection_close_is_honoured() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let mut cfg = config(vec![mirror.spec("m", 100.0)]);
    cfg.max_connections = 1;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    replayer.submit(&one(
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    ));
    replayer.submit(&one(b"GET /b HTTP/1.0\r\n\r\n"));
    replayer.submit(&one(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"));
    replayer.submit(&one(b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n"));
    wait_until("4 answered", Duration::from_secs(5), || {
        replayer.snapshot().mirrors[0].status[1] == 4
    })
    .await;
    let snap = finish(&replayer).await;
    assert_eq!(
        snap.mirrors[0].connects, 3,
        "/a and /b close, /c and /d share one"
    );
}

/// A mirror that refuses a large upload early (413 as soon as it has the head, as a server
/// with a body size limit does) and closes with most of the body unread, which resets the
/// connection under the agent's write: the copy counts as answered 4xx, not as an I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_to_a_large_upload_is_the_outcome() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = vec![0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            // Dropped with unread body bytes: the kernel answers the agent with a reset.
        }
    });
    let mut cfg = config(vec![spec(addr, "m", 100.0)]);
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let body = vec![b'x'; 10 << 20];
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    replayer.submit(&one(&raw));
    wait_until_or(
        "the upload resolved",
        Duration::from_secs(10),
        || replayer.snapshot().mirrors[0].in_flight == 0,
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    server.abort();
    let m = &snap.mirrors[0];
    assert_eq!((m.status[3], m.error_count()), (1, 0), "{m:?}");
}
