//! A real Prometheus server (Debian package `prometheus`) for the telemetry tests: temp config
//! and TSDB directory, 127.0.0.1 on a free port, 1 s scrape interval, killed by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Prometheus {
    /// `None` (with the reason printed) when the binary is missing.
    pub fn start(target: std::net::SocketAddr) -> Option<Self> {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!(
                "SKIP: prometheus binary not found (install the Debian package `prometheus`, \
                 e.g. with `cargo xtask setup`)"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "mirror-telemetry-prom-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: mirror-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Some(Self { child, dir, port })
    }

    /// Instant query through the HTTP API; the parsed JSON `data.result`.
    pub fn query(&self, promql: &str) -> Option<Vec<serde_json::Value>> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let resp = reqwest::blocking::Client::new()
            .get(url)
            .query(&[("query", promql)])
            .timeout(Duration::from_secs(2))
            .send()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&resp.text().ok()?).ok()?;
        if v["status"] != "success" {
            panic!("prometheus rejected `{promql}`: {v}");
        }
        v["data"]["result"].as_array().cloned()
    }

    /// Polls `promql` until a sample satisfies `ok`, up to `limit`. Returns the sample.
    pub fn wait_for(
        &self,
        promql: &str,
        limit: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            if let Some(r) = self.query(promql) {
                if let Some(s) = r.iter().find(|s| ok(s)) {
                    return s.clone();
                }
                last = Some(r);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let targets =
            reqwest::blocking::get(format!("http://127.0.0.1:{}/api/v1/targets", self.port))
                .and_then(|r| r.text())
                .unwrap_or_default();
        panic!(
            "prometheus never returned the expected `{promql}`; last: {last:?}; targets: {targets}"
        );
    }
}

/// The sample's value as f64.
pub fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}
