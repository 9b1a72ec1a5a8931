//! `cargo xtask bench mirror`: the agent at the primary's full rate, in namespaces.
//!
//! wrk (client namespace) drives nginx, the primary (node namespace), without the agent, then
//! with the agent capturing the primary's port and mirroring every request to a second nginx
//! (mirrors namespace, over its own veth), then with the agent in comparison mode (`--compare`:
//! the primary's responses are captured too and compared with the mirror's). Each run lasts
//! `MIRROR_BENCH_SECS` (30 s, as issue 4 specifies), back to back, for each CPU layout:
//!
//! - `pinned`: wrk and the primary nginx on CPU 0 (the node's busy core), the mirror nginx on
//!   CPU 1 (stands for another host, where a mirror normally runs) and the agent on CPU 1 (stands
//!   for the node's spare core); the same pinning in the run without the agent. This is the fair
//!   measure of what the agent costs the primary.
//! - `shared`: nothing pinned, everything shares every CPU. On a 2-vCPU machine the mirror nginx
//!   then does as much work as the primary on the same cores, so the with-agent run loses about a
//!   third of the CPU to the mirror itself; kept so nothing is hidden.
//!
//! The ratio's baseline brackets the run with the agent: `off` runs before and after it, and the
//! ratio divides by their mean, so a drift of the VM over the minute (seen: 0.85-1.08 between
//! single back-to-back pairs of the same code) shows as the spread of the two `off` rows instead
//! of passing for the agent's cost.
//!
//! The mirror is `fast-mirror` (tests/src/bin/fast-mirror.rs, hyper with `pipeline_flush`), one
//! thread, pinned like the mirror nginx was: the "fast mirror". nginx answers pipelined
//! requests with one writev (one TCP segment) per response, so as a mirror it needs as much CPU
//! per request as the primary; on 2 vCPUs that makes the mirror, not the agent, the limit. The
//! first layout also runs the agent against an nginx mirror (`on, nginx mirror`) to show that.
//!
//! Then, in the first layout, a paced pair (`paced off` / `paced on`): each wrk connection waits
//! `PACE_MS` after every response, which holds the primary at a fraction of its full rate, so the
//! mirror nginx and the agent have CPU to spare. At the full rate on 2 vCPUs the mirror nginx
//! (one writev per response) and the agent share CPU 1 and together need about as much as wrk
//! and the primary on CPU 0, so completeness there measures which core saturates first; the
//! paced pair measures the agent's own completeness and its latency cost to the primary.
//!
//! Printed in one table, a row per run: load average before it, primary throughput (ratio to the
//! same layout's run without the agent) and p99, requests captured and mirrored, completeness
//! and its shortfall by counter (queue full / everything else), agent CPU time per mirrored
//! request (utime + stime from /proc/PID/stat over the loaded phase plus 2 s of drain), the CPU
//! shares of agent, primary and mirror, each CPU's busy share over the load itself (softirq and
//! steal in brackets, from /proc/stat: the classifier and the veth transmit run in softirq; steal
//! is the hypervisor; 100 on CPU 0 means the primary was CPU-bound) and the agent's peak RSS
//! (VmHWM). Then the issue 4 targets per layout and the cost of comparison mode.
//!
//! The agent's classifiers are timed by the kernel (`kernel.bpf_stats_enabled`, on for the
//! bench, restored after): nanoseconds per packet and the share of a CPU they took, which is the
//! agent's direct cost on the CPU that processes the primary's packets.
//!
//! Knobs (environment): `MIRROR_BENCH_SECS`, `MIRROR_BENCH_LAYOUTS` (`pinned,shared`),
//! `MIRROR_BENCH_CONNECTIONS` (wrk's client connections, 32 by default; issue 17 asks for 1000
//! and 10000),
//! `MIRROR_BENCH_COMPARE=0` (skip the comparison run), `MIRROR_BENCH_H2=0` (skip the HTTP/2
//! section, [`h2`], which otherwise follows the HTTP/1.1 report), `MIRROR_BENCH_TLS=0` (skip the
//! TLS section, [`tls`], which follows the HTTP/2 one), `MIRROR_BENCH_AGENT` (an agent binary to
//! use instead of building the release one, for before/after pairs), and any `MIRROR_*` option
//! of the agent itself (e.g. `MIRROR_QUEUE_SIZE`), which the agent inherits and the bench prints.

