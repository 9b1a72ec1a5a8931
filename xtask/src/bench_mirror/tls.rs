//! `cargo xtask bench tls`: issue 14's TLS benchmark. wrk over HTTPS (client namespace) drives
//! an nginx primary that terminates TLS itself (node namespace, the system OpenSSL), without the
//! agent, then with the agent reading the primary's plaintext through its libssl (`--tls auto`)
//! and mirroring every request to fast-mirror over HTTP/1.1 (mirrors namespace); pinned layout:
//! wrk and the primary on CPU 0, the agent and the mirror on CPU 1.
//!
//! Runs, back to back: `off`, `on`, `off` (the ratio divides by the mean of the two `off`
//! runs), `on, --compare` (the primary's write calls probed too: its responses are compared),
//! then `on, client probed`. wrk links the same libssl as nginx; in all but the last run it
//! loads a private copy of it (`LD_LIBRARY_PATH`), which the uprobes (on the system file's
//! inode) do not see, as a client on another machine would not be; the last run lets wrk use
//! the system file, so its own SSL calls trap into the uprobes too (left out in the kernel as
//! the client side of a connection to a captured port, counted `tls_client_side`) and their
//! cost lands on CPU 0 with the primary's. Printed: one row per run (wrk's requests per second,
//! ratio, requests captured and mirrored, completeness, agent CPU per mirrored request, the
//! uprobes' cost per SSL call and the tracepoints' per SSL call from the kernel's BPF
//! statistics, peak RSS), then the targets: ratio >= 0.95, completeness >= 99.9%.
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    On,
    /// On with `--compare`: the primary's responses are read too (its write calls probed).
    OnCompare,
    /// On, and wrk uses the probed libssl too.
    OnClientProbed,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::OnCompare => "on, --compare",
            Self::OnClientProbed => "on, client probed",
        }
    }
}

struct Run {
    mode: Mode,
    load: String,
    rps: f64,
    wall: f64,
    primary_cpu: f64,
    mirror_cpu: f64,
    busy: String,
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
         with ssl, back to back: off, on, off, on with --compare (wrk on a private copy of \
         libssl, not probed, as a remote client), then on with wrk on the probed system libssl; \
         agent: --tls auto, mirror 100% to fast-mirror over HTTP/1.1; ratio = primary req/s / \
         mean of the two `off` runs"
    );
    println!("{}", super::STATS_CAVEAT);
    report(&runs);
    Ok(())
}

/// The system libssl wrk would load (the file the agent's uprobes are on).
const SYSTEM_LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

/// A private copy of the system libssl for wrk: another inode, so not probed.
fn client_libdir(world: &World) -> Result<std::path::PathBuf> {
    let dir = world.dir.join("client-lib");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(SYSTEM_LIBSSL, dir.join("libssl.so.3"))
        .map_err(|e| anyhow::anyhow!("copying {SYSTEM_LIBSSL} for wrk: {e}"))?;
    Ok(dir)
}

fn bench(world: &mut World, s: &Settings) -> Result<Vec<Run>> {
    world.create()?;
    let primary = world.nginx_tls(NS[1], "primary", PRIMARY)?;
    let fast = start_fast_mirror_on(world, s, FAST_PORT, false)?;
    let [node_cpus, mirror_cpus, _] = Layout::Pinned.cpus(s.ncpu);
    world::pin(world.pid(primary), &node_cpus)?;
    world::pin(world.pid(fast), &mirror_cpus)?;
    let libdir = client_libdir(world)?;
    wrk(s, 2, Some(&libdir))?;
    let mut runs = Vec::new();
    for mode in [
        Mode::Off,
        Mode::On,
        Mode::Off,
        Mode::OnCompare,
        Mode::OnClientProbed,
    ] {
        println!(
            "bench tls: {} s of wrk over HTTPS, agent {} ...",
            s.secs,
            mode.label()
        );
        let lib = (mode != Mode::OnClientProbed).then_some(libdir.as_path());
        runs.push(one(world, s, mode, lib, (primary, fast))?);
    }
    Ok(runs)
}

