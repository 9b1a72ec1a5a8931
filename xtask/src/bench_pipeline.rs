//! `cargo xtask bench pipeline`: synthesized captures from memory through the pipeline, one
//! thread (= one core), printed as a table. Always measured in release: a debug xtask re-runs
//! itself with `--release`. Rates are per CPU second of the benchmark thread
//! (`CLOCK_THREAD_CPUTIME_ID`), so a busy shared machine slows the run but not the figure; the
//! wall-clock rate is printed next to it.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mirror_agent::app::offline;
use mirror_agent::capture::Segment;
use mirror_agent::capture::pcap::PcapSource;
use mirror_agent::capture::pcap::synth::{self, Conversation, SynthLink};
use mirror_agent::pipeline::{Pipeline, PipelineConfig, PipelineEvent};

pub fn run() -> Result<()> {
    if cfg!(debug_assertions) {
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "xtask",
                "--",
                "bench",
                "pipeline",
            ])
            .status()
            .context("re-running the benchmark in release")?;
        if !status.success() {
            bail!("release benchmark failed: {status}");
        }
        return Ok(());
    }
    println!("pipeline benchmark: release build, 1 thread, best of 5 runs");
    println!(
        "{:<52} {:>12} {:>18} {:>18}",
        "case", "per run", "per core (CPU)", "wall clock"
    );
    let small = small_requests(false);
    let reqs = count_requests(&small);
    row(
        "small keep-alive GETs, segments in memory",
        reqs,
        "req",
        time_segments(&small, false),
        |n, t| format!("{:.0}k req/s", n as f64 / t / 1e3),
    );
    let many = requests_over(MANY_CONNS, MANY_PER_CONN, false);
    row(
        "small keep-alive GETs, 10000 connections",
        count_requests(&many),
        "req",
        time_segments(&many, false),
        |n, t| format!("{:.0}k req/s", n as f64 / t / 1e3),
    );
    drop(many);
    let with_resp = small_requests(true);
    row(
        "small keep-alive GETs + 204 responses paired",
        reqs,
        "req",
        time_segments(&with_resp, true),
        |n, t| format!("{:.0}k req/s", n as f64 / t / 1e3),
    );
    let pcap = synth::pcap_file(1, &synth::frames(SynthLink::Ethernet { vlans: 0 }, &small));
    row(
        "small keep-alive GETs, Ethernet pcap in memory",
        reqs,
        "req",
        time_pcap(&pcap),
        |n, t| format!("{:.0}k req/s", n as f64 / t / 1e3),
    );
    for (mss, name) in [
        (1448, "1 MiB POST bodies, 1448 B segments"),
        (65_483, "1 MiB POST bodies, 64 KiB (GRO) segments"),
    ] {
        let (segs, body) = large_bodies(mss);
        row(name, body, "B", time_segments(&segs, false), |n, t| {
            format!("{:.0} MB/s", n as f64 / t / 1e6)
        });
    }
    // The --record encoder (on the record thread): requests to JSON lines, MB/s of lines.
    for (name, segs) in [
        ("--record encoding, small keep-alive GETs", small.clone()),
        (
            "--record encoding, 64 KiB POST bodies",
            bulk_posts(64 << 10),
        ),
    ] {
        let reqs = captured_requests(&segs);
        let (t, line_bytes) = time_record_encoding(&reqs);
        row(name, line_bytes, "B", t, |n, t| {
            format!(
                "{:.0} MB/s {:.0}k req/s",
                n as f64 / t / 1e6,
                reqs.len() as f64 / t / 1e3
            )
        });
    }
    // Hostile shape: many connections that never finish their headers, past the memory
    // budget. The time per flow must not grow with the head size (each segment over the
    // budget evicts one flow without scanning the others).
    for head_bytes in [1024, 8192] {
        let segs = unfinished_heads(UNFINISHED_FLOWS, head_bytes);
        row(
            &format!(
                "{UNFINISHED_FLOWS} unfinished {} KiB heads, over budget",
                head_bytes >> 10
            ),
            u64::from(UNFINISHED_FLOWS),
            "flows",
            time_unfinished(&segs),
            |n, t| format!("{:.0}k flows/s", n as f64 / t / 1e3),
        );
    }
    Ok(())
}

