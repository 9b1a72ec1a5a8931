//! A cgroup v2 directory made for one test, and processes started inside it.
//!
//! A process joins the cgroup before it runs the program (a shell writes its own PID to
//! `cgroup.procs`, then execs), so every socket the program creates belongs to the cgroup. On
//! drop, the processes still in the cgroup (all started by the test) are killed by PID, then the
//! directory is removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::NetNs;

/// A fresh cgroup under the cgroup v2 mount, removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// `None` when this system has no cgroup v2 mount (the caller says why it skips).
    pub fn new() -> Option<Self> {
        let root = mirror_agent::capture::ebpf::cgroup2_mount()?;
        let path = root.join(crate::unique_name("mirror-test-"));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Some(Self { path })
    }

    /// A command that runs `program` in `ns` (through `nsenter`, which keeps /sys) as a member
    /// of this cgroup from its first instruction on.
    pub fn command_in(&self, ns: &NetNs, program: &str) -> Command {
        let mut c = ns.nsenter("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(&self.path)
            .arg(program);
        c
    }

    /// PIDs of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a process of the test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("removing cgroup {}: {e}", self.path.display());
        }
    }
}
