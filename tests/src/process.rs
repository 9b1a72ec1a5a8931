//! Child processes killed by PID on drop, and waiting for a TCP port inside a namespace.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::NetNs;

/// A child process, killed (SIGKILL, by its PID) and reaped on drop.
pub struct ChildGuard {
    pub child: Option<Child>,
    pub what: String,
}

impl ChildGuard {
    pub fn spawn(what: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Self {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends a signal to the child by PID.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit up to `timeout`; returns the exit status, or panics after killing it.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("child already reaped");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("{} did not exit within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until something listens on `port` inside `ns` (checked with `ss`, so no connection is
/// made that a capture could see). Panics after `timeout`.
pub fn wait_for_port(ns: &NetNs, port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let pattern = format!(":{port} ");
    loop {
        let out = ns.command("ss").args(["-Hltn"]).output().expect("run ss");
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains(&pattern))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} in {} after {timeout:?}",
            ns.name
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
