//! `cargo xtask bench capture`, bulk-upload section (also `cargo xtask bench bulk` alone): 64 KiB
//! POSTs at full rate, the agent and tcpdump compared in one run.
//!
//! Layout, pinned as in `bench mirror`: wrk (`-t1 -c16`) and the nginx origin on CPU 0, the
//! capturing process (agent, tcpdump, and the `cat` draining a recording) on CPU 1. The veth's
//! softirq, and so the classifier, runs on the sender's CPU: the primary's. Modes run in
//! alternating rounds so load from elsewhere hits all alike; medians are shown. Per run:
//! primary req/s (and its ratio to nothing attached), requests the agent framed against
//! requests wrk counted, kernel ring drops, the recording's written and dropped records, the
//! classifier's CPU per 64 KiB of payload (`kernel.bpf_stats_enabled`), and the agent's CPU.
//!
//! `MIRROR_BENCH_AGENT` picks the agent binary (default: a release build of this tree),
//! `MIRROR_BENCH_SECS` the seconds per run (default 8), `MIRROR_BENCH_ROUNDS` the rounds
//! (default 3), `MIRROR_BENCH_BULK_MODES` the modes (comma-separated, default
//! `detached,tcpdump,agent,agent-record`; `agent-scratch` forces the two-copy classifier with
//! `MIRROR_CAPTURE_COPY=scratch`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{Proc, SIGINT, SIGTERM};
use crate::netns::{ip, ns_cmd_on, wait_port};

const SERVER: &str = "10.89.0.1";
const CLIENT: &str = "10.89.0.2";
const PORT: u16 = 8080;
const CONNECTIONS: u32 = 16;
/// The primary's side: wrk and nginx.
const PRIMARY_CPU: &str = "0";
/// The capturing side: the agent or tcpdump, and the recording's reader.
const CAPTURE_CPU: &str = "1";

/// What runs next to the primary during one run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Detached,
    Tcpdump,
    Agent,
    /// The agent with `--record` into a FIFO drained by `cat`.
    AgentRecord,
    /// The agent forced onto the two-copy classifier (`MIRROR_CAPTURE_COPY=scratch`).
    AgentScratch,
}

impl Mode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "detached" => Mode::Detached,
            "tcpdump" => Mode::Tcpdump,
            "agent" => Mode::Agent,
            "agent-record" => Mode::AgentRecord,
            "agent-scratch" => Mode::AgentScratch,
            other => bail!(
                "unknown bulk mode {other:?} (detached, tcpdump, agent, agent-record, agent-scratch)"
            ),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Detached => "nothing attached",
            Mode::Tcpdump => "tcpdump -w /dev/null (64 MiB buffer)",
            Mode::Agent => "agent, no output",
            Mode::AgentRecord => "agent, --record into a pipe drained by cat",
            Mode::AgentScratch => "agent, no output, two-copy classifier",
        }
    }
}

/// What one run measured.
#[derive(Default, Clone)]
struct Run {
    rps: f64,
    wrk_requests: u64,
    /// Requests the agent framed (its pipeline summary).
    framed: Option<u64>,
    ring_drops: Option<u64>,
    records_written: Option<u64>,
    records_dropped: Option<u64>,
    /// Classifier run time over the run, and the payload bytes it captured.
    bpf_ns: Option<u64>,
    payload_bytes: Option<u64>,
    agent_cpu_s: Option<f64>,
    tcpdump_dropped: Option<u64>,
}

/// The namespaces and veth pair of the lab; deleted on drop.
struct Lab {
    server: String,
    client: String,
    server_if: String,
}

