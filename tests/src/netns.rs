//! Network namespaces and veth pairs that clean themselves up.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `prefix` + pid + counter. Interface names must stay
/// within 15 bytes, so keep prefixes short (`mv`, `ms`).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace, deleted on drop. Processes started in it must be gone first (declare
/// their guards after the namespace so they drop before it).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique_name("mirrortest-");
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the PID
    /// of the spawned child is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A command that runs `program` in the namespace with `nsenter --net`: unlike
    /// [`command`](Self::command) (`ip netns exec` remounts /sys), the caller's /sys and so the
    /// cgroup tree stay visible. The PID of the spawned child is the program's (nsenter execs).
    pub fn nsenter(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has joined this namespace (sockets it creates and interface
    /// names it resolves belong to the namespace); the calling thread is not moved.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(format!("/var/run/netns/{}", self.name))
                    .expect("open netns file");
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd affects only this thread.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// Adds a veth pair `name`/`peer` with both ends inside this namespace, both up. The names
    /// are the namespace's own: another namespace may use the same ones.
    pub fn add_veth(&self, name: &str, peer: &str) {
        self.run(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", peer,
        ]);
        self.run(&["ip", "link", "set", name, "up"]);
        self.run(&["ip", "link", "set", peer, "up"]);
    }

    /// Runs a command in the namespace and asserts it succeeded; returns its stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self
            .command(argv[0])
            .args(&argv[1..])
            .output()
            .expect("spawn in netns");
        assert!(
            out.status.success(),
            "{} in {}: {}",
            argv.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it (and so its peer).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: the server side (where the agent captures) and the
/// client side, with IPv4 10.77.0.1/.2 and IPv6 fd77::1/::2.
pub struct Topology {
    pub server: NetNs,
    pub client: NetNs,
    /// The veth end inside `server`.
    pub server_if: String,
    /// The veth end inside `client`.
    pub client_if: String,
}

impl Topology {
    pub const SERVER_V4: &'static str = "10.77.0.1";
    pub const CLIENT_V4: &'static str = "10.77.0.2";
    pub const SERVER_V6: &'static str = "fd77::1";
    pub const CLIENT_V6: &'static str = "fd77::2";

    pub fn new() -> Self {
        let server = NetNs::new();
        let client = NetNs::new();
        let server_if = unique_name("ms");
        let client_if = unique_name("mc");
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            &server.name,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &client.name,
        ]);
        for (ns, ifname, v4, v6) in [
            (&server, &server_if, Self::SERVER_V4, Self::SERVER_V6),
            (&client, &client_if, Self::CLIENT_V4, Self::CLIENT_V6),
        ] {
            ns.run(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.run(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ns.run(&["ip", "link", "set", ifname, "up"]);
        }
        Self {
            server,
            client,
            server_if,
            client_if,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
