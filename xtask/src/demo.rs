//! `cargo xtask demo`: mirror-agent doing its job in network namespaces it creates.
//!
//! Builds what is needed (setup, eBPF object, agent), then builds this world:
//!
//! ```text
//!  client ns              node ns (agent here)             mirrors ns
//!  10.200.0.2 ──veth── 10.200.0.1:8080 app-stable   10.201.0.1 ──veth── 10.201.0.2:8080 app-v2 (100%)
//!                      (captured: mdemo-node)                          10.201.0.3:8080 app-v3 (50%)
//! ```
//!
//! drives about 10 seconds of curl traffic (GETs and POSTs) from the client to app-stable,
//! stops the agent, prints its per-mirror table and a few requests as the primary and each
//! mirror logged them, and removes everything it created: on success, on error, and on Ctrl-C
//! (children run in their own process group, so the terminal's SIGINT reaches only us; the
//! [`World`] guard then kills them by PID and deletes the namespaces). Fixed names let a run
//! that was SIGKILLed be cleaned up by the next one.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{ip, ns_cmd, wait_port};
use crate::util::{is_root, sh, target_dir};

const NS_CLIENT: &str = "mdemo-client";
const NS_NODE: &str = "mdemo-node";
const NS_MIRRORS: &str = "mdemo-mirrors";
const PORT: u16 = 8080;
const PRIMARY: &str = "10.200.0.1";
const CLIENT: &str = "10.200.0.2";
const APP_V2: &str = "10.201.0.2";
const APP_V3: &str = "10.201.0.3";
const TRAFFIC: Duration = Duration::from_secs(10);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A tiny HTTP/1.1 server that answers 200 to every method and logs one line per request:
/// id, method, target, body length. Python's standard library keeps the demo dependency-free.
const SERVER_PY: &str = r#"
import sys, http.server
name, host, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), open(sys.argv[4], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_one(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        log.write("%-8s %-14s %-6s %-24s body=%d\n" % (name, self.headers.get("X-Request-Id", "-"), self.command, self.path, len(body)))
        out = ("%s saw %s %s\n" % (name, self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = handle_one
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((host, port), H).serve_forever()
"#;

pub fn run() -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and attaches eBPF: run it as root (sudo -E cargo xtask demo)"
        );
    }
    say("1/5 building: toolchain check, eBPF object, agent");
    crate::setup::run(crate::setup::Scope::All)?;
    crate::ebpf::build()?;
    sh(Command::new("cargo").args(["build", "-p", "mirror-agent", "--bin", "mirror-agent"]))?;
    let agent_bin = target_dir().join("debug/mirror-agent");

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let started = Instant::now();
    let mut world = World::default();
    let result = demo(&mut world, &agent_bin);
    drop(world);
    say(&format!(
        "removed namespaces {NS_CLIENT}, {NS_NODE}, {NS_MIRRORS} and every process the demo started ({:.0?} after the build)",
        started.elapsed()
    ));
    result
}

fn demo(world: &mut World, agent_bin: &Path) -> Result<()> {
    say(
        "2/5 creating namespaces: client, node (primary app-stable), mirrors (app-v2 100%, app-v3 50%)",
    );
    world.create()?;
    let dir = world.dir.clone();
    for (ns, name, host) in [
        (NS_NODE, "primary", PRIMARY),
        (NS_MIRRORS, "app-v2", APP_V2),
        (NS_MIRRORS, "app-v3", APP_V3),
    ] {
        let script = dir.join("server.py");
        std::fs::write(&script, SERVER_PY)?;
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&log, "")?;
        world.spawn(
            name,
            ns_cmd(ns, "python3").args([
                script.to_str().unwrap(),
                name,
                host,
                &PORT.to_string(),
                log.to_str().unwrap(),
            ]),
            &dir,
        )?;
        wait_port(ns, host, PORT, check_interrupt)?;
    }
    say(&format!(
        "   app-stable on {PRIMARY}:{PORT}; app-v2 on {APP_V2}:{PORT}; app-v3 on {APP_V3}:{PORT}"
    ));

    say("3/5 starting mirror-agent on the node's interface mdemo-node");
    let args = [
        "--iface".to_owned(),
        "mdemo-node".into(),
        "--port".into(),
        PORT.to_string(),
        "--mirror".into(),
        format!("http://{APP_V2}:{PORT},name=app-v2"),
        "--mirror".into(),
        format!("http://{APP_V3}:{PORT},percent=50,name=app-v3"),
    ];
    say(&format!("   $ mirror-agent {}", args.join(" ")));
    let agent = world.spawn(
        "agent",
        ns_cmd(NS_NODE, agent_bin.to_str().unwrap())
            .args(&args)
            .env("NO_COLOR", "1"),
        &dir,
    )?;
    let agent_err = dir.join("agent.err");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&agent_err)?.contains("capturing;") {
        check_interrupt()?;
        if let Some(status) = world.children[agent].1.try_wait()? {
            bail!(
                "the agent exited with {status}:\n{}",
                std::fs::read_to_string(&agent_err)?
            );
        }
        if Instant::now() > deadline {
            bail!("the agent did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    say(&format!(
        "4/5 driving traffic for {TRAFFIC:?}: curl from {CLIENT} to app-stable, GETs and POSTs"
    ));
    let end = Instant::now() + TRAFFIC;
    let (mut sent, mut failed) = (0u32, 0u32);
    while Instant::now() < end {
        check_interrupt()?;
        sent += 1;
        let id = format!("demo-{sent:04}");
        let mut c = ns_cmd(NS_CLIENT, "curl");
        c.args(["-sS", "-o", "/dev/null", "--max-time", "5"])
            .args(["-H", &format!("X-Request-Id: {id}")]);
        if sent % 3 == 0 {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data",
                &format!("{{\"order\":{sent},\"items\":[\"tea\",\"cake\"]}}"),
                &format!("http://{PRIMARY}:{PORT}/orders"),
            ]);
        } else {
            c.arg(format!(
                "http://{PRIMARY}:{PORT}/products/{}?page={}",
                sent % 17,
                sent % 3
            ));
        }
        if !c.stdout(Stdio::null()).status()?.success() {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    say(&format!(
        "   client sent {sent} requests ({failed} failed at the client)"
    ));
    std::thread::sleep(Duration::from_millis(500));

    say("5/5 stopping the agent (SIGINT); its report:");
    world.stop(agent, Duration::from_secs(20))?;
    let err = std::fs::read_to_string(&agent_err)?;
    let out = std::fs::read_to_string(dir.join("agent.out"))?;
    let table = err
        .rfind("\nmirror ")
        .map_or("(no mirror table in the agent's log)", |i| &err[i + 1..]);
    println!("\n{table}");
    if let Some(line) = out.lines().rev().find(|l| l.contains("records=")) {
        println!("capture: {line}");
    }

    println!("\nA few requests as app-stable saw them, and what each mirror got:");
    let primary = std::fs::read_to_string(dir.join("primary.log"))?;
    let v2 = std::fs::read_to_string(dir.join("app-v2.log"))?;
    let v3 = std::fs::read_to_string(dir.join("app-v3.log"))?;
    for line in primary.lines().take(6) {
        let id = line.split_whitespace().nth(1).unwrap_or("-");
        println!("  {line}");
        for (name, log) in [("app-v2", &v2), ("app-v3", &v3)] {
            match log
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(id))
            {
                Some(l) => println!("  {l}"),
                None => println!("  {name:<8} {id:<14} (not sampled)"),
            }
        }
    }
    let count = |s: &str| s.lines().count();
    println!(
        "\nTotals: app-stable {} requests, app-v2 {} (100%), app-v3 {} (50%)",
        count(&primary),
        count(&v2),
        count(&v3)
    );
    Ok(())
}