mod alternate;
pub mod connections;
pub mod h2;
mod measure;
pub mod tls;
mod world;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{ns_cmd, ns_cmd_on, wait_port};
use crate::util::is_root;
use measure::{AgentTable, Wrk};
use world::{FAST_PORT, MIRROR, NS, PORT, PRIMARY, World};

const DEFAULT_SECS: u64 = 30;
/// Delay after each response on every wrk connection in the paced runs (wrk's Lua `delay()`).
const PACE_MS: u32 = 1;
/// After wrk stops, the agent finishes what is queued before CPU and memory are read.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Pinned,
    Shared,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Shared => "shared",
        }
    }

    /// CPU lists for (wrk and the primary, the mirror nginx, the agent).
    fn cpus(self, ncpu: usize) -> [String; 3] {
        match self {
            Self::Pinned => ["0".into(), "1".into(), "1".into()],
            Self::Shared => {
                let all = format!("0-{}", ncpu - 1);
                [all.clone(), all.clone(), all]
            }
        }
    }

    fn describe(self, ncpu: usize) -> String {
        let [node, mirror, agent] = self.cpus(ncpu);
        format!(
            "wrk + primary nginx on CPU {node}, mirror (fast-mirror or nginx) on CPU {mirror}, agent on CPU {agent}"
        )
    }
}

/// Which server plays the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MirrorKind {
    Fast,
    Nginx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Without,
    With,
    Compare,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Without => "off",
            Self::With => "on",
            Self::Compare => "on, --compare",
        }
    }
}

/// What one run measures.
#[derive(Debug, Clone, Copy)]
struct Plan {
    layout: Layout,
    mode: Mode,
    /// wrk paced (see `PACE_MS`) rather than at full rate.
    paced: bool,
    mirror: MirrorKind,
    /// wrk's client connections.
    connections: u32,
    /// Mirrors at 100%, all served by the same mirror server (names `fast`, `fast-2`, ...).
    mirrors: u32,
}

struct Run {
    plan: Plan,
    load: String,
    wrk: Wrk,
    wall: f64,
    primary_cpu: f64,
    mirror_cpu: f64,
    busy: String,
    agent: Option<AgentRun>,
}

impl Plan {
    fn label(&self) -> String {
        let mut l = self.mode.name().to_owned();
        if self.paced {
            l = format!("paced, {l}");
        }
        if self.mirror == MirrorKind::Nginx && self.mode != Mode::Without {
            l.push_str(", nginx mirror");
        }
        if self.mirrors > 1 && self.mode != Mode::Without {
            l.push_str(&format!(", {} mirrors", self.mirrors));
        }
        l
    }
}

/// The agent's classifiers over the loaded phase (kernel BPF statistics): the agent's cost on
/// the CPUs that process the primary's packets.
struct Classifier {
    ns_per_packet: f64,
    packets: u64,
    /// Run time over the phase's wall time: the share of one CPU.
    cpu_share: f64,
}

struct AgentRun {
    classifier: Option<Classifier>,
    cpu: f64,
    /// Copies sent to every mirror together.
    sent_all: u64,
    rss_kib: u64,
    table: AgentTable,
    capture: Option<String>,
    losses: Vec<String>,
    compare: Option<String>,
}

