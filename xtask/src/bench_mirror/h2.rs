//! `cargo xtask bench h2`: issue 13's HTTP/2 benchmark. h2load (client namespace) drives an
//! nginx primary serving h2c (node namespace), without the agent, then with the agent capturing
//! the primary's port and mirroring every stream over HTTP/2 to fast-mirror serving h2c
//! (`fast-mirror --h2`, mirrors namespace), pinned layout: h2load and the primary on CPU 0, the
//! agent and the mirror on CPU 1.
//!
//! Runs, back to back: `off`, `on`, `on, protocol=h1`, `off` at h2load's full rate (the ratio
//! divides by the mean of the two `off` runs; `protocol=h1` replays the same streams in their
//! HTTP/1.1 form to fast-mirror over HTTP/1.1, which splits the agent's cost between capture
//! and HTTP/2 replay), then a paced pair (`--rps` per client) where the mirror and the agent
//! have CPU to spare: completeness there is the agent's own. Printed: one row per run (h2load's
//! requests per second and mean latency, ratio, streams captured and mirrored, completeness and
//! its shortfall, agent CPU per mirrored stream, CPU shares, peak RSS), then the issue's
//! targets: ratio >= 0.97 pinned, completeness >= 99.9% when the mirror has capacity (paced),
//! agent CPU per mirrored stream <= 10 us.
//!
//! Knobs (environment): `MIRROR_BENCH_SECS` (10), `MIRROR_BENCH_H2_CLIENTS` (h2load `-c`, 16),
//! `MIRROR_BENCH_H2_STREAMS` (`-m`, streams in flight per connection, 10),
//! `MIRROR_BENCH_H2_RPS` (the paced runs' `--rps` per client, 2000), `MIRROR_BENCH_AGENT`,
//! `MIRROR_BENCH_PERF=FILE` (`perf record -g` of the agent during the full-rate `on` run).

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::world::{self, FAST_PORT, MIRROR, NS, PORT, PRIMARY, World};
use super::{
    AgentRun, Layout, Settings, binaries, measure, measured, spawn_agent, start_fast_mirror_on,
};
use crate::netns::ns_cmd_on;
use crate::util::is_root;

/// h2load's totals for one run.
struct H2load {
    succeeded: u64,
    failed: u64,
    rps: f64,
    mean_ms: f64,
}

/// Parses h2load's summary: `finished in 10.00s, 95054.30 req/s, ...`, `requests: N total,
/// N started, N done, N succeeded, N failed, ...` and the `time for request:` row
/// (min max mean sd, each with its unit).
fn parse_h2load(text: &str) -> Result<H2load> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .context("h2load: no `finished in` line")?;
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .context("h2load: no `requests:` line")?;
    let count = |what: &str| -> Result<u64> {
        requests
            .split(", ")
            .find_map(|p| p.strip_suffix(what))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("h2load: no `{what}` count in {requests:?}"))
    };
    let mean = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .context("h2load: no `time for request:` row")?;
    let mean_ms = if let Some(v) = mean.strip_suffix("us") {
        v.parse::<f64>()? / 1e3
    } else if let Some(v) = mean.strip_suffix("ms") {
        v.parse::<f64>()?
    } else if let Some(v) = mean.strip_suffix('s') {
        v.parse::<f64>()? * 1e3
    } else {
        bail!("h2load: mean latency {mean:?}")
    };
    Ok(H2load {
        succeeded: count(" succeeded")?,
        failed: count(" failed")?,
        rps,
        mean_ms,
    })
}

struct Knobs {
    clients: u32,
    streams: u32,
    rps: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    /// Mirrored over HTTP/2 (`protocol=auto`).
    On,
    /// The same streams mirrored in their HTTP/1.1 form (`protocol=h1`).
    OnHttp1,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::OnHttp1 => "on, protocol=h1",
        }
    }
}

/// The HTTP/1.1 fast-mirror's port (the HTTP/2 one listens on `FAST_PORT`).
const FAST_H1_PORT: u16 = FAST_PORT + 1;

