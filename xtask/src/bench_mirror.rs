//! `cargo xtask bench mirror`: the agent at the primary's full rate, in namespaces.
//!
//! wrk (client namespace) drives nginx, the primary (node namespace), for 30 s without the
//! agent and then 30 s with the agent capturing the primary's port and mirroring every request
//! to a second nginx (mirrors namespace, over its own veth). Printed: requests served and
//! mirrored, completeness with the agent's named loss counters, agent CPU time per mirrored
//! request (utime + stime from /proc/PID/stat), agent peak RSS (VmHWM), and the primary's
//! throughput and p99 with the agent against without. The agent is the release build.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{is_root, sh, target_dir};

const NS: [&str; 3] = ["mbench-client", "mbench-node", "mbench-mirrors"];
const PRIMARY: &str = "10.210.0.1";
const MIRROR: &str = "10.211.0.2";
const PORT: u16 = 8080;
const SECS: u64 = 30;

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("bench mirror needs root (namespaces, eBPF)");
    }
    crate::setup::run(crate::setup::Scope::All)?;
    crate::ebpf::build()?;
    sh(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "mirror-agent",
        "--bin",
        "mirror-agent",
    ]))?;
    let agent_bin = target_dir().join("release/mirror-agent");
    let mut world = World::default();
    let r = bench(&mut world, &agent_bin);
    drop(world);
    r
}

fn bench(world: &mut World, agent_bin: &Path) -> Result<()> {
    world.create()?;
    let dir = world.dir.clone();
    for (ns, name, host) in [(NS[1], "primary", PRIMARY), (NS[2], "mirror", MIRROR)] {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, nginx_conf(&dir, name, host))?;
        world.spawn(
            ns_cmd(ns, "nginx").args(["-c", conf.to_str().unwrap(), "-g", "daemon off;"]),
            &dir,
            name,
        )?;
        wait_port(ns, host)?;
    }
    let url = format!("http://{PRIMARY}:{PORT}/bench");
    // Warm-up, then the baseline.
    wrk(&url, 2)?;
    println!("bench mirror: {SECS} s of wrk without the agent ...");
    let base = wrk(&url, SECS)?;

    let agent = world.spawn(
        ns_cmd(NS[1], agent_bin.to_str().unwrap())
            .args(["--iface", "mbn", "--port", &PORT.to_string()])
            .args(["--mirror", &format!("http://{MIRROR}:{PORT},name=fast")])
            .env("NO_COLOR", "1"),
        &dir,
        "agent",
    )?;
    let err_path = dir.join("agent.err");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&err_path)?.contains("capturing;") {
        if Instant::now() > deadline {
            bail!(
                "agent did not start: {}",
                std::fs::read_to_string(&err_path)?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = world.children[agent].id();
    // nginx runs with `master_process off`: the child (exec'd by `ip netns exec`) serves.
    let (primary_pid, mirror_pid) = (world.children[0].id(), world.children[1].id());
    let cpu0 = cpu_secs(pid)?;
    let (p0, m0) = (cpu_secs(primary_pid)?, cpu_secs(mirror_pid)?);
    let t0 = Instant::now();
    println!("bench mirror: {SECS} s of wrk with the agent mirroring 100% ...");
    let with = wrk(&url, SECS)?;
    // Let the replay finish what is queued before reading CPU and memory.
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_secs(pid)? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let (pcpu, mcpu) = (cpu_secs(primary_pid)? - p0, cpu_secs(mirror_pid)? - m0);
    let hwm = vm_hwm_kib(pid)?;
    world.interrupt(agent, Duration::from_secs(30))?;
    let log = std::fs::read_to_string(&err_path)?;
    let out = std::fs::read_to_string(dir.join("agent.out"))?;
    let (captured, sent, detail) = mirror_row(&log).context("no mirror table in the agent log")?;

    let completeness = sent as f64 / captured.max(1) as f64;
    let us_per = cpu * 1e6 / sent.max(1) as f64;
    let rss_mib = hwm as f64 / 1024.0;
    let tput = with.rps / base.rps;
    let p99 = with.p99_ms / base.p99_ms;
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| requests served (wrk, with agent) | {} | |",
        with.requests
    );
    println!("| requests captured by the agent | {captured} | |");
    println!("| requests mirrored (fully written to the mirror) | {sent} | |");
    println!(
        "| completeness (mirrored / captured) | {:.3}% | >= 99.9%: {} |",
        completeness * 100.0,
        ok(completeness >= 0.999)
    );
    println!(
        "| mirrored / served | {:.3}% | |",
        sent as f64 * 100.0 / with.requests.max(1) as f64
    );
    println!(
        "| agent CPU per mirrored request | {us_per:.1} us ({cpu:.1} s CPU) | <= 20 us: {} |",
        ok(us_per <= 20.0)
    );
    println!(
        "| agent peak RSS (VmHWM) | {rss_mib:.1} MiB | <= 64 MiB: {} |",
        ok(rss_mib <= 64.0)
    );
    println!(
        "| primary throughput without / with agent | {:.0} / {:.0} req/s (ratio {tput:.3}) | >= 0.95: {} |",
        base.rps,
        with.rps,
        ok(tput >= 0.95)
    );
    println!(
        "| primary p99 without / with agent | {:.2} / {:.2} ms (ratio {p99:.2}) | |",
        base.p99_ms, with.p99_ms
    );
    println!(
        "| CPU share over the {wall:.0} s with the agent: agent / primary nginx / mirror nginx | {:.0}% / {:.0}% / {:.0}% of one core | |",
        cpu * 100.0 / wall,
        pcpu * 100.0 / wall,
        mcpu * 100.0 / wall
    );
    println!();
    println!("loss counters: {detail}");
    if let Some(l) = out.lines().rev().find(|l| l.contains("records=")) {
        println!("capture: {l}");
    }
    if let Some(l) = log
        .lines()
        .find(|l| l.starts_with("lost") || l.contains("lost."))
    {
        println!("pipeline: {}", l.trim());
    }
    for l in log.lines().filter(|l| {
        let t = l.trim_start();
        (t.starts_with("lost.") || t.starts_with("dropped.") || t.starts_with("evicted"))
            && !t.ends_with(" 0")
    }) {
        println!("pipeline loss: {}", l.trim());
    }
    Ok(())
}

struct Wrk {
    requests: u64,
    rps: f64,
    p99_ms: f64,
}

fn wrk(url: &str, secs: u64) -> Result<Wrk> {
    let out = ns_cmd(NS[0], "wrk")
        .args([
            "-t",
            "2",
            "-c",
            "32",
            "-d",
            &format!("{secs}s"),
            "--latency",
            url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("wrk: no request count")?;
    let rps = find("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk: no Requests/sec")?;
    let p99 = find("99%").context("wrk: no 99% latency")?;
    Ok(Wrk {
        requests,
        rps,
        p99_ms: parse_ms(&p99)?,
    })
}

fn parse_ms(v: &str) -> Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("latency {v:?}")
    };
    Ok(num.parse::<f64>()? * mult)
}

/// `captured`, the `fast` mirror's `sent`, and its loss detail line, from the exit table.
fn mirror_row(log: &str) -> Option<(u64, u64, String)> {
    let row = log.lines().rev().find(|l| l.starts_with("fast "))?;
    let sent = row.split_whitespace().nth(3)?.parse().ok()?;
    let detail = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("fast: dropped:"))?
        .trim()
        .to_owned();
    let captured = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("captured requests: "))?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((captured, sent, detail))
}

fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (proc(5)).
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")
}

fn nginx_conf(dir: &Path, name: &str, host: &str) -> String {
    let d = dir.display();
    format!(
        "master_process off;\nworker_processes 1;\npid {d}/{name}.pid;\nerror_log {d}/{name}.error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/{name}-body;\n\
         server {{\n    listen {host}:{PORT};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

/// Namespaces, processes and a temp dir; removed on drop (also on error).
#[derive(Default)]
struct World {
    children: Vec<Child>,
    created: Vec<&'static str>,
    dir: std::path::PathBuf,
}

impl World {
    fn create(&mut self) -> Result<()> {
        self.dir = std::env::temp_dir().join(format!("mirror-bench-{}", std::process::id()));
        std::fs::create_dir_all(&self.dir)?;
        for ns in NS {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns])?;
            self.created.push(ns);
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", "mbn", "netns", NS[1], "type", "veth", "peer", "name", "mbc", "netns",
            NS[0],
        ])?;
        ip(&[
            "link", "add", "mbu", "netns", NS[1], "type", "veth", "peer", "name", "mbm", "netns",
            NS[2],
        ])?;
        for (ns, dev, addr) in [
            (NS[1], "mbn", "10.210.0.1/24"),
            (NS[0], "mbc", "10.210.0.2/24"),
            (NS[1], "mbu", "10.211.0.1/24"),
            (NS[2], "mbm", "10.211.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    fn spawn(&mut self, cmd: &mut Command, dir: &Path, name: &str) -> Result<usize> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(dir.join(format!("{name}.err")))?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    fn interrupt(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let c = &mut self.children[i];
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("agent did not stop within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ns_cmd(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn wait_port(ns: &str, host: &str) -> Result<()> {
    let want = format!("{host}:{PORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns_cmd(ns, "ss").arg("-Hltn").output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nginx does not listen on {want} in {ns}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