impl AgentRun {
    /// The kernel's ring-buffer reserve failures (`ring_full=` in the capture line).
    fn ring_full(&self) -> u64 {
        self.capture
            .as_deref()
            .and_then(|c| c.split_once("ring_full="))
            .and_then(|(_, v)| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn us_per(&self) -> f64 {
        self.cpu * 1e6 / self.table.sent.max(1) as f64
    }
    fn completeness(&self) -> f64 {
        self.table.sent as f64 / self.table.captured.max(1) as f64
    }
    /// Completeness against the 99.9% target, with its shortfall by counter.
    fn completeness_verdict(&self) -> String {
        format!(
            "completeness {:.3}% (>= 99.9%: {}; shortfall {} = queue full {} + other {}; kernel ring full {})",
            self.completeness() * 100.0,
            if self.completeness() >= 0.999 {
                "met"
            } else {
                "MISSED"
            },
            self.table.shortfall(),
            self.table.queue_full,
            self.table.other_loss(),
            self.ring_full()
        )
    }
}

struct Settings {
    secs: u64,
    layouts: Vec<Layout>,
    compare: bool,
    agent_bin: PathBuf,
    fast_mirror_bin: PathBuf,
    ncpu: usize,
    /// wrk's client connections (`MIRROR_BENCH_CONNECTIONS`, default 32).
    connections: u32,
}

/// wrk and nginx (which inherit it) need a descriptor per client connection: the soft limit on
/// open files goes up to the hard one, which must leave room for `connections`.
fn raise_open_files(connections: u32) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    if lim.rlim_cur < u64::from(connections) + 1024 {
        bail!(
            "MIRROR_BENCH_CONNECTIONS={connections} needs more open files than the hard limit {}",
            lim.rlim_cur
        );
    }
    Ok(())
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("bench mirror needs root (namespaces, eBPF)");
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let secs = env("MIRROR_BENCH_SECS").map_or(Ok(DEFAULT_SECS), |v| v.parse())?;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut layouts = Vec::new();
    for l in env("MIRROR_BENCH_LAYOUTS")
        .as_deref()
        .unwrap_or("pinned,shared")
        .split(',')
    {
        match l.trim() {
            "pinned" if ncpu < 2 => {
                println!(
                    "bench mirror: skipping the pinned layout: it needs 2 CPUs, this machine has {ncpu}"
                );
            }
            "pinned" => layouts.push(Layout::Pinned),
            "shared" => layouts.push(Layout::Shared),
            other => bail!("MIRROR_BENCH_LAYOUTS: unknown layout {other:?} (pinned, shared)"),
        }
    }
    let compare = env("MIRROR_BENCH_COMPARE").is_none_or(|v| v != "0");
    let connections: u32 = env("MIRROR_BENCH_CONNECTIONS").map_or(Ok(32), |v| v.parse())?;
    if !(2..=16_000).contains(&connections) {
        bail!("MIRROR_BENCH_CONNECTIONS: {connections} is not in 2-16000");
    }
    raise_open_files(connections)?;
    let (agent_bin, fast_mirror_bin) = binaries()?;
    let s = Settings {
        secs,
        layouts,
        compare,
        agent_bin,
        fast_mirror_bin,
        ncpu,
        connections,
    };
    let load = measure::loadavg();
    // The classifiers' own run time per packet (printed per run); restored on return.
    let _bpf_stats = measure::BpfStats::enable();
    let mut world = World::default();
    let runs = bench(&mut world, &s);
    drop(world);
    report(&s, &load, &runs?);
    // Issue 13's HTTP/2 section (also on its own: `cargo xtask bench h2`).
    if env("MIRROR_BENCH_H2").is_none_or(|v| v != "0") {
        println!("\n## HTTP/2 section (`cargo xtask bench h2`; MIRROR_BENCH_H2=0 leaves it out)\n");
        h2::run()?;
    }
    // Issue 14's TLS section (also on its own: `cargo xtask bench tls`).
    if env("MIRROR_BENCH_TLS").is_none_or(|v| v != "0") {
        println!("\n## TLS section (`cargo xtask bench tls`; MIRROR_BENCH_TLS=0 leaves it out)\n");
        tls::run()?;
    }
    Ok(())
}

/// The agent (`MIRROR_BENCH_AGENT`, else a release build of this tree) and fast-mirror
/// (built in release).
fn binaries() -> Result<(PathBuf, PathBuf)> {
    let agent = match std::env::var_os("MIRROR_BENCH_AGENT").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::ebpf::release_agent()?,
    };
    crate::util::sh(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "mirror-tests",
        "--bin",
        "fast-mirror",
    ]))?;
    Ok((agent, crate::util::target_dir().join("release/fast-mirror")))
}

