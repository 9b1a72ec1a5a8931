//! Ordering: the requests of one client connection reach the mirror in the client's order, and
//! a request that may not be pipelined (a POST) is answered before the next request of its
//! connection arrives, as on the primary, even with many mirror connections and a mirror that is
//! slow on some requests.

mod replay_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};
use mirror_agent::replay::Replayer;
use replay_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the mirror saw, in its order: a request of (flow, seq) arriving or being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Event {
    Arrived(u64, u64),
    Answered(u64, u64),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Parses `/f{flow}/{seq}`.
fn flow_seq(target: &str) -> (u64, u64) {
    let mut parts = target.trim_start_matches("/f").split('/');
    let flow = parts.next().and_then(|v| v.parse().ok()).expect("flow");
    let seq = parts.next().and_then(|v| v.parse().ok()).expect("seq");
    (flow, seq)
}

/// A mirror that answers POSTs after `post_delay` and everything else at once, logging both.
async fn serve(mut stream: TcpStream, log: Log, post_delay: Duration) {
    let mut framer = RequestFramer::new(HttpLimits::default(), false);
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
                panic!("mirror got a non-request event: {ev:?}");
            };
            let (flow, seq) = flow_seq(&req.target);
            log.lock().unwrap().push(Event::Arrived(flow, seq));
            if req.method == "POST" {
                tokio::time::sleep(post_delay).await;
            }
            log.lock().unwrap().push(Event::Answered(flow, seq));
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Request `seq` of client connection `flow`: every third one a POST.
fn request(flow: u64, seq: u64) -> mirror_agent::pipeline::CapturedRequest {
    let raw = if seq.is_multiple_of(3) {
        format!("POST /f{flow}/{seq} HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    } else {
        format!("GET /f{flow}/{seq} HTTP/1.1\r\nHost: h\r\n\r\n")
    };
    let mut c = one(raw.as_bytes());
    c.flow_id = flow;
    c.seq_in_flow = seq;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_connection_keeps_its_order_at_the_mirror() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let server_log = log.clone();
    let server = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.spawn(serve(stream, server_log.clone(), Duration::from_millis(20)));
        }
    });
    let spec = mirror_agent::replay::spec::MirrorSpec {
        name: "ordered".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        percent: 100.0,
    };
    let mut cfg = config(vec![spec]);
    cfg.timeout = Duration::from_secs(10);
    cfg.max_connections = 8;
    let replayer = Replayer::start(cfg);
    let (flows, per_flow) = (24u64, 12u64);
    // Interleaved as many concurrent clients would be captured: seq 0 of every flow, then 1...
    for seq in 0..per_flow {
        for flow in 0..flows {
            replayer.submit(&request(flow, seq));
        }
    }
    let total = (flows * per_flow) as usize;
    wait_until_or(
        "the mirror answered every copy",
        Duration::from_secs(30),
        || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Event::Answered(..)))
                .count()
                == total
        },
        || format!("{:?}", replayer.snapshot()),
    )
    .await;
    let snap = finish(&replayer).await;
    assert_eq!(snap.mirrors[0].status[1], total as u64, "{snap:?}");
    server.abort();

    let log = log.lock().unwrap().clone();
    let mut position: HashMap<Event, usize> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        position.insert(*e, i);
    }
    for flow in 0..flows {
        let arrivals: Vec<u64> = log
            .iter()
            .filter_map(|e| match e {
                Event::Arrived(f, s) if *f == flow => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(
            arrivals,
            (0..per_flow).collect::<Vec<_>>(),
            "flow {flow}: arrival order at the mirror"
        );
        for seq in (0..per_flow - 1).filter(|s| s.is_multiple_of(3)) {
            let answered = position[&Event::Answered(flow, seq)];
            let next = position[&Event::Arrived(flow, seq + 1)];
            assert!(
                answered < next,
                "flow {flow}: request {} arrived before the POST {seq} was answered",
                seq + 1
            );
        }
    }
}
