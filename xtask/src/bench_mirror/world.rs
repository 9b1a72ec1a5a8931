//! The bench's namespaces and processes: client, node (primary + agent) and mirrors, joined by
//! two veth pairs; everything is removed on drop, also when the bench fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{ip, ns_cmd, wait_port};

pub const NS: [&str; 3] = ["mbench-client", "mbench-node", "mbench-mirrors"];
pub const PRIMARY: &str = "10.210.0.1";
pub const MIRROR: &str = "10.211.0.2";
pub const PORT: u16 = 8080;
/// The fast mirror's port (the nginx mirror listens on `PORT`).
pub const FAST_PORT: u16 = 8081;

/// Namespaces, processes and a temp dir; removed on drop (also on error).
#[derive(Default)]
pub struct World {
    pub children: Vec<Child>,
    created: Vec<&'static str>,
    pub dir: PathBuf,
}

impl World {
    pub fn create(&mut self) -> Result<()> {
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

    /// Starts nginx (`primary` or `mirror`) in `ns`, listening on `host`; returns its index.
    pub fn nginx(&mut self, ns: &str, name: &str, host: &str) -> Result<usize> {
        self.nginx_with(ns, name, host, false)
    }

    /// [`Self::nginx`] serving h2c (HTTP/2 with prior knowledge) when `http2`.
    pub fn nginx_with(&mut self, ns: &str, name: &str, host: &str, http2: bool) -> Result<usize> {
        let conf = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf, nginx_conf(&self.dir, name, host, http2))?;
        let i = self.spawn(
            ns_cmd(ns, "nginx").args(["-c", conf.to_str().unwrap(), "-g", "daemon off;"]),
            name,
        )?;
        wait_port(ns, host, PORT, || Ok(()))?;
        Ok(i)
    }

    /// [`Self::nginx`] terminating TLS itself (`ssl`, a self-signed certificate made here with
    /// the openssl CLI).
    pub fn nginx_tls(&mut self, ns: &str, name: &str, host: &str) -> Result<usize> {
        let d = self.dir.display().to_string();
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=primary",
            ])
            .arg("-keyout")
            .arg(self.dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(self.dir.join(format!("{name}.pem")))
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !made.success() {
            bail!("openssl req failed");
        }
        let conf = self.dir.join(format!("{name}.conf"));
        let plain = nginx_conf(&self.dir, name, host, false);
        let tls = plain.replace(
            &format!("listen {host}:{PORT};"),
            &format!(
                "listen {host}:{PORT} ssl;\n    ssl_certificate {d}/{name}.pem;\n    \
                 ssl_certificate_key {d}/{name}.key;"
            ),
        );
        std::fs::write(&conf, tls)?;
        let i = self.spawn(
            ns_cmd(ns, "nginx").args(["-c", conf.to_str().unwrap(), "-g", "daemon off;"]),
            name,
        )?;
        wait_port(ns, host, PORT, || Ok(()))?;
        Ok(i)
    }

    /// Spawns with stdout/stderr into `<dir>/<name>.out|.err`; returns the child's index.
    pub fn spawn(&mut self, cmd: &mut Command, name: &str) -> Result<usize> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(self.dir.join(format!("{name}.err")))?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// SIGINT to our own child `i`, then waits for it to exit.
    pub fn interrupt(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let c = &mut self.children[i];
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("process {} did not stop within {timeout:?}", c.id());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.dir.join(file)).with_context(|| format!("reading {file}"))
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

/// One nginx worker (`master_process off`: the process `ip netns exec` execs is the server).
fn nginx_conf(dir: &Path, name: &str, host: &str, http2: bool) -> String {
    let d = dir.display();
    let h2 = if http2 { " http2" } else { "" };
    format!(
        "master_process off;\nworker_processes 1;\npid {d}/{name}.pid;\nerror_log {d}/{name}.error.log;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/{name}-body;\n\
         server {{\n    listen {host}:{PORT}{h2};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    )
}

/// Sets the CPU affinity of every thread of a running process (`taskset -a -p -c`).
pub fn pin(pid: u32, cpus: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