/// Flows in the unfinished-heads case.
const UNFINISHED_FLOWS: u32 = 100_000;
/// Memory budget of the unfinished-heads case: a fifth of the 1 KiB flows' bytes, so both
/// head sizes run under eviction.
const UNFINISHED_BUDGET: usize = 20 << 20;

/// One segment per flow: a request head without its end, `head_bytes` long.
fn unfinished_heads(flows: u32, head_bytes: usize) -> Vec<Segment> {
    let head = format!(
        "GET / HTTP/1.1\r\nX-Pad: {}\r\n",
        "p".repeat(head_bytes.saturating_sub(32))
    );
    let server: SocketAddr = "10.255.0.1:8080".parse().expect("address");
    (0..flows)
        .flat_map(|i| {
            let client = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1024));
            let mut c = Conversation::new(client, server, [i, 0]);
            c.client_sends(head.as_bytes(), 65_000);
            c.segments
        })
        .collect()
}

/// Best of 3 runs of the unfinished-heads case; every flow ends truncated or evicted.
fn time_unfinished(segs: &[Segment]) -> Times {
    best_of(3, || {
        let input = segs.to_vec();
        let mut p = Pipeline::new(PipelineConfig {
            memory_budget: UNFINISHED_BUDGET,
            ..cfg(false)
        });
        let mut out = Vec::with_capacity(64);
        let t = Clock::start();
        for s in input {
            p.on_segment(s, &mut out);
            out.clear();
        }
        p.finish(&mut out);
        let el = t.stop();
        let s = p.stats();
        assert_eq!(s.request_drops.truncated.count, segs.len() as u64, "{s}");
        el
    })
}

fn row(name: &str, n: u64, unit: &str, t: Times, rate: impl Fn(u64, f64) -> String) {
    let per_run = if unit == "B" {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} {unit}")
    };
    println!(
        "{name:<52} {per_run:>12} {:>18} {:>18}",
        rate(n, t.cpu),
        rate(n, t.wall)
    );
}

/// Best CPU and wall seconds over the runs.
#[derive(Clone, Copy)]
struct Times {
    cpu: f64,
    wall: f64,
}

/// CPU time consumed by this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Measures `f` (wall, cpu) around the part it times itself.
struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }
    fn stop(self) -> (Duration, Duration) {
        (self.wall.elapsed(), thread_cpu() - self.cpu)
    }
}

const CONNS: u16 = 100;
const PER_CONN: usize = 2000;
/// The many-connections case: 10000 connections x 50 GETs, interleaved, so each request finds
/// its flow's state out of cache (issue 17); 50 per connection keeps the flows' creation a small
/// part of the time.
const MANY_CONNS: u16 = 10_000;
const MANY_PER_CONN: usize = 50;

/// 100 connections x 2000 keep-alive GETs (about 90 bytes each, one segment per request),
/// interleaved across connections like a busy server's ingress.
fn small_requests(responses: bool) -> Vec<Segment> {
    requests_over(CONNS, PER_CONN, responses)
}

/// `conns` connections x `per_conn` keep-alive GETs, interleaved across connections.
fn requests_over(conns: u16, per_conn: usize, responses: bool) -> Vec<Segment> {
    let mut convs: Vec<Conversation> = (0..conns)
        .map(|i| {
            let mut c = Conversation::new(
                SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 40000)),
                "10.0.0.1:8080".parse().expect("addr"),
                [1000, 5000],
            );
            c.handshake();
            c
        })
        .collect();
    for n in 0..per_conn {
        for c in convs.iter_mut() {
            let req = format!(
                "GET /api/v1/items/{n}?q=abc HTTP/1.1\r\nHost: svc.local\r\nUser-Agent: bench\r\n\r\n"
            );
            c.client_sends(req.as_bytes(), 1448);
            if responses {
                c.server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", 1448);
            }
        }
    }
    let mut all: Vec<Segment> = convs.into_iter().flat_map(|c| c.segments).collect();
    all.sort_by_key(|s| s.ts_ns);
    all
}

/// 64 POSTs with a 1 MiB body each on 8 connections, body in `mss`-byte segments.
fn large_bodies(mss: usize) -> (Vec<Segment>, u64) {
    let body = vec![b'x'; 1 << 20];
    let mut segs = Vec::new();
    let mut total = 0;
    for i in 0..8u16 {
        let mut c = Conversation::new(
            SocketAddr::from(([10, 2, 0, i as u8], 40000)),
            "10.0.0.1:8080".parse().expect("addr"),
            [1, 1],
        );
        c.handshake();
        for _ in 0..8 {
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut req = head.into_bytes();
            req.extend_from_slice(&body);
            c.client_sends(&req, mss);
            total += body.len() as u64;
        }
        segs.extend(c.segments);
    }
    (segs, total)
}

