//! Replay throughput and cost, printed as a table (no assertions on timing). Run with:
//! `cargo test --release -p mirror-agent --test replay_bench -- --ignored --nocapture`
//!
//! Measures, against a fast loopback mirror (in this process): the cost of `submit` on the
//! calling (capture) thread, the end-to-end rate, and the process CPU time per mirrored request
//! (agent side and the test mirror together, so an upper bound for the agent).
//!
//! `replay_h2_cost` (and `replay_h1_cost`, HTTP/1.1 to `fast-mirror`): the same over HTTP/2 (`protocol=h2`) to `fast-mirror --h2` in its own
//! process (`MIRROR_FAST_MIRROR`, default `target/release/fast-mirror`: `cargo build --release
//! -p mirror-tests --bin fast-mirror`), so the CPU printed is the replay's alone: the part of
//! `cargo xtask bench h2`'s per-stream cost that HTTP/2 replay adds, without the capture, nginx
//! and h2load around it. Offered unpaced (kept below half the queue) and paced.

mod replay_common;

use std::time::{Duration, Instant};

use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

fn cpu_time() -> Duration {
    // SAFETY: rusage is plain C data (integers and timevals), for which all zeroes is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints a table; run with --ignored --nocapture"]
async fn replay_throughput() {
    println!(
        "{:<28} {:>9} {:>12} {:>12} {:>14} {:>9}",
        "case", "requests", "submit ns", "req/s", "cpu us/req", "dropped"
    );
    for (case, body, conns) in [
        ("GET, 8 conns", 0usize, 8),
        ("GET, 32 conns", 0, 32),
        ("POST 16 KiB, 8 conns", 16 << 10, 8),
    ] {
        let mirror = TestMirror::start(Behavior::Ok).await;
        let mut cfg = config(vec![mirror.spec("m", 100.0)]);
        cfg.max_connections = conns;
        cfg.timeout = Duration::from_secs(5);
        let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
        let raw = if body == 0 {
            "GET /bench?x=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
                .to_string()
        } else {
            format!(
                "POST /bench HTTP/1.1\r\nHost: bench\r\nContent-Length: {body}\r\n\r\n{}",
                "x".repeat(body)
            )
        };
        let req = one(raw.as_bytes());
        let n = 50_000u64;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        let mut submit_ns = 0u128;
        for i in 0..n {
            let s = Instant::now();
            replayer.submit(&req);
            submit_ns += s.elapsed().as_nanos();
            if i % 1000 == 999 {
                // Offered at a bounded rate so the queue (4096) measures throughput, not drops.
                while replayer.max_queue_fill() > 0.5 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        let snap = replayer.shutdown(Duration::from_secs(30)).await;
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        let m = &snap.mirrors[0];
        println!(
            "{:<28} {:>9} {:>12.0} {:>12.0} {:>14.1} {:>9}",
            case,
            m.status[1],
            submit_ns as f64 / n as f64,
            m.status[1] as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / m.status[1].max(1) as f64,
            m.dropped_count()
        );
        assert!(m.balanced());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints a table; run with --ignored --nocapture"]
async fn replay_h2_cost() {
    replay_cost(true).await
}

/// The same over HTTP/1.1 to `fast-mirror`, copies from 1000 client connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints a table; run with --ignored --nocapture"]
async fn replay_h1_cost() {
    replay_cost(false).await
}

async fn replay_cost(h2: bool) {
    let bin = std::env::var_os("MIRROR_FAST_MIRROR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fast-mirror")
        });
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p mirror-tests --bin fast-mirror",
        bin.display()
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg(addr.to_string());
    if h2 {
        cmd.arg("--h2");
    }
    let mut mirror = cmd.spawn().expect("fast-mirror");
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{:<28} {:>9} {:>12} {:>14} {:>9}",
        if h2 {
            "case (HTTP/2 replay)"
        } else {
            "case (HTTP/1.1 replay)"
        },
        "requests",
        "req/s",
        "cpu us/req",
        "dropped"
    );
    let raw = "GET /bench?x=1 HTTP/1.1\r\nHost: bench\r\nUser-Agent: h2load\r\nAccept: */*\r\n\r\n";
    let mut req = one(raw.as_bytes());
    // HTTP/2: captured as a stream, each copy is a queue line of its own, as h2load's
    // concurrent streams are in `bench h2`. HTTP/1.1: copies of 1000 client connections (each
    // connection's copies go in order).
    req.request.h2_stream = h2.then_some(1);
    let reqs: Vec<_> = (0..1000u64)
        .map(|k| {
            let mut r = req.clone();
            r.flow_id = k;
            r
        })
        .collect();
    for (case, rate) in [("GET, unpaced", None), ("GET, 30k/s", Some(30_000u64))] {
        let mut m = spec(addr, "m", 100.0);
        if h2 {
            m.protocol = mirror_agent::replay::spec::MirrorProtocol::Http2;
        }
        let mut cfg = config(vec![m]);
        cfg.timeout = Duration::from_secs(5);
        let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
        // Connections opened before the clock starts.
        replayer.submit(&req);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = 150_000u64;
        let (cpu0, t0) = (cpu_time(), Instant::now());
        for i in 0..n {
            replayer.submit(&reqs[(i % 1000) as usize]);
            if i % 500 == 499 {
                match rate {
                    Some(r) => {
                        let due = t0 + Duration::from_secs_f64((i + 1) as f64 / r as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    None => {
                        while replayer.max_queue_fill() > 0.5 {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    }
                }
            }
        }
        let snap = replayer.shutdown(Duration::from_secs(30)).await;
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        let m = &snap.mirrors[0];
        let answered = m.status[1].saturating_sub(1);
        println!(
            "{:<28} {:>9} {:>12.0} {:>14.2} {:>9}",
            case,
            answered,
            answered as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / answered.max(1) as f64,
            m.dropped_count()
        );
        assert!(m.balanced());
    }
    let _ = mirror.kill();
    let _ = mirror.wait();
}