/// fast-mirror in the mirrors' namespace, listening; returns its index in `world`.
fn start_fast_mirror(world: &mut World, s: &Settings) -> Result<usize> {
    start_fast_mirror_on(world, s, FAST_PORT, false)
}

/// fast-mirror on `port`, speaking h2c when `h2` (`--h2`), else HTTP/1.1.
fn start_fast_mirror_on(world: &mut World, s: &Settings, port: u16, h2: bool) -> Result<usize> {
    let mut cmd = ns_cmd(
        NS[2],
        s.fast_mirror_bin.to_str().context("fast-mirror path")?,
    );
    cmd.arg(format!("{MIRROR}:{port}"));
    if h2 {
        cmd.arg("--h2");
    }
    let fast = world.spawn(&mut cmd, &format!("fast-mirror-{port}"))?;
    wait_port(NS[2], MIRROR, port, || Ok(()))?;
    Ok(fast)
}

fn bench(world: &mut World, s: &Settings) -> Result<Vec<Run>> {
    world.create()?;
    let primary = world.nginx(NS[1], "primary", PRIMARY)?;
    let nginx_mirror = world.nginx(NS[2], "mirror", MIRROR)?;
    let fast_mirror = start_fast_mirror(world, s)?;
    let mut runs = Vec::new();
    for (li, &layout) in s.layouts.iter().enumerate() {
        let [node_cpus, mirror_cpus, _] = layout.cpus(s.ncpu);
        world::pin(world.pid(primary), &node_cpus)?;
        world::pin(world.pid(nginx_mirror), &mirror_cpus)?;
        world::pin(world.pid(fast_mirror), &mirror_cpus)?;
        // Warm-up.
        wrk(world, s, layout, 2, false, s.connections)?;
        // `off` before and after `on`: the ratio's baseline is their mean.
        use MirrorKind::{Fast, Nginx};
        let mut plan = vec![
            (Mode::Without, false, Fast),
            (Mode::With, false, Fast),
            (Mode::Without, false, Fast),
        ];
        if li == 0 {
            plan.push((Mode::With, false, Nginx));
        }
        if s.compare && li == 0 {
            plan.push((Mode::Compare, false, Fast));
        }
        if li == 0 {
            plan.extend([(Mode::Without, true, Fast), (Mode::With, true, Fast)]);
        }
        for (mode, paced, kind) in plan {
            let plan = Plan {
                layout,
                mode,
                paced,
                mirror: kind,
                connections: s.connections,
                mirrors: 1,
            };
            println!(
                "bench mirror: {} s of wrk{}, layout {}, agent: {} ...",
                s.secs,
                if paced { " (paced)" } else { "" },
                layout.name(),
                plan.label()
            );
            let mirror = match kind {
                Fast => fast_mirror,
                Nginx => nginx_mirror,
            };
            runs.push(one(world, s, plan, (primary, mirror))?);
        }
    }
    Ok(runs)
}

fn wrk(
    world: &World,
    s: &Settings,
    layout: Layout,
    secs: u64,
    paced: bool,
    connections: u32,
) -> Result<Wrk> {
    let [node_cpus, _, _] = layout.cpus(s.ncpu);
    let url = format!("http://{PRIMARY}:{PORT}/bench");
    let mut cmd = ns_cmd_on(NS[0], Some(&node_cpus), "wrk");
    let connections = connections.to_string();
    cmd.args([
        "-t",
        "2",
        "-c",
        &connections,
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]);
    if paced {
        let script = world.dir.join("pace.lua");
        std::fs::write(
            &script,
            format!("function delay()\n  return {PACE_MS}\nend\n"),
        )?;
        cmd.args(["-s", script.to_str().context("temp dir path")?]);
    }
    measure::run_wrk(cmd.arg(&url))
}