/// 256 POSTs of `body` bytes each on 16 connections, in 64 KiB (GRO) segments.
fn bulk_posts(body: usize) -> Vec<Segment> {
    let body = vec![b'b'; body];
    let mut segs = Vec::new();
    for i in 0..16u16 {
        let mut c = Conversation::new(
            SocketAddr::from(([10, 3, 0, i as u8], 40000)),
            "10.0.0.1:8080".parse().expect("addr"),
            [1, 1],
        );
        c.handshake();
        for _ in 0..16 {
            let mut req = format!(
                "POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(&body);
            c.client_sends(&req, 65_483);
        }
        segs.extend(c.segments);
    }
    segs
}

/// The requests the pipeline frames from `segs`.
fn captured_requests(segs: &[Segment]) -> Vec<mirror_agent::pipeline::CapturedRequest> {
    let mut p = Pipeline::new(cfg(false));
    let mut out = Vec::new();
    for s in segs.iter().cloned() {
        p.on_segment(s, &mut out);
    }
    p.finish(&mut out);
    out.into_iter()
        .filter_map(|e| match e {
            PipelineEvent::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Best of 5 runs encoding every request into one reused line buffer, as the record thread
/// does; returns the times and the bytes of lines per run.
fn time_record_encoding(reqs: &[mirror_agent::pipeline::CapturedRequest]) -> (Times, u64) {
    let mut bytes = 0u64;
    let t = best_of(5, || {
        let mut line = Vec::with_capacity(4096);
        bytes = 0;
        let t = Clock::start();
        for r in reqs {
            line.clear();
            mirror_agent::record::encode_line(r, &mut line);
            bytes += line.len() as u64 + 1;
        }
        let el = t.stop();
        black_box(&line);
        el
    });
    (t, bytes)
}

fn count_requests(segs: &[Segment]) -> u64 {
    segs.iter()
        .filter(|s| s.payload.starts_with(b"GET "))
        .count() as u64
}

fn cfg(responses: bool) -> PipelineConfig {
    PipelineConfig {
        ports: vec![8080],
        responses,
        ..PipelineConfig::default()
    }
}

/// Best wall time of 5 runs of the pipeline over `segs` (a fresh pipeline each run).
fn time_segments(segs: &[Segment], responses: bool) -> Times {
    best_of(5, || {
        let input = segs.to_vec();
        let mut p = Pipeline::new(cfg(responses));
        let mut out = Vec::with_capacity(64);
        let mut n = 0u64;
        let t = Clock::start();
        for s in input {
            p.on_segment(s, &mut out);
            n += out
                .drain(..)
                .filter(|e| matches!(e, PipelineEvent::Request(_)))
                .count() as u64;
        }
        p.finish(&mut out);
        let el = t.stop();
        black_box(n);
        let s = p.stats();
        assert_eq!(
            s.request_drops.total().count,
            0,
            "benchmark input must frame cleanly:\n{s}"
        );
        el
    })
}

fn time_pcap(bytes: &[u8]) -> Times {
    best_of(5, || {
        let copy = bytes.to_vec();
        let t = Clock::start();
        let mut src = PcapSource::new(std::io::Cursor::new(copy)).expect("synthesized pcap");
        let mut p = Pipeline::new(cfg(false));
        let mut n = 0u64;
        offline::drive(&mut src, &mut p, |e| {
            if matches!(e, PipelineEvent::Request(_)) {
                n += 1;
            }
        })
        .expect("synthesized pcap reads");
        black_box(n);
        t.stop()
    })
}

fn best_of(runs: usize, mut f: impl FnMut() -> (Duration, Duration)) -> Times {
    let all: Vec<(Duration, Duration)> = (0..runs).map(|_| f()).collect();
    Times {
        wall: all
            .iter()
            .map(|t| t.0)
            .min()
            .expect("runs > 0")
            .as_secs_f64(),
        cpu: all
            .iter()
            .map(|t| t.1)
            .min()
            .expect("runs > 0")
            .as_secs_f64(),
    }
}
