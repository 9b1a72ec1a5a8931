//! `cargo xtask bench capture`: the classifier's cost on the primary's path.
//!
//! wrk in one network namespace drives nginx in another over a veth pair; the same workload runs
//! without the agent, then with the agent (release build) attached to the server's veth end, in
//! the same run. Workloads: small GET requests, and POSTs with 64 KiB bodies. The agent runs with
//! each classifier variant (`MIRROR_CAPTURE_COPY=reserve`, one copy into ring reservations, and
//! `scratch`, the two-copy fallback), so one run compares them. Prints req/s, p50/p99 latency,
//! attached/detached ratios, BPF time per packet and per captured skb
//! (`kernel.bpf_stats_enabled`), the mean payload of a captured skb, and ring-buffer drops
//! reported by the agent.
//!
//! `MIRROR_BENCH_SECS` and `MIRROR_BENCH_ROUNDS` shorten a run (defaults 8 s, 3 rounds).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::lab::Proc;
use crate::netns::Namespace as Ns;
use crate::util::sh;

const SERVER: &str = "10.88.0.1";
const CLIENT: &str = "10.88.0.2";
const PORT: u16 = 8080;
const SECONDS: u32 = 8;
/// Interleaved rounds per mode; the table shows medians.
const ROUNDS: usize = 3;

/// `name` from the environment, else `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const CONNECTIONS: u32 = 32;

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Whether and how the classifier is attached during a run.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Detached,
    /// Agent attached with this ring-buffer size in bytes and classifier variant
    /// (`MIRROR_CAPTURE_COPY`).
    Attached(u64, &'static str),
}

/// The (ingress) program of a classifier variant, as the kernel names it.
fn ingress_program(copy: &str) -> &'static str {
    match copy {
        "scratch" => "mirror_ingress_copy",
        _ => "mirror_ingress",
    }
}

