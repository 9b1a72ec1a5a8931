//! Network-namespace plumbing shared by `demo` and the benchmarks: commands inside a namespace,
//! `ip` calls that fail loudly, and waiting for a server to listen.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// `program` run inside `ns`, optionally pinned to `cpus` (`taskset -c`).
pub fn ns_cmd_on(ns: &str, cpus: Option<&str>, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if let Some(cpus) = cpus {
        c.args(["taskset", "-c", cpus]);
    }
    c.arg(program);
    c
}

/// `program` run inside `ns`.
pub fn ns_cmd(ns: &str, program: &str) -> Command {
    ns_cmd_on(ns, None, program)
}

/// Runs `ip ARGS`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> Result<()> {
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

/// Waits up to 10 s until `host:port` listens in `ns` (checked with ss, no connection made).
/// `interrupted` is polled on each round, so Ctrl-C ends the wait.
pub fn wait_port(
    ns: &str,
    host: &str,
    port: u16,
    interrupted: impl Fn() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = format!("{host}:{port}");
    loop {
        interrupted()?;
        let out = ns_cmd(ns, "ss").arg("-Hltn").output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {want} in {ns}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A namespace of the benchmark's own, with `lo` up, deleted on drop (with everything in it: a
/// veth end inside goes too, and its peer with it).
pub struct Namespace(String);

impl Namespace {
    /// Creates `name` (deleting a namespace left by an earlier run first).
    pub fn new(name: String) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        crate::util::sh(ns.cmd("ip").args(["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `program` run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        ns_cmd(&self.0, program)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
