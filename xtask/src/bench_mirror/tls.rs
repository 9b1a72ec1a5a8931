//! `cargo xtask bench tls`: issue 14's TLS benchmark. wrk over HTTPS (client namespace) drives
//! an nginx primary that terminates TLS itself (node namespace, the system OpenSSL), without the
//! agent, then with the agent reading the primary's plaintext through its libssl (`--tls auto`)
//! and mirroring every request to fast-mirror over HTTP/1.1 (mirrors namespace); pinned layout:
//! wrk and the primary on CPU 0, the agent and the mirror on CPU 1.
//!
//! Runs, back to back: `off`, `on`, `off` (the ratio divides by the mean of the two `off`
//! runs). Printed: one row per run (wrk's requests per second, ratio, requests captured and
//! mirrored, completeness, agent CPU per mirrored request, the uprobes' cost per SSL call and
//! the tracepoints' per SSL call from the kernel's BPF statistics, peak RSS), then the issue's
//! targets: ratio >= 0.95, completeness >= 99.9%.
//!
//! wrk links the same libssl, so its own SSL calls hit the uprobes too (left out in the kernel as
//! the client side of a connection to a captured port, counted `tls_client_side`): their cost
//! lands on CPU 0 with the primary's and is in the ratio. The syscall tracepoints run on every
//! read/write-family syscall of the node while the agent runs (a map lookup when the thread is
//! not inside an SSL call).
//!
//! Knobs (environment): `MIRROR_BENCH_SECS` (10), `MIRROR_BENCH_TLS_CONNECTIONS` (wrk `-c`,
//! 16), `MIRROR_BENCH_AGENT`.

use std::time::Duration;

use anyhow::{Result, bail};

use super::world::{self, FAST_PORT, MIRROR, NS, PORT, PRIMARY, World};
use super::{
    AgentRun, Layout, Settings, binaries, measure, measured, spawn_agent, start_fast_mirror_on,
};
use crate::netns::ns_cmd_on;
use crate::util::is_root;

/// BPF program types in /proc/PID/fdinfo (`prog_type:`).
const PROG_KPROBE: u32 = 2;
const PROG_TRACEPOINT: u32 = 5;

struct Run {
    on: bool,
    load: String,
    rps: f64,
    wall: f64,
    primary_cpu: f64,
    mirror_cpu: f64,
    agent: Option<AgentRun>,
    /// (uprobes, tracepoints): run time in ns and runs during the load.
    probes: Option<[(u64, u64); 2]>,
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("bench tls needs root (namespaces, eBPF)");
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 {
        bail!("bench tls needs the pinned layout: 2 CPUs, this machine has {ncpu}");
    }
    let secs = env("MIRROR_BENCH_SECS").map_or(Ok(10), |v| v.parse())?;
    let connections: u32 = env("MIRROR_BENCH_TLS_CONNECTIONS").map_or(Ok(16), |v| v.parse())?;
    if !(1..=1000).contains(&connections) {
        bail!("MIRROR_BENCH_TLS_CONNECTIONS: 1-1000");
    }
    let (agent_bin, fast_mirror_bin) = binaries()?;
    let s = Settings {
        secs,
        layouts: vec![Layout::Pinned],
        compare: false,
        agent_bin,
        fast_mirror_bin,
        ncpu,
        connections,
    };
    let load = measure::loadavg();
    let _bpf_stats = measure::BpfStats::enable();
    let mut world = World::default();
    let runs = bench(&mut world, &s);
    drop(world);
    let runs = runs?;
    super::print_header(&s, &load);
    println!(
        "each run: wrk -t1 -c{connections} for {secs} s (GET over HTTPS, keep-alive) to nginx \
         with ssl, back to back: off, on, off; agent: --tls auto, mirror 100% to fast-mirror \
         over HTTP/1.1; ratio = primary req/s / mean of the two `off` runs"
    );
    report(&runs);
    Ok(())
}

fn bench(world: &mut World, s: &Settings) -> Result<Vec<Run>> {
    world.create()?;
    let primary = world.nginx_tls(NS[1], "primary", PRIMARY)?;
    let fast = start_fast_mirror_on(world, s, FAST_PORT, false)?;
    let [node_cpus, mirror_cpus, _] = Layout::Pinned.cpus(s.ncpu);
    world::pin(world.pid(primary), &node_cpus)?;
    world::pin(world.pid(fast), &mirror_cpus)?;
    wrk(s, 2)?;
    let mut runs = Vec::new();
    for on in [false, true, false] {
        println!(
            "bench tls: {} s of wrk over HTTPS, agent {} ...",
            s.secs,
            if on { "on" } else { "off" }
        );
        runs.push(one(world, s, on, (primary, fast))?);
    }
    Ok(runs)
}