impl Lab {
    fn new() -> Result<Self> {
        let tag = std::process::id() % 100_000;
        let lab = Self {
            server: format!("mbulk-srv-{tag}"),
            client: format!("mbulk-cli-{tag}"),
            server_if: format!("mbks{tag}"),
        };
        let client_if = format!("mbkc{tag}");
        for ns in [&lab.server, &lab.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &lab.server_if,
            "netns",
            &lab.server,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &lab.client,
        ])?;
        for (ns, ifname, addr) in [
            (&lab.server, &lab.server_if, SERVER),
            (&lab.client, &client_if, CLIENT),
        ] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn run() -> Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "bench bulk needs root (namespaces, BPF)"
    );
    let agent = match std::env::var_os("MIRROR_BENCH_AGENT") {
        Some(p) => PathBuf::from(p),
        None => crate::ebpf::release_agent()?,
    };
    let secs: u32 = env_or("MIRROR_BENCH_SECS", 8);
    let rounds: usize = env_or("MIRROR_BENCH_ROUNDS", 3);
    let modes: Vec<Mode> = std::env::var("MIRROR_BENCH_BULK_MODES")
        .unwrap_or_else(|_| "detached,tcpdump,agent,agent-record".into())
        .split(',')
        .map(|m| Mode::parse(m.trim()))
        .collect::<Result<_>>()?;
    for tool in ["wrk", "nginx", "tcpdump", "bpftool", "taskset", "cat"] {
        anyhow::ensure!(
            crate::util::succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])),
            "bench bulk needs {tool} (cargo xtask setup installs it)"
        );
    }

    let dir = std::env::temp_dir().join(format!("mirror-bench-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lab = Lab::new()?;
    let _nginx = start_nginx(&lab, &dir)?;
    let post = crate::lab::post_64k_script(&dir)?;
    let stats_before =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled")?;

    println!(
        "bulk-upload benchmark: wrk -t1 -c{CONNECTIONS} 64 KiB POSTs, {secs} s per run, \
         {rounds} alternating rounds, medians; wrk+nginx on CPU {PRIMARY_CPU}, \
         capture on CPU {CAPTURE_CPU}"
    );
    println!("load average before: {}", load_average());
    wrk(&lab, &post, 2)?; // warm-up, untimed
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for (i, &mode) in modes.iter().enumerate() {
            let run = one_run(&lab, &agent, &dir, &post, secs, mode)
                .with_context(|| format!("round {round}, {}", mode.label()))?;
            runs[i].push(run);
        }
    }
    println!("load average after: {}", load_average());
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    print_table(&modes, &runs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn one_run(lab: &Lab, agent: &Path, dir: &Path, post: &Path, secs: u32, mode: Mode) -> Result<Run> {
    let mut run = Run::default();
    match mode {
        Mode::Detached => {
            (run.rps, run.wrk_requests) = wrk(lab, post, secs)?;
        }
        Mode::Tcpdump => {
            let err = dir.join("tcpdump.err");
            let child = ns_cmd_on(&lab.server, Some(CAPTURE_CPU), "tcpdump")
                .args([
                    "-i",
                    &lab.server_if,
                    "-w",
                    "/dev/null",
                    "-B",
                    "65536",
                    "-s",
                    "0",
                ])
                .args(["-n", "tcp", "port", &PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err)?)
                .spawn()
                .context("spawn tcpdump")?;
            let mut p = Proc(child);
            wait_for_text(&err, "listening on", Duration::from_secs(10))?;
            (run.rps, run.wrk_requests) = wrk(lab, post, secs)?;
            p.signal(SIGINT)?;
            let _ = p.0.wait();
            let text = std::fs::read_to_string(&err)?;
            run.tcpdump_dropped = text
                .lines()
                .find(|l| l.contains("dropped by kernel"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok());
        }
        Mode::Agent | Mode::AgentRecord | Mode::AgentScratch => {
            let stdout = dir.join("agent.out");
            let stderr = dir.join("agent.err");
            let mut _cat = None;
            let mut cmd = ns_cmd_on(
                &lab.server,
                Some(CAPTURE_CPU),
                agent.to_str().context("utf-8")?,
            );
            cmd.args(["--iface", &lab.server_if, "--port", &PORT.to_string()]);
            if mode == Mode::AgentRecord {
                let fifo = dir.join("record.fifo");
                let _ = std::fs::remove_file(&fifo);
                crate::util::sh(Command::new("mkfifo").arg(&fifo))?;
                let reader = Command::new("taskset")
                    .args(["-c", CAPTURE_CPU, "cat"])
                    .arg(&fifo)
                    .stdout(Stdio::null())
                    .spawn()
                    .context("spawn cat")?;
                _cat = Some(Proc(reader));
                cmd.arg("--record").arg(&fifo);
            }
            if mode == Mode::AgentScratch {
                cmd.env("MIRROR_CAPTURE_COPY", "scratch");
            }
            let child = cmd
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout)?)
                .stderr(std::fs::File::create(&stderr)?)
                .spawn()
                .context("spawn agent")?;
            let mut p = Proc(child);
            wait_for_text(&stderr, "capturing;", Duration::from_secs(20))?;
            (run.rps, run.wrk_requests) = wrk(lab, post, secs)?;
            run.bpf_ns = bpf_ingress_run_time_ns();
            let pid = p.0.id();
            let cpu = process_cpu_s(pid);
            p.signal(SIGTERM)?;
            let _ = p.0.wait();
            run.agent_cpu_s = cpu;
            let out = std::fs::read_to_string(&stdout)?;
            let err = std::fs::read_to_string(&stderr)?;
            let field = |key: &str| {
                out.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            run.ring_drops = field("ring_full=");
            run.payload_bytes = field("bytes=");
            let stat = |name: &str| {
                err.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next()? == name).then(|| w.next()?.parse::<u64>().ok())?
                })
            };
            run.framed = stat("requests");
            if mode == Mode::AgentRecord {
                run.records_written = stat("written");
                run.records_dropped = Some(
                    [
                        "dropped.queue_full",
                        "dropped.write_error",
                        "dropped.at_exit",
                    ]
                    .iter()
                    .filter_map(|k| stat(k))
                    .sum(),
                );
            }
            anyhow::ensure!(
                run.framed.is_some(),
                "no pipeline summary from the agent: {err}"
            );
        }
    }
    Ok(run)
}