struct Run {
    mode: Mode,
    paced: bool,
    load: String,
    h2load: H2load,
    wall: f64,
    primary_cpu: f64,
    mirror_cpu: f64,
    busy: String,
    agent: Option<AgentRun>,
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("bench h2 needs root (namespaces, eBPF)");
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let num = |k: &str, d: u32| -> Result<u32> {
        env(k).map_or(Ok(d), |v| {
            v.parse().with_context(|| format!("{k}: a number"))
        })
    };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 {
        bail!("bench h2 needs the pinned layout: 2 CPUs, this machine has {ncpu}");
    }
    let secs = env("MIRROR_BENCH_SECS").map_or(Ok(10), |v| v.parse())?;
    let knobs = Knobs {
        clients: num("MIRROR_BENCH_H2_CLIENTS", 16)?,
        streams: num("MIRROR_BENCH_H2_STREAMS", 10)?,
        rps: num("MIRROR_BENCH_H2_RPS", 2000)?,
    };
    if !(1..=1000).contains(&knobs.clients) || !(1..=100).contains(&knobs.streams) {
        bail!("MIRROR_BENCH_H2_CLIENTS: 1-1000; MIRROR_BENCH_H2_STREAMS: 1-100");
    }
    let (agent_bin, fast_mirror_bin) = binaries()?;
    let s = Settings {
        secs,
        layouts: vec![Layout::Pinned],
        compare: false,
        agent_bin,
        fast_mirror_bin,
        ncpu,
        connections: knobs.clients,
    };
    let load = measure::loadavg();
    let _bpf_stats = measure::BpfStats::enable();
    let mut world = World::default();
    let runs = bench(&mut world, &s, &knobs);
    drop(world);
    let runs = runs?;
    super::print_header(&s, &load);
    println!(
        "each run: h2load -c {} -m {} for {secs} s (GET over h2c), back to back: off, on, off, \
         then paced (--rps {} per client): off, on; mirror: 100% over HTTP/2 (protocol auto) to \
         fast-mirror --h2; ratio = primary req/s / mean of the two unpaced `off` runs",
        knobs.clients, knobs.streams, knobs.rps
    );
    println!("{}", super::STATS_CAVEAT);
    report(&runs);
    Ok(())
}

fn bench(world: &mut World, s: &Settings, k: &Knobs) -> Result<Vec<Run>> {
    world.create()?;
    let primary = world.nginx_with(NS[1], "primary", PRIMARY, true)?;
    let fast = start_fast_mirror_on(world, s, FAST_PORT, true)?;
    let fast_h1 = start_fast_mirror_on(world, s, FAST_H1_PORT, false)?;
    let [node_cpus, mirror_cpus, _] = Layout::Pinned.cpus(s.ncpu);
    world::pin(world.pid(primary), &node_cpus)?;
    world::pin(world.pid(fast), &mirror_cpus)?;
    world::pin(world.pid(fast_h1), &mirror_cpus)?;
    h2load(s, k, 2, false)?;
    let mut runs = Vec::new();
    for (mode, paced) in [
        (Mode::Off, false),
        (Mode::On, false),
        (Mode::OnHttp1, false),
        (Mode::Off, false),
        (Mode::Off, true),
        (Mode::On, true),
    ] {
        println!(
            "bench h2: {} s of h2load{}, agent {} ...",
            s.secs,
            if paced { " (paced)" } else { "" },
            mode.label()
        );
        let mirror = if mode == Mode::OnHttp1 { fast_h1 } else { fast };
        runs.push(one(world, s, k, mode, paced, (primary, mirror))?);
    }
    Ok(runs)
}