fn wrk(s: &Settings, secs: u64) -> Result<f64> {
    let [node_cpus, _, _] = Layout::Pinned.cpus(s.ncpu);
    let mut cmd = ns_cmd_on(NS[0], Some(&node_cpus), "wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", s.connections),
        &format!("-d{secs}s"),
        "--latency",
        &format!("https://{PRIMARY}:{PORT}/bench"),
    ]);
    Ok(measure::run_wrk(&mut cmd)?.rps)
}

fn one(
    world: &mut World,
    s: &Settings,
    on: bool,
    (primary, mirror): (usize, usize),
) -> Result<Run> {
    let load = measure::loadavg();
    let name = format!("agent-tls-{}", if on { "on" } else { "off" });
    let agent = on
        .then(|| {
            spawn_agent(
                world,
                s,
                Layout::Pinned,
                &name,
                &[
                    "--tls".into(),
                    "auto".into(),
                    "--mirror".into(),
                    format!("http://{MIRROR}:{FAST_PORT},name=fast"),
                ],
            )
        })
        .transpose()?;
    let phase = measured(world, agent, &name, (primary, mirror), |w| {
        let before = agent.map(|i| probe_stats(w.pid(i)));
        let rps = wrk(s, s.secs)?;
        let after = agent.map(|i| probe_stats(w.pid(i)));
        let probes = match (before, after) {
            (Some(b), Some(a)) => Some([
                (a[0].0 - b[0].0, a[0].1 - b[0].1),
                (a[1].0 - b[1].0, a[1].1 - b[1].1),
            ]),
            _ => None,
        };
        Ok((rps, probes))
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let (rps, probes) = phase.out;
    Ok(Run {
        on,
        load,
        rps,
        wall: phase.wall,
        primary_cpu: phase.primary_cpu,
        mirror_cpu: phase.mirror_cpu,
        agent: phase.agent,
        probes,
    })
}

/// (run time ns, runs) of the uprobes and of the tracepoint programs the agent holds.
fn probe_stats(pid: u32) -> [(u64, u64); 2] {
    let by_type = measure::bpf_prog_stats_by_type(pid);
    let get = |t: u32| by_type.get(&t).copied().unwrap_or((0, 0));
    [get(PROG_KPROBE), get(PROG_TRACEPOINT)]
}

/// A `key=` number of the agent's capture line.
fn capture_field(a: &AgentRun, key: &str) -> u64 {
    a.capture
        .as_deref()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn report(runs: &[Run]) {
    let offs: Vec<f64> = runs.iter().filter(|r| !r.on).map(|r| r.rps).collect();
    let base = (!offs.is_empty()).then(|| offs.iter().sum::<f64>() / offs.len() as f64);
    println!();
    println!(
        "| agent | load before | primary req/s | ratio | captured | mirrored | completeness | agent CPU / mirrored request | SSL calls (copied / client side) | uprobes ns per SSL call | tracepoints ns per SSL call | CPU share agent / primary / mirror | agent RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = base.map_or("-".into(), |b| format!("{:.3}", r.rps / b));
        let share = |cpu: f64| format!("{:.0}%", cpu * 100.0 / r.wall);
        let cols = match (&r.agent, r.probes) {
            (Some(a), Some([(un, _), (tn, _)])) => {
                let copied = capture_field(a, "tls_calls");
                let client = capture_field(a, "tls_client_side");
                let calls = (copied + client).max(1) as f64;
                format!(
                    "{} | {} | {:.3}% | {:.1} us | {copied} / {client} | {:.0} | {:.0} | {} / {} / {} | {:.1} MiB",
                    a.table.captured,
                    a.table.sent,
                    a.completeness() * 100.0,
                    a.us_per(),
                    un as f64 / calls,
                    tn as f64 / calls,
                    share(a.cpu),
                    share(r.primary_cpu),
                    share(r.mirror_cpu),
                    a.rss_kib as f64 / 1024.0
                )
            }
            _ => format!(
                "- | - | - | - | - | - | - | - / {} / {} | -",
                share(r.primary_cpu),
                share(r.mirror_cpu)
            ),
        };
        println!(
            "| {} | {} | {:.0} | {ratio} | {cols} |",
            if r.on { "on" } else { "off" },
            r.load,
            r.rps
        );
    }
    println!();
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    for r in runs.iter().filter(|r| r.on) {
        let Some(a) = &r.agent else { continue };
        if let Some(c) = &a.capture {
            println!("[on] capture: {c}");
        }
        for l in &a.losses {
            println!("[on] pipeline loss: {l}");
        }
        println!("[on] replay: {}", a.table.detail);
        if let Some(b) = base {
            let ratio = r.rps / b;
            println!(
                "targets: throughput ratio {ratio:.3} (>= 0.95: {}); {}; agent CPU {:.1} us per mirrored request",
                ok(ratio >= 0.95),
                a.completeness_verdict(),
                a.us_per()
            );
        }
    }
}