/// wrk for `secs`; with `libdir`, loading its libssl from there.
fn wrk(s: &Settings, secs: u64, libdir: Option<&std::path::Path>) -> Result<f64> {
    let [node_cpus, _, _] = Layout::Pinned.cpus(s.ncpu);
    let mut cmd = ns_cmd_on(NS[0], Some(&node_cpus), "wrk");
    if let Some(d) = libdir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
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
    mode: Mode,
    libdir: Option<&std::path::Path>,
    (primary, mirror): (usize, usize),
) -> Result<Run> {
    let load = measure::loadavg();
    let name = format!("agent-tls-{}", mode.label().replace([' ', ','], "-"));
    let mut args = vec![
        "--tls".into(),
        "auto".into(),
        "--mirror".into(),
        format!("http://{MIRROR}:{FAST_PORT},name=fast"),
    ];
    if mode == Mode::OnCompare {
        args.push("--compare".into());
    }
    let agent = (mode != Mode::Off)
        .then(|| spawn_agent(world, s, Layout::Pinned, &name, &args))
        .transpose()?;
    // A system-wide profile of the `on` run, when asked for (`MIRROR_BENCH_PERF=FILE`).
    let perf = match std::env::var("MIRROR_BENCH_PERF") {
        Ok(file) if !file.is_empty() && mode == Mode::On => Some(
            std::process::Command::new("perf")
                .args(["record", "-F", "999", "-a", "-g", "-o", &file])
                .args(["--", "sleep", &s.secs.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ),
        _ => None,
    };
    let phase = measured(world, agent, &name, (primary, mirror), |w| {
        let before = agent.map(|i| probe_stats(w.pid(i)));
        let rps = wrk(s, s.secs, libdir)?;
        if let Some(mut p) = perf {
            p.wait()?;
        }
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
        mode,
        load,
        rps,
        wall: phase.wall,
        primary_cpu: phase.primary_cpu,
        mirror_cpu: phase.mirror_cpu,
        busy: phase.busy,
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
    let offs: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::Off)
        .map(|r| r.rps)
        .collect();
    let base = (!offs.is_empty()).then(|| offs.iter().sum::<f64>() / offs.len() as f64);
    println!();
    println!(
        "| agent | load before | primary req/s | ratio | captured | mirrored | completeness | agent CPU / mirrored request | SSL calls (copied / client side) | uprobes ns per SSL call | tracepoints ns per SSL call | CPU share agent / primary / mirror | CPU busy % (softirq, steal) per CPU | agent RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = base.map_or("-".into(), |b| format!("{:.3}", r.rps / b));
        let share = |cpu: f64| format!("{:.0}%", cpu * 100.0 / r.wall);
        let cols = match (&r.agent, r.probes) {
            (Some(a), Some([(un, _), (tn, _)])) => {
                let copied = capture_field(a, "tls_calls");
                let client = capture_field(a, "tls_client_side");
                let calls = (copied + client).max(1) as f64;
                format!(
                    "{} | {} | {:.3}% | {:.1} us | {copied} / {client} | {:.0} | {:.0} | {} / {} / {} | {} | {:.1} MiB",
                    a.table.captured,
                    a.table.sent,
                    a.completeness() * 100.0,
                    a.us_per(),
                    un as f64 / calls,
                    tn as f64 / calls,
                    share(a.cpu),
                    share(r.primary_cpu),
                    share(r.mirror_cpu),
                    r.busy,
                    a.rss_kib as f64 / 1024.0
                )
            }
            _ => format!(
                "- | - | - | - | - | - | - | - / {} / {} | {} | -",
                share(r.primary_cpu),
                share(r.mirror_cpu),
                r.busy
            ),
        };
        println!(
            "| {} | {} | {:.0} | {ratio} | {cols} |",
            r.mode.label(),
            r.load,
            r.rps
        );
    }
    println!();
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    for r in runs.iter().filter(|r| r.mode != Mode::Off) {
        let Some(a) = &r.agent else { continue };
        let tag = r.mode.label();
        if let Some(c) = &a.capture {
            println!("[{tag}] capture: {c}");
        }
        for l in &a.losses {
            println!("[{tag}] pipeline loss: {l}");
        }
        println!("[{tag}] replay: {}", a.table.detail);
        if let Some(b) = base {
            let ratio = r.rps / b;
            println!(
                "targets [{tag}]: throughput ratio {ratio:.3} (>= 0.95: {}); {}; agent CPU {:.1} us per mirrored request",
                ok(ratio >= 0.95),
                a.completeness_verdict(),
                a.us_per()
            );
        }
    }
}
