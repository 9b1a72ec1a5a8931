//! Pieces the capture benchmarks share (`bench capture`, its bulk-upload section): a child
//! process stopped by PID on drop, and the nginx origin they load.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A child stopped by PID on drop: SIGTERM first (nginx's master then stops its workers, which
/// SIGKILL would orphan), SIGKILL after 3 s.
pub struct Proc(pub Child);

impl Proc {
    /// Sends `sig` to the child.
    pub fn signal(&self, sig: i32) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's PID; no memory is passed.
        let rc = unsafe { kill(self.0.id() as i32, sig) };
        anyhow::ensure!(
            rc == 0,
            "kill {}: {}",
            self.0.id(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.signal(SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Writes the origin's nginx configuration into `dir`: one worker answering `200 ok` on
/// `addr:port`, request bodies up to 1 MiB read and discarded, no logs, keep-alive without end.
pub fn nginx_conf(dir: &Path, addr: &str, port: u16) -> std::io::Result<PathBuf> {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::create_dir_all(dir.join("body"))?;
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/body;\n  fastcgi_temp_path {d}/body;\n\
             client_max_body_size 1m;\n  client_body_buffer_size 128k;\n\
             keepalive_requests 10000000;\n\
             server {{ listen {addr}:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        ),
    )?;
    Ok(conf)
}

/// Writes the wrk script that POSTs a 64 KiB body (`application/octet-stream`) into `dir`.
pub fn post_64k_script(dir: &Path) -> std::io::Result<PathBuf> {
    let post = dir.join("post64k.lua");
    std::fs::write(
        &post,
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"a\", 65536)\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n",
    )?;
    Ok(post)
}