fn h2load(s: &Settings, k: &Knobs, secs: u64, paced: bool) -> Result<H2load> {
    let [node_cpus, _, _] = Layout::Pinned.cpus(s.ncpu);
    let mut cmd = ns_cmd_on(NS[0], Some(&node_cpus), "h2load");
    cmd.args([
        "-t",
        "1",
        "-c",
        &k.clients.to_string(),
        "-m",
        &k.streams.to_string(),
        "-D",
        &secs.to_string(),
    ]);
    if paced {
        cmd.arg(format!("--rps={}", k.rps));
    }
    cmd.arg(format!("http://{PRIMARY}:{PORT}/bench"));
    let out = cmd
        .output()
        .context("running h2load (nghttp2-client; cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_h2load(&text)
}

fn one(
    world: &mut World,
    s: &Settings,
    k: &Knobs,
    mode: Mode,
    paced: bool,
    (primary, mirror): (usize, usize),
) -> Result<Run> {
    let load = measure::loadavg();
    let name = format!(
        "agent-h2-{}-{}",
        if paced { "paced" } else { "full" },
        mode.label().replace([' ', ',', '='], "-")
    );
    let mirror_arg = match mode {
        Mode::Off => None,
        Mode::On => Some(format!("http://{MIRROR}:{FAST_PORT},name=fast")),
        Mode::OnHttp1 => Some(format!(
            "http://{MIRROR}:{FAST_H1_PORT},name=fast,protocol=h1"
        )),
    };
    let agent = mirror_arg
        .map(|m| spawn_agent(world, s, Layout::Pinned, &name, &["--mirror".into(), m]))
        .transpose()?;
    // A profile of the agent over the full-rate HTTP/2 run, when asked for.
    let perf = match (agent, std::env::var("MIRROR_BENCH_PERF")) {
        (Some(i), Ok(file)) if !file.is_empty() && mode == Mode::On && !paced => Some(
            std::process::Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o", &file, "-p"])
                .arg(world.pid(i).to_string())
                .args(["--", "sleep", &s.secs.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("perf record")?,
        ),
        _ => None,
    };
    let phase = measured(world, agent, &name, (primary, mirror), |_| {
        let h = h2load(s, k, s.secs, paced)?;
        if let Some(mut p) = perf {
            p.wait()?;
        }
        Ok(h)
    })?;
    // Let the mirror's connections close before the next run.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Run {
        mode,
        paced,
        load,
        h2load: phase.out,
        wall: phase.wall,
        primary_cpu: phase.primary_cpu,
        mirror_cpu: phase.mirror_cpu,
        busy: phase.busy,
        agent: phase.agent,
    })
}

fn report(runs: &[Run]) {
    let offs: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == Mode::Off && !r.paced)
        .map(|r| r.h2load.rps)
        .collect();
    let base = (!offs.is_empty()).then(|| offs.iter().sum::<f64>() / offs.len() as f64);
    println!();
    println!(
        "| h2load | agent | load before | primary req/s | ratio | mean ms | failed | captured | mirrored | completeness | shortfall: queue full / other; kernel ring full | agent CPU / mirrored stream | CPU share agent / primary / mirror | CPU busy % (softirq, steal) per CPU | agent RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = match (r.paced, base) {
            (false, Some(b)) => format!("{:.3}", r.h2load.rps / b),
            _ => "-".into(),
        };
        let share = |cpu: f64| format!("{:.0}%", cpu * 100.0 / r.wall);
        let agent_cols = match &r.agent {
            None => "- | - | - | - | - | -".to_string(),
            Some(a) => format!(
                "{} | {} | {:.3}% | {} / {}; {} | {:.1} us | {}",
                a.table.captured,
                a.table.sent,
                a.completeness() * 100.0,
                a.table.queue_full,
                a.table.other_loss(),
                a.ring_full(),
                a.us_per(),
                share(a.cpu)
            ),
        };
        println!(
            "| {} | {} | {} | {:.0} | {ratio} | {:.2} | {} | {agent_cols} / {} / {} | {} | {} |",
            if r.paced { "paced" } else { "full" },
            r.mode.label(),
            r.load,
            r.h2load.rps,
            r.h2load.mean_ms,
            r.h2load.failed,
            share(r.primary_cpu),
            share(r.mirror_cpu),
            r.busy,
            r.agent.as_ref().map_or("-".into(), |a| format!(
                "{:.1} MiB",
                a.rss_kib as f64 / 1024.0
            )),
        );
    }
    println!();
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    for r in runs.iter().filter(|r| r.mode != Mode::Off) {
        let Some(a) = &r.agent else { continue };
        let tag = format!(
            "{}, {}",
            if r.paced { "paced" } else { "full rate" },
            r.mode.label()
        );
        println!(
            "[{tag}] h2load succeeded {}, agent captured {}, mirrored {}; replay: {}",
            r.h2load.succeeded, a.table.captured, a.table.sent, a.table.detail
        );
        if let Some(c) = &a.capture {
            println!("[{tag}] capture: {c}");
        }
        for l in &a.losses {
            println!("[{tag}] pipeline loss: {l}");
        }
        if let Some(k) = &a.classifier {
            println!(
                "[{tag}] classifier (kernel BPF statistics): {:.0} ns per packet, {} packets, {:.1}% of one CPU",
                k.ns_per_packet,
                k.packets,
                k.cpu_share * 100.0
            );
        }
    }
    println!();
    for r in runs.iter().filter(|r| r.mode == Mode::On) {
        let Some(a) = &r.agent else { continue };
        if r.paced {
            println!(
                "targets, paced (mirror with capacity): {}; agent CPU {:.1} us per mirrored stream (<= 10: {})",
                a.completeness_verdict(),
                a.us_per(),
                ok(a.us_per() <= 10.0)
            );
        } else if let Some(b) = base {
            let ratio = r.h2load.rps / b;
            println!(
                "targets, full rate: throughput ratio {ratio:.3} (>= 0.97: {}); agent CPU {:.1} us per mirrored stream (<= 10: {}); {}",
                ok(ratio >= 0.97),
                a.us_per(),
                ok(a.us_per() <= 10.0),
                a.completeness_verdict()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_h2load;

    #[test]
    fn h2load_summary() {
        let text = "starting benchmark...\n\nfinished in 10.00s, 95054.30 req/s, 3.08MB/s\n\
                    requests: 950543 total, 950543 started, 950543 done, 950500 succeeded, 43 failed, 0 errored, 0 timeout\n\
                    status codes: 950543 2xx, 0 3xx, 0 4xx, 0 5xx\n\
                    time for request:      101us     12.3ms      1.65ms       401us    70.00%\n";
        let h = parse_h2load(text).unwrap();
        assert_eq!((h.succeeded, h.failed), (950_500, 43));
        assert!((h.rps - 95054.3).abs() < 1e-6);
        assert!((h.mean_ms - 1.65).abs() < 1e-9);
        assert!(parse_h2load("garbage").is_err());
    }
}