fn one(
    world: &mut World,
    s: &Settings,
    plan: Plan,
    (primary, mirror): (usize, usize),
) -> Result<Run> {
    let Plan {
        layout,
        mode,
        paced,
        mirror: kind,
        connections,
        mirrors,
    } = plan;
    let load = measure::loadavg();
    let name = format!(
        "agent-{}-{mode:?}-{kind:?}{}-c{connections}-m{mirrors}",
        layout.name(),
        if paced { "-paced" } else { "" }
    );
    let mirror_port = match kind {
        MirrorKind::Fast => FAST_PORT,
        MirrorKind::Nginx => PORT,
    };
    let agent = if mode == Mode::Without {
        None
    } else {
        let mut args = Vec::new();
        for m in 1..=mirrors {
            let name = if m == 1 {
                "fast".to_string()
            } else {
                format!("fast-{m}")
            };
            args.push("--mirror".to_string());
            args.push(format!("http://{MIRROR}:{mirror_port},name={name}"));
        }
        if mode == Mode::Compare {
            args.push("--compare".into());
        }
        Some(spawn_agent(world, s, layout, &name, &args)?)
    };
    let phase = measured(world, agent, &name, (primary, mirror), |world| {
        wrk(world, s, layout, s.secs, paced, connections)
    })?;
    Ok(Run {
        plan,
        load,
        wrk: phase.out,
        wall: phase.wall,
        primary_cpu: phase.primary_cpu,
        mirror_cpu: phase.mirror_cpu,
        busy: phase.busy,
        agent: phase.agent,
    })
}

/// The comparison table the agent prints on exit with `--compare`.
/// The classifiers' (run time ns, packets) from the kernel's BPF statistics.
type BpfRun = (u64, u64);

/// What one loaded phase measured: the load's own result, and CPU, time and the agent's run
/// around it (including [`DRAIN`] after it).
struct Phase<T> {
    out: T,
    wall: f64,
    primary_cpu: f64,
    mirror_cpu: f64,
    busy: String,
    agent: Option<AgentRun>,
}

/// Runs `load` with the primary, the mirror and the agent `agent` (started as `name`, if any)
/// measured around it; the agent is stopped and read afterwards.
fn measured<T>(
    world: &mut World,
    agent: Option<usize>,
    name: &str,
    (primary, mirror): (usize, usize),
    load: impl FnOnce(&World) -> Result<T>,
) -> Result<Phase<T>> {
    let (pp, mp) = (world.pid(primary), world.pid(mirror));
    let a0 = agent.map(|i| measure::cpu_secs(world.pid(i))).transpose()?;
    let k0 = agent.map(|i| measure::bpf_prog_stats(world.pid(i)));
    let (p0, m0, c0) = (
        measure::cpu_secs(pp)?,
        measure::cpu_secs(mp)?,
        measure::cpu_times(),
    );
    let t0 = Instant::now();
    let out = load(world)?;
    // Busy over the load alone: whether a CPU was saturated (the drain after it is idle time).
    let busy = measure::cpu_busy(&c0, &measure::cpu_times());
    std::thread::sleep(DRAIN);
    let wall = t0.elapsed().as_secs_f64();
    let k1 = agent.map(|i| measure::bpf_prog_stats(world.pid(i)));
    let (primary_cpu, mirror_cpu) = (measure::cpu_secs(pp)? - p0, measure::cpu_secs(mp)? - m0);
    let agent = match (agent, a0) {
        (Some(i), Some(a0)) => Some(collect_agent(world, i, name, a0, (k0, k1), wall)?),
        _ => None,
    };
    Ok(Phase {
        out,
        wall,
        primary_cpu,
        mirror_cpu,
        busy,
        agent,
    })
}