/// Medians over the rounds of one (workload, mode).
struct Row {
    workload: &'static str,
    mode: Mode,
    runs: Vec<WrkResult>,
    bpf_ns: u64,
    bpf_packets: u64,
    ring_drops: u64,
    /// Skbs the agent's classifier captured (summary `captured=`), and their payload bytes.
    captured_skbs: u64,
    captured_bytes: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "bench capture needs root (namespaces, BPF)"
    );
    let agent = crate::ebpf::release_agent()?;

    let dir = std::env::temp_dir().join(format!("mirror-bench-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tag = std::process::id() % 100_000;
    let server = Ns::new(format!("mbench-srv-{tag}"))?;
    let client = Ns::new(format!("mbench-cli-{tag}"))?;
    let (sif, cif) = (format!("mbs{tag}"), format!("mbc{tag}"));
    sh(Command::new("ip").args([
        "link",
        "add",
        &sif,
        "netns",
        server.name(),
        "type",
        "veth",
        "peer",
        "name",
        &cif,
        "netns",
        client.name(),
    ]))?;
    for (ns, ifname, addr) in [(&server, &sif, SERVER), (&client, &cif, CLIENT)] {
        sh(ns
            .cmd("ip")
            .args(["addr", "add", &format!("{addr}/24"), "dev", ifname]))?;
        sh(ns.cmd("ip").args(["link", "set", ifname, "up"]))?;
    }
    let _nginx = start_nginx(&server, &dir)?;
    let post = crate::lab::post_64k_script(&dir)?;

    let stats_before =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let workloads: [(&'static str, Option<&Path>, Vec<Mode>); 2] = [
        (
            "small GET",
            None,
            vec![
                Mode::Detached,
                Mode::Attached(16 << 20, "reserve"),
                Mode::Attached(16 << 20, "scratch"),
            ],
        ),
        (
            "64 KiB POST",
            Some(post.as_path()),
            vec![
                Mode::Detached,
                Mode::Attached(16 << 20, "reserve"),
                Mode::Attached(16 << 20, "scratch"),
                Mode::Attached(64 << 20, "reserve"),
                Mode::Attached(64 << 20, "scratch"),
            ],
        ),
    ];
    // The agent wakes every `DRAIN_INTERVAL_MIN` at these rates (periodic ring drain). On this kind of VM a process
    // that wakes every 10 ms alone doubled wrk's loopback throughput (vCPU idle exits), which
    // would credit the classifier with a speed-up; a waker of the same period runs in every mode
    // to cancel it.
    let stop_waker = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waker = {
        let stop = stop_waker.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(mirror_agent::capture::ebpf::DRAIN_INTERVAL_MIN);
            }
        })
    };
    let (seconds, rounds) = (
        env_or("MIRROR_BENCH_SECS", SECONDS),
        env_or("MIRROR_BENCH_ROUNDS", ROUNDS),
    );
    println!("load average before: {}", load_average());
    let mut rows = Vec::new();
    for (workload, script, modes) in &workloads {
        // Warm up the server and the page cache, untimed.
        wrk(&client, *script, 2)?;
        let first = rows.len();
        for &mode in modes {
            rows.push(Row {
                workload,
                mode,
                runs: Vec::new(),
                bpf_ns: 0,
                bpf_packets: 0,
                ring_drops: 0,
                captured_skbs: 0,
                captured_bytes: 0,
            });
        }
        // Rounds interleave the modes so that load from elsewhere on the machine hits all alike.
        for _round in 0..rounds {
            for (i, &mode) in modes.iter().enumerate() {
                let running = match mode {
                    Mode::Attached(ring, copy) => {
                        Some(start_agent(&server, &sif, &agent, &dir, ring, copy)?)
                    }
                    Mode::Detached => None,
                };
                let result = wrk(&client, *script, seconds)?;
                let row = &mut rows[first + i];
                if let (Some(a), Mode::Attached(_, copy)) = (running, mode) {
                    let (ns, cnt) = bpf_stats(ingress_program(copy)).unwrap_or((0, 0));
                    row.bpf_ns += ns;
                    row.bpf_packets += cnt;
                    let summary = stop_agent(a)?;
                    row.ring_drops += summary("ring_full");
                    row.captured_skbs += summary("captured");
                    row.captured_bytes += summary("bytes");
                }
                row.runs.push(result);
            }
        }
    }
    println!("load average after: {}", load_average());
    stop_waker.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = waker.join();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    print_table(&rows, seconds, rounds);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn start_nginx(ns: &Ns, dir: &Path) -> anyhow::Result<Proc> {
    let conf = crate::lab::nginx_conf(dir, SERVER, PORT)?;
    let child = ns
        .cmd("nginx")
        .args(["-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .context("spawn nginx")?;
    let proc = Proc(child);
    wait_listening(ns, PORT)?;
    Ok(proc)
}

fn wait_listening(ns: &Ns, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns.cmd("ss").arg("-Hltn").output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

struct RunningAgent {
    proc: Proc,
    stdout: PathBuf,
}

fn start_agent(
    ns: &Ns,
    iface: &str,
    agent: &Path,
    dir: &Path,
    ring: u64,
    copy: &str,
) -> anyhow::Result<RunningAgent> {
    let stdout = dir.join("agent.out");
    let stderr = dir.join("agent.err");
    let child = ns
        .cmd(agent.to_str().context("utf-8 path")?)
        .args(["--iface", iface, "--port", &PORT.to_string()])
        .args(["--ring-buffer-size", &ring.to_string()])
        .env("NO_COLOR", "1")
        .env("MIRROR_CAPTURE_COPY", copy)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("spawn agent")?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .contains("capturing;")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "agent did not attach: {}",
            std::fs::read_to_string(&stderr)?
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(RunningAgent { proc, stdout })
}

/// SIGTERM, wait; returns a reader of the final summary's numbers (0 where absent).
fn stop_agent(mut a: RunningAgent) -> anyhow::Result<impl Fn(&str) -> u64> {
    a.proc.signal(crate::lab::SIGTERM)?;
    let _ = a.proc.0.wait();
    let out = std::fs::read_to_string(&a.stdout)?;
    Ok(move |key: &str| {
        out.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    })
}

/// (run_time_ns, run_cnt) of the newest loaded program named `name`. The kernel keeps 15 bytes
/// of a name; bpftool shows either those or the full name from BTF.
fn bpf_stats(name: &str) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let short = &name[..name.len().min(15)];
    let line = text.lines().rfind(|l| {
        l.contains("run_time_ns")
            && (l.contains(&format!(" name {name} ")) || l.contains(&format!(" name {short} ")))
    })?;
    let field = |name: &str| -> Option<u64> {
        let mut it = line.split_whitespace();
        it.find(|w| *w == name)?;
        it.next()?.parse().ok()
    };
    Some((field("run_time_ns")?, field("run_cnt")?))
}

fn wrk(client: &Ns, script: Option<&Path>, seconds: u32) -> anyhow::Result<WrkResult> {
    let mut cmd = client.cmd("wrk");
    cmd.args([
        "-t1",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://{SERVER}:{PORT}/"));
    let out = cmd.output().context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk output")?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_owned()))
            .and_then(|v| duration_ms(&v))
            .with_context(|| format!("no {p} latency in wrk output"))
    };
    Ok(WrkResult {
        rps,
        p50_ms: pct("50%")?,
        p99_ms: pct("99%")?,
    })
}

fn duration_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn print_table(rows: &[Row], seconds: u32, rounds: usize) {
    println!(
        "\n{rounds} interleaved rounds of {seconds} s per row, wrk -t1 -c{CONNECTIONS}, medians shown\n"
    );
    println!(
        "| workload | classifier | req/s | p50 ms | p99 ms | BPF ns/packet | packets | \
         BPF ns/captured skb | mean skb payload | ring drops |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let med = |r: &Row, f: fn(&WrkResult) -> f64| median(r.runs.iter().map(f).collect());
    for r in rows {
        let per = |num: u64, den: u64| {
            if den > 0 {
                format!("{:.0}", num as f64 / den as f64)
            } else {
                "n/a".into()
            }
        };
        let (mode, bpf, packets, per_skb, skb_bytes, drops) = match r.mode {
            Mode::Detached => (
                "detached".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ),
            Mode::Attached(ring, copy) => (
                format!("{copy}, ring {} MiB", ring >> 20),
                per(r.bpf_ns, r.bpf_packets),
                r.bpf_packets.to_string(),
                // All of the program's time over the skbs it captured: pure ACKs and other
                // matched-but-skipped packets cost little but are included.
                per(r.bpf_ns, r.captured_skbs),
                per(r.captured_bytes, r.captured_skbs),
                r.ring_drops.to_string(),
            ),
        };
        println!(
            "| {} | {mode} | {:.0} | {:.3} | {:.3} | {bpf} | {packets} | {per_skb} | {skb_bytes} \
             | {drops} |",
            r.workload,
            med(r, |w| w.rps),
            med(r, |w| w.p50_ms),
            med(r, |w| w.p99_ms),
        );
    }
    println!();
    for r in rows.iter().filter(|r| r.mode != Mode::Detached) {
        let Some(base) = rows
            .iter()
            .find(|b| b.workload == r.workload && b.mode == Mode::Detached)
        else {
            continue;
        };
        let Mode::Attached(ring, copy) = r.mode else {
            continue;
        };
        println!(
            "{} ({copy}, ring {} MiB): throughput ratio attached/detached {:.3}, p99 ratio {:.3}",
            r.workload,
            ring >> 20,
            med(r, |w| w.rps) / med(base, |w| w.rps),
            med(r, |w| w.p99_ms) / med(base, |w| w.p99_ms),
        );
    }
}