/// Everything the demo created: namespaces, processes, a temp dir. Dropping it removes all.
#[derive(Default)]
struct World {
    children: Vec<(String, Child)>,
    namespaces: Vec<&'static str>,
    dir: PathBuf,
}

impl World {
    fn create(&mut self) -> Result<()> {
        self.dir = std::env::temp_dir().join(format!("mirror-demo-{}", std::process::id()));
        std::fs::create_dir_all(&self.dir)?;
        for ns in [NS_CLIENT, NS_NODE, NS_MIRRORS] {
            // Left over from a run that was killed: remove first.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns])?;
            self.namespaces.push(ns);
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            "mdemo-node",
            "netns",
            NS_NODE,
            "type",
            "veth",
            "peer",
            "name",
            "mdemo-client",
            "netns",
            NS_CLIENT,
        ])?;
        ip(&[
            "link",
            "add",
            "mdemo-up",
            "netns",
            NS_NODE,
            "type",
            "veth",
            "peer",
            "name",
            "mdemo-mirrors",
            "netns",
            NS_MIRRORS,
        ])?;
        for (ns, dev, addrs) in [
            (NS_NODE, "mdemo-node", vec!["10.200.0.1/24"]),
            (NS_CLIENT, "mdemo-client", vec!["10.200.0.2/24"]),
            (NS_NODE, "mdemo-up", vec!["10.201.0.1/24"]),
            (
                NS_MIRRORS,
                "mdemo-mirrors",
                vec!["10.201.0.2/24", "10.201.0.3/24"],
            ),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", a, "dev", dev])?;
            }
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Spawns `cmd` in its own process group with stdout/stderr in `dir/<name>.out|err`;
    /// returns its index.
    fn spawn(&mut self, name: &str, cmd: &mut Command, dir: &Path) -> Result<usize> {
        let out = std::fs::File::create(dir.join(format!("{name}.out")))?;
        let err = std::fs::File::create(dir.join(format!("{name}.err")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_owned(), child));
        Ok(self.children.len() - 1)
    }

    /// SIGINT to one child (by PID), then waits for it.
    fn stop(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let (name, child) = &mut self.children[i];
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{name} exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} did not stop within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            // Deleting a namespace removes the veth ends in it, and so their peers.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn say(s: &str) {
    println!("demo: {s}");
}
