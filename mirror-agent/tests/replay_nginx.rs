//! A real HTTP server as the mirror: nginx on loopback, closing keep-alive connections every
//! 50 requests (`keepalive_requests`), answering 200, 404 and 405. Every copy is answered and
//! counted; no request is lost to the keep-alive close race.

mod replay_common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

/// nginx in its own prefix directory; killed (by PID) and removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nginx() -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = StdListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir =
        std::env::temp_dir().join(format!("mirror-agent-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(dir.join("html")).ok()?;
    std::fs::write(dir.join("html/index.html"), "hello\n").ok()?;
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         keepalive_requests 50;\n client_max_body_size 1m;\n\
         server {{ listen 127.0.0.1:{port}; root {d}/html; }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(bin)
        .args([
            "-p",
            dir.to_str()?,
            "-c",
            "nginx.conf",
            "-g",
            "daemon off; master_process off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let nginx = Nginx { child, dir, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(nginx);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_mirror_with_keepalive_limit() {
    let Some(nginx) = start_nginx() else {
        eprintln!("SKIP nginx_mirror_with_keepalive_limit: nginx not installed or did not start");
        return;
    };
    let spec = mirror_agent::replay::spec::parse_mirror(&format!(
        "http://127.0.0.1:{},name=nginx",
        nginx.port
    ))
    .unwrap();
    let mut cfg = config(vec![spec]);
    cfg.max_connections = 4;
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let n = 600;
    let reqs = [
        one(b"GET / HTTP/1.1\r\nHost: mirror\r\nUser-Agent: t\r\n\r\n"),
        one(b"GET /missing HTTP/1.1\r\nHost: mirror\r\n\r\n"),
        one(b"HEAD / HTTP/1.1\r\nHost: mirror\r\n\r\n"),
        one(b"POST / HTTP/1.1\r\nHost: mirror\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ];
    for i in 0..n {
        replayer.submit(&reqs[i % reqs.len()]);
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    wait_until_or(
        "all answered",
        Duration::from_secs(20),
        || replayer.snapshot().mirrors[0].in_flight == 0,
        || replayer.snapshot().table(),
    )
    .await;
    let snap = finish(&replayer).await;
    let m = &snap.mirrors[0];
    println!("{}", snap.table());
    // GET / and HEAD / -> 200; /missing -> 404; POST to a static file -> 405.
    assert_eq!(m.status[1], (n / 2) as u64, "{m:?}");
    assert_eq!(m.status[3], (n / 2) as u64, "{m:?}");
    assert_eq!(m.error_count() + m.timeouts + m.dropped_count(), 0, "{m:?}");
    assert!(
        m.connects >= (n / 50) as u64,
        "nginx closed every 50 requests: {m:?}"
    );
}