/// Starts the agent in the node namespace on the layout's agent CPUs, capturing the primary's
/// port, with `args` (the mirrors); waits until it captures. Logs go to `<name>.out|.err`.
fn spawn_agent(
    world: &mut World,
    s: &Settings,
    layout: Layout,
    name: &str,
    args: &[String],
) -> Result<usize> {
    let [_, _, agent_cpus] = layout.cpus(s.ncpu);
    let mut cmd = ns_cmd_on(NS[1], Some(&agent_cpus), s.agent_bin.to_str().unwrap());
    cmd.args(["--iface", "mbn", "--port", &PORT.to_string()])
        .args(args)
        .env("NO_COLOR", "1");
    let i = world.spawn(&mut cmd, name)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !world.read(&format!("{name}.err"))?.contains("capturing;") {
        if Instant::now() > deadline || world.children[i].try_wait()?.is_some() {
            bail!(
                "agent did not start: {}",
                world.read(&format!("{name}.err"))?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(i)
}

/// Stops the agent `i` (started as `name`, with `a0` CPU seconds and `bpf` classifier
/// statistics before and after the loaded phase of `wall` seconds) and reads what it did.
fn collect_agent(
    world: &mut World,
    i: usize,
    name: &str,
    a0: f64,
    bpf: (Option<BpfRun>, Option<BpfRun>),
    wall: f64,
) -> Result<AgentRun> {
    let pid = world.pid(i);
    let cpu = measure::cpu_secs(pid)? - a0;
    let rss_kib = measure::vm_hwm_kib(pid)?;
    world.interrupt(i, Duration::from_secs(30))?;
    let log = world.read(&format!("{name}.err"))?;
    let out = world.read(&format!("{name}.out"))?;
    Ok(AgentRun {
        cpu,
        rss_kib,
        sent_all: measure::sent_by_all(&log),
        table: measure::parse_agent_table(&log)
            .with_context(|| format!("no mirror table in the agent log {name}.err:\n{log}"))?,
        capture: out
            .lines()
            .rev()
            .find(|l| l.contains("records="))
            .map(str::to_owned),
        losses: log
            .lines()
            .map(str::trim)
            .filter(|t| {
                (t.starts_with("lost.") || t.starts_with("dropped.") || t.starts_with("evicted"))
                    && !t.ends_with(" 0")
            })
            .map(str::to_owned)
            .collect(),
        compare: compare_table(&log),
        classifier: match bpf {
            (Some(a), Some(b)) if b.1 > a.1 => Some(Classifier {
                ns_per_packet: (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
                packets: b.1 - a.1,
                cpu_share: (b.0 - a.0) as f64 / (wall * 1e9),
            }),
            _ => None,
        },
    })
}

fn compare_table(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("mirror") && l.contains("compared"))?;
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with("comparison:"))
        .map_or(lines.len(), |e| start + e + 1);
    Some(lines[start..end].join("\n"))
}

fn report(s: &Settings, load: &str, runs: &[Run]) {
    print_header(s, load);
    println!(
        "each run: wrk -t 2 -c {} for {} s (keep-alive GET), back to back; mirror 100% to fast-mirror (or nginx where named); \
         ratio = primary req/s / mean of the same layout's `off` runs (before and after); paced: \
         each connection waits {PACE_MS} ms after every response",
        s.connections, s.secs
    );
    println!("{STATS_CAVEAT}");
    print_runs(runs);
    print_targets(runs);
}

/// What the kernel's BPF statistics do to the ratios of the benches that keep them on.
const STATS_CAVEAT: &str = "the kernel's BPF statistics are on in every run (for the \
     classifier's line): they add 60-90 ns a packet to the `on` runs' primary, about 1% of its \
     CPU at 120k req/s, so these ratios read about that much low (`bench connections` judges its \
     ratio with them off)";

/// The machine, commit, agent and its settings, and the layouts.
fn print_header(s: &Settings, load: &str) {
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let knobs: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MIRROR_") && !k.starts_with("MIRROR_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!();
    println!(
        "machine: {} CPUs, {cpu_model}; commit {commit}; agent {}; load average before the bench {load}",
        s.ncpu,
        s.agent_bin.display()
    );
    println!(
        "agent settings from the environment: {}",
        if knobs.is_empty() {
            "none (defaults)".into()
        } else {
            knobs.join(" ")
        }
    );
    for l in &s.layouts {
        println!("layout {}: {}", l.name(), l.describe(s.ncpu));
    }
}

/// A table row per run, then each run's details (replay, capture line, classifier, losses).
fn print_runs(runs: &[Run]) {
    println!();
    println!(
        "| layout | wrk -c | agent | load before | primary req/s | ratio | p99 ms | captured | mirrored | completeness (mirrored / captured) | mirrored / served | shortfall: queue full / other; kernel ring full | agent CPU / mirrored req | CPU share agent / primary / mirror | CPU busy % (softirq, steal) per CPU | agent RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let ratio = base_rps_at(runs, r.plan.layout, r.plan.paced, Some(r.plan.connections))
            .map_or("-".into(), |b| format!("{:.3}", r.wrk.rps / b));
        let share = |cpu: f64| format!("{:.0}%", cpu * 100.0 / r.wall);
        let (captured, mirrored, compl, served, short, us, agent_share, rss) = match &r.agent {
            None => Default::default(),
            Some(a) => (
                a.table.captured.to_string(),
                a.table.sent.to_string(),
                format!("{:.3}%", a.completeness() * 100.0),
                format!(
                    "{:.3}%",
                    a.table.sent as f64 * 100.0 / r.wrk.requests.max(1) as f64
                ),
                format!(
                    "{} / {}; {}",
                    a.table.queue_full,
                    a.table.other_loss(),
                    a.ring_full()
                ),
                format!("{:.1} us", a.us_per()),
                share(a.cpu),
                format!("{:.1} MiB", a.rss_kib as f64 / 1024.0),
            ),
        };
        let dash = |v: String| if v.is_empty() { "-".into() } else { v };
        println!(
            "| {} | {} | {} | {} | {:.0} | {ratio} | {:.2} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
            r.plan.layout.name(),
            r.plan.connections,
            r.plan.label(),
            r.load,
            r.wrk.rps,
            r.wrk.p99_ms,
            dash(captured),
            dash(mirrored),
            dash(compl),
            dash(served),
            dash(short),
            dash(us),
            dash(agent_share),
            share(r.primary_cpu),
            share(r.mirror_cpu),
            r.busy,
            dash(rss),
        );
    }
    println!();
    for r in runs {
        let Some(a) = &r.agent else { continue };
        let tag = format!(
            "{} / -c {} / {}",
            r.plan.layout.name(),
            r.plan.connections,
            r.plan.label()
        );
        println!(
            "[{tag}] wrk served {}, agent captured {}, sampled {}, mirrored {}; agent CPU {:.1} s, \
             {:.1} us per captured request; replay: {}",
            r.wrk.requests,
            a.table.captured,
            a.table.sampled,
            a.table.sent,
            a.cpu,
            a.cpu * 1e6 / a.table.captured.max(1) as f64,
            a.table.detail
        );
        if let Some(c) = &a.capture {
            println!("[{tag}] capture: {c}");
        }
        if let Some(k) = &a.classifier {
            println!(
                "[{tag}] classifier (kernel BPF statistics): {:.0} ns per packet, {} packets, {:.1}% of one CPU",
                k.ns_per_packet,
                k.packets,
                k.cpu_share * 100.0
            );
        }
        for l in &a.losses {
            println!("[{tag}] pipeline loss: {l}");
        }
        if let Some(c) = &a.compare {
            for l in c.lines() {
                println!("[{tag}] compare: {l}");
            }
        }
    }
}

/// Issue 4's targets per layout, the paced pair, and comparison mode's cost.
fn print_targets(runs: &[Run]) {
    println!();
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    for r in runs
        .iter()
        .filter(|r| r.plan.mode == Mode::With && !r.plan.paced)
    {
        let (Some(a), Some(b)) = (&r.agent, base_rps(runs, r.plan.layout, false)) else {
            continue;
        };
        let ratio = r.wrk.rps / b;
        let rss = a.rss_kib as f64 / 1024.0;
        println!(
            "targets, layout {} ({}): {}; \
             agent CPU {:.1} us per mirrored request (<= 20: {}); RSS {rss:.1} MiB (<= 64: {}); \
             throughput ratio {ratio:.3} (>= 0.95: {})",
            r.plan.layout.name(),
            if r.plan.mirror == MirrorKind::Fast {
                "fast mirror"
            } else {
                "nginx mirror"
            },
            a.completeness_verdict(),
            a.us_per(),
            ok(a.us_per() <= 20.0),
            ok(rss <= 64.0),
            ok(ratio >= 0.95),
        );
    }
    for r in runs
        .iter()
        .filter(|r| r.plan.mode == Mode::With && r.plan.paced)
    {
        let (Some(a), Some(full), Some(off)) = (
            &r.agent,
            base_rps(runs, r.plan.layout, false),
            runs.iter().find(|o| {
                o.plan.layout == r.plan.layout && o.plan.paced && o.plan.mode == Mode::Without
            }),
        ) else {
            continue;
        };
        println!(
            "paced, layout {}: primary at {:.0} req/s ({:.0}% of its full rate): {}; \
             agent CPU {:.1} us per mirrored request; primary p99 {:.2} ms without the agent, {:.2} ms with",
            r.plan.layout.name(),
            r.wrk.rps,
            r.wrk.rps * 100.0 / full,
            a.completeness_verdict(),
            a.us_per(),
            off.wrk.p99_ms,
            r.wrk.p99_ms,
        );
    }
    for c in runs.iter().filter(|r| r.plan.mode == Mode::Compare) {
        let with = runs.iter().find(|r| {
            r.plan.layout == c.plan.layout
                && r.plan.mode == Mode::With
                && !r.plan.paced
                && r.plan.mirror == MirrorKind::Fast
        });
        let (Some(b), Some(w), Some(ca)) = (base_rps(runs, c.plan.layout, false), with, &c.agent)
        else {
            continue;
        };
        let Some(wa) = &w.agent else { continue };
        println!(
            "comparison mode's cost, layout {}: throughput ratio {:.3} without --compare, {:.3} with; \
             agent CPU per mirrored request {:.1} us without, {:.1} us with ({:+.0}%)",
            c.plan.layout.name(),
            w.wrk.rps / b,
            c.wrk.rps / b,
            wa.us_per(),
            ca.us_per(),
            (ca.us_per() / wa.us_per() - 1.0) * 100.0
        );
    }
}

/// The mean primary throughput of the runs without the agent in this layout and pacing (the
/// `off` runs bracketing the one with the agent).
fn base_rps(runs: &[Run], layout: Layout, paced: bool) -> Option<f64> {
    base_rps_at(runs, layout, paced, None)
}

/// [`base_rps`] of the runs with `connections` client connections (`None`: any).
fn base_rps_at(runs: &[Run], layout: Layout, paced: bool, connections: Option<u32>) -> Option<f64> {
    let off: Vec<f64> = runs
        .iter()
        .filter(|r| {
            r.plan.layout == layout
                && r.plan.paced == paced
                && r.plan.mode == Mode::Without
                && connections.is_none_or(|c| r.plan.connections == c)
        })
        .map(|r| r.wrk.rps)
        .collect();
    (!off.is_empty()).then(|| off.iter().sum::<f64>() / off.len() as f64)
}