fn start_nginx(lab: &Lab, dir: &Path) -> Result<Proc> {
    let conf = crate::lab::nginx_conf(dir, SERVER, PORT)?;
    let child = ns_cmd_on(&lab.server, Some(PRIMARY_CPU), "nginx")
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .context("spawn nginx")?;
    let p = Proc(child);
    wait_port(&lab.server, SERVER, PORT, || Ok(()))?;
    Ok(p)
}

/// (req/s, requests) of one wrk run.
fn wrk(lab: &Lab, script: &Path, secs: u32) -> Result<(f64, u64)> {
    let out = ns_cmd_on(&lab.client, Some(PRIMARY_CPU), "wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{SERVER}:{PORT}/"))
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    anyhow::ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors: {text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk output")?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("no request count in wrk output")?;
    Ok((rps, requests))
}

fn wait_for_text(path: &Path, needle: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no {needle:?} in {} within {within:?}: {text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The run time of the loaded ingress classifier(s) (`bpftool prog show`: the agent loads a
/// fresh program per run, so this is the run's).
fn bpf_ingress_run_time_ns() -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = None;
    for line in text.lines().filter(|l| l.contains(" name mirror_ingress")) {
        let mut it = line.split_whitespace();
        if it.any(|w| w == "run_time_ns") {
            let ns: u64 = it.next()?.parse().ok()?;
            *total.get_or_insert(0) += ns;
        }
    }
    total
}

/// User plus system CPU seconds of a process so far (`/proc/PID/stat`).
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(2) } as f64; // _SC_CLK_TCK
    Some(ticks as f64 / hz)
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn print_table(modes: &[Mode], runs: &[Vec<Run>]) {
    let detached = modes
        .iter()
        .position(|m| *m == Mode::Detached)
        .and_then(|i| median(runs[i].iter().map(|r| r.rps).collect()));
    println!(
        "\n| run | primary req/s | vs nothing attached | requests captured | kernel ring drops | \
         records written (dropped) | classifier ns per 64 KiB | agent CPU per request |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (mode, rs) in modes.iter().zip(runs) {
        let med = |f: &dyn Fn(&Run) -> Option<f64>| median(rs.iter().filter_map(f).collect());
        let rps = med(&|r| Some(r.rps)).unwrap_or(0.0);
        let ratio = detached.map_or("-".into(), |d| format!("{:.2}", rps / d));
        let captured = med(&|r| Some(r.framed? as f64 / r.wrk_requests.max(1) as f64))
            .map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
        let drops = match mode {
            Mode::Tcpdump => med(&|r| r.tcpdump_dropped.map(|d| d as f64))
                .map_or("-".into(), |d| format!("{d:.0} (pcap)")),
            _ => med(&|r| r.ring_drops.map(|d| d as f64)).map_or("-".into(), |d| format!("{d:.0}")),
        };
        let records = med(&|r| Some(r.records_written? as f64 / r.framed?.max(1) as f64)).map_or(
            "-".into(),
            |w| {
                let dropped = med(&|r| r.records_dropped.map(|d| d as f64)).unwrap_or(0.0);
                format!("{:.1}% ({dropped:.0})", w * 100.0)
            },
        );
        let bpf = med(&|r| Some(r.bpf_ns? as f64 / (r.payload_bytes? as f64 / 65536.0)))
            .map_or("-".into(), |v| format!("{v:.0}"));
        let cpu = med(&|r| Some(r.agent_cpu_s? * 1e6 / r.framed?.max(1) as f64))
            .map_or("-".into(), |v| format!("{v:.1} us"));
        println!(
            "| {} | {rps:.0} | {ratio} | {captured} | {drops} | {records} | {bpf} | {cpu} |",
            mode.label()
        );
    }
    println!(
        "\nrequests captured: requests the agent framed / requests wrk counted (requests in \
         flight when wrk stops can make it exceed 100%). classifier ns per 64 KiB: BPF run time \
         of the ingress program over the run / (payload bytes captured / 64 KiB)."
    );
}
