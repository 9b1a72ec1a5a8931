//! Running the real agent binary inside a namespace, and reading its final summary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, NetNs};

/// The agent binary: `$MIRROR_AGENT_BIN`, else `mirror-agent` next to the test's `deps/` dir.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRROR_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("mirror-agent"))
        .unwrap_or_default()
}

/// A running agent; killed on drop if still running.
pub struct Agent {
    pub guard: ChildGuard,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The classifier variant the agent was told to run (`MIRROR_CAPTURE_COPY` given to it, else
    /// inherited from the test run); `None` for `auto`.
    pub forced_copy: Option<String>,
}

/// The agent's final summary line (`key=value ...`), as numbers.
#[derive(Debug, Default)]
pub struct Summary(pub HashMap<String, u64>);

impl Summary {
    pub fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("summary has no {key}: {:?}", self.0))
    }

    /// The kernel's accounting identity (`mirror_common::counter`): every matched skb has one
    /// outcome. Records count chunks, so they are not part of it.
    pub fn assert_kernel_balanced(&self) {
        assert_eq!(
            self.get("matched"),
            self.get("tls_ciphertext")
                + self.get("ignored")
                + self.get("sampled_out")
                + self.get("empty")
                + self.get("captured")
                + self.get("ring_full")
                + self.get("load_errors"),
            "every matched skb accounted for: {self:?}"
        );
    }
}

/// The classifier variant the agent must report in its summary (`capture_copy=`): the one
/// `MIRROR_CAPTURE_COPY` forces for the test run, which the agent inherits; `None` for `auto`
/// or unset (then either is right).
pub fn forced_copy_path() -> Option<String> {
    match std::env::var("MIRROR_CAPTURE_COPY").as_deref() {
        Ok(p @ ("reserve" | "scratch")) => Some(p.to_owned()),
        _ => None,
    }
}

/// `capture_copy=` of the agent's final summary line in `stdout`.
pub fn summary_copy_path(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .rev()
        .find(|l| l.contains("records="))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("capture_copy="))
        .map(str::to_owned)
}

impl Agent {
    /// Starts `mirror-agent args...` in `ns`, logs in `dir`, and waits until it has attached.
    pub fn start(ns: &NetNs, args: &[&str], dir: &Path) -> Self {
        Self::start_with_env(ns, args, &[], dir)
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(ns: &NetNs, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        Self::spawn(
            ns.command(binary().to_str().expect("utf-8 path")),
            args,
            env,
            dir,
        )
    }

    /// [`start`](Self::start) through `nsenter`, which keeps /sys and the cgroup tree
    /// (`--cgroup` needs them; `ip netns exec` remounts /sys).
    pub fn start_keeping_sys(ns: &NetNs, args: &[&str], dir: &Path) -> Self {
        Self::spawn(
            ns.nsenter(binary().to_str().expect("utf-8 path")),
            args,
            &[],
            dir,
        )
    }

    fn spawn(
        mut cmd: std::process::Command,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Self {
        let tag = crate::unique_name("agent-");
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        cmd.args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(&stdout).expect("stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ));
        let forced_copy = match env.iter().find(|(k, _)| *k == "MIRROR_CAPTURE_COPY") {
            Some((_, v)) => Some((*v).to_owned()).filter(|v| v != "auto"),
            None => forced_copy_path(),
        };
        let mut agent = Self {
            guard: ChildGuard::spawn("mirror-agent", &mut cmd),
            stdout,
            stderr,
            forced_copy,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if agent.log().contains("capturing;") {
                return agent;
            }
            if let Some(c) = agent.guard.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                agent.guard.child = None;
                panic!("agent exited early with {status}: {}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not attach: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `sig`, waits for the exit, returns the status and the parsed summary (empty when
    /// the agent printed none, e.g. after SIGKILL). When the agent was told to run a classifier
    /// variant ([`Agent::forced_copy`]), checks it ran that one.
    pub fn stop(&mut self, sig: i32) -> (ExitStatus, Summary) {
        self.guard.signal(sig);
        let status = self.guard.wait_timeout(Duration::from_secs(20));
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        if let (Some(want), Some(got)) = (&self.forced_copy, summary_copy_path(&out)) {
            assert_eq!(&got, want, "MIRROR_CAPTURE_COPY={want}, agent ran {got}");
        }
        (status, parse_summary(&out))
    }
}

/// A counter of the pipeline's exit ledger (`name value` lines, e.g. `lost.request_bytes 0`).
pub fn ledger(log: &str, name: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in the log: {log}"))
}

pub fn parse_summary(text: &str) -> Summary {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("records="))
        .unwrap_or("");
    Summary(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

/// Waits until none of our programs is attached to `iface` in `ns` (the kernel may release TCX
/// links a moment after the agent exits); fails after `within`.
pub fn wait_detached(ns: &NetNs, iface: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = attached_programs(ns, iface);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still attached after {within:?}: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Our programs attached to `iface` in `ns`: TCX programs (queried with BPF_PROG_QUERY, which
/// this machine's bpftool does not decode) and tc filters (`tc filter show`), named mirror_*.
pub fn attached_programs(ns: &NetNs, iface: &str) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut found: Vec<String> = ns.enter(|| {
        let mut names = Vec::new();
        for (hook, t) in [
            ("tcx/ingress", TcAttachType::Ingress),
            ("tcx/egress", TcAttachType::Egress),
        ] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, t) {
                for p in progs {
                    names.push(format!("{hook} {}", p.name_as_str().unwrap_or("?")));
                }
            }
        }
        names
    });
    for hook in ["ingress", "egress"] {
        let out = ns
            .command("tc")
            .args(["filter", "show", "dev", iface, hook])
            .output()
            .expect("run tc");
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("tc/{hook} {l}")),
        );
    }
    found.retain(|l| l.contains("mirror_ingress") || l.contains("mirror_egress"));
    found
}

/// Runs the agent to completion with `args` (no namespace) and returns status and stderr.
pub fn run_to_exit(args: &[&str], wrapper: &[&str]) -> (Option<i32>, String) {
    let mut cmd = if let [first, rest @ ..] = wrapper {
        let mut c = Command::new(first);
        c.args(rest).arg(binary());
        c
    } else {
        Command::new(binary())
    };
    let out = cmd
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("spawn agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
