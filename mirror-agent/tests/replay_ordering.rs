//! Ordering: the requests of one client connection reach the mirror in the client's order, and
//! a request that may not be pipelined (a POST) is answered before the next request of its
//! connection arrives, as on the primary, even with many mirror connections and a mirror that is
//! slow on some requests.

mod replay_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

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

/// A mirror that answers POSTs after `delay` and everything else at once.
async fn slow_posts(delay: Duration) -> TestMirror {
    TestMirror::start(Behavior::Delayed(Arc::new(move |req| {
        if req.method() == "POST" {
            delay
        } else {
            Duration::ZERO
        }
    })))
    .await
}

/// `/f{flow}/{seq}` of an event.
fn flow_seq(e: &Event) -> (u64, u64) {
    let (Event::Arrived(t) | Event::Answered(t)) = e;
    let mut parts = t.trim_start_matches("/f").split('/');
    let mut next = || {
        parts
            .next()
            .and_then(|v| v.parse().ok())
            .expect("/f{flow}/{seq}")
    };
    (next(), next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_connection_keeps_its_order_at_the_mirror() {
    keeps_order(Submit::OneByOne).await;
}

/// The live agent hands the mirrors each capture batch's requests at once
/// (`Replayer::submit_all`): a batch holding a request of every connection keeps each
/// connection's order too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_many_connections_keep_each_connection_s_order() {
    keeps_order(Submit::Batched).await;
}

#[derive(Clone, Copy)]
enum Submit {
    OneByOne,
    Batched,
}

async fn keeps_order(how: Submit) {
    // POSTs are answered after 20 ms, everything else at once.
    let mirror = slow_posts(Duration::from_millis(20)).await;
    let mut cfg = config(vec![mirror.spec("ordered", 100.0)]);
    cfg.timeout = Duration::from_secs(10);
    cfg.max_connections = 8;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let (flows, per_flow) = (24u64, 12u64);
    // Interleaved as many concurrent clients would be captured: seq 0 of every flow, then 1...
    let captured: Vec<_> = (0..per_flow)
        .flat_map(|seq| (0..flows).map(move |flow| request(flow, seq)))
        .collect();
    match how {
        Submit::OneByOne => captured.iter().for_each(|r| replayer.submit(r)),
        // Three requests of each connection in a batch.
        Submit::Batched => captured
            .chunks(3 * flows as usize)
            .for_each(|batch| replayer.submit_all(batch)),
    }
    let total = (flows * per_flow) as usize;
    let answered = || {
        let events = mirror.events.lock().unwrap();
        events
            .iter()
            .filter(|e| matches!(e, Event::Answered(..)))
            .count()
    };
    wait_until_or(
        "the mirror answered every copy",
        Duration::from_secs(30),
        || answered() == total,
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    assert_eq!(snap.mirrors[0].status[1], total as u64, "{snap:?}");

    let log = mirror.events.lock().unwrap().clone();
    let position: HashMap<&Event, usize> = log.iter().enumerate().map(|(i, e)| (e, i)).collect();
    for flow in 0..flows {
        let arrivals: Vec<u64> = log
            .iter()
            .filter(|e| matches!(e, Event::Arrived(_)))
            .map(flow_seq)
            .filter(|&(f, _)| f == flow)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(
            arrivals,
            (0..per_flow).collect::<Vec<_>>(),
            "flow {flow}: arrival order at the mirror"
        );
        for seq in (0..per_flow - 1).filter(|s| s.is_multiple_of(3)) {
            let answered = position[&Event::Answered(format!("/f{flow}/{seq}"))];
            let next = position[&Event::Arrived(format!("/f{flow}/{}", seq + 1))];
            assert!(
                answered < next,
                "flow {flow}: request {} arrived before the POST {seq} was answered",
                seq + 1
            );
        }
    }
}

/// `--ordering none`: the copies of one client connection go out on their own, so a GET does
/// not wait for the slow POST before it (more throughput for a hot connection, no ordering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordering_a_connection_s_copies_overlap() {
    let mirror = slow_posts(Duration::from_millis(300)).await;
    let mut cfg = config(vec![mirror.spec("unordered", 100.0)]);
    cfg.timeout = Duration::from_secs(10);
    cfg.max_connections = 4;
    cfg.ordered = false;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    replayer.submit(&request(0, 0)); // POST, answered after 300 ms
    replayer.submit(&request(0, 1)); // GET
    wait_until_or(
        "both answered",
        Duration::from_secs(10),
        || replayer.snapshot().mirrors[0].status[1] == 2,
        || replayer.snapshot().table(),
    )
    .await;
    finish(&replayer).await;
    let log = mirror.events.lock().unwrap().clone();
    let at = |e: Event| log.iter().position(|x| *x == e).expect("logged");
    assert!(
        at(Event::Arrived("/f0/1".into())) < at(Event::Answered("/f0/0".into())),
        "the GET went out while the POST was pending: {log:?}"
    );
}

/// Flows that become ready together are spread over the workers, on a runtime of one thread
/// too (`--threads 1`): a worker that takes one flow's batch and leaves others ready wakes the
/// next worker, so POSTs of different connections (never pipelined together) are in flight at
/// once on every connection.
#[tokio::test(flavor = "current_thread")]
async fn ready_flows_are_spread_over_the_workers() {
    let mirror = slow_posts(Duration::from_millis(300)).await;
    let mut cfg = config(vec![mirror.spec("spread", 100.0)]);
    cfg.timeout = Duration::from_secs(10);
    cfg.max_connections = 8;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    // The workers start, find nothing and wait: from here only wakeups bring them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let flows = 16u64;
    for flow in 0..flows {
        replayer.submit(&request(flow, 0)); // a POST each
    }
    wait_until_or(
        "every POST answered",
        Duration::from_secs(30),
        || replayer.snapshot().mirrors[0].status[1] == flows,
        || replayer.snapshot().table(),
    )
    .await;
    finish(&replayer).await;
    // The most POSTs the mirror held at once (arrived, not answered yet).
    let log = mirror.events.lock().unwrap().clone();
    let (mut open, mut most) = (0i32, 0i32);
    for e in &log {
        open += match e {
            Event::Arrived(_) => 1,
            Event::Answered(_) => -1,
        };
        most = most.max(open);
    }
    assert_eq!(most, 8, "all 8 connections busy at once: {log:?}");
}
