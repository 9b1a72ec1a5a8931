//! A real HTTP server as the mirror: nginx on loopback, closing keep-alive connections every
//! 50 requests (`keepalive_requests`), answering 200, 404 and 405. Every copy is answered and
//! counted; no request is lost to the keep-alive close race. The same over HTTP/2 (nginx
//! serving h2c, `protocol=h2`): there the limit is a GOAWAY every 50 streams.

mod replay_common;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mirror_agent::replay::stats::ErrorKind;
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

/// How the test nginx listens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listen {
    Http1,
    /// h2c with prior knowledge (`listen ... http2`).
    H2c,
    /// TLS with a self-signed certificate (made by `openssl`), offering ALPN `h2` and
    /// `http/1.1` (`listen ... ssl http2`).
    Tls,
}

/// nginx answering on loopback. Its access log (`access.log` in its directory) has the
/// protocol and status of every request.
fn start_nginx(listen: Listen) -> Option<Nginx> {
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
    let tls = if listen == Listen::Tls {
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !made.success() {
            return None;
        }
        format!(
            " ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;",
            d = dir.display()
        )
    } else {
        String::new()
    };
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n log_format p '$request_method $request_uri $server_protocol $status $request_length';\n\
         access_log {d}/access.log p;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         keepalive_requests 50;\n client_max_body_size 1m;\n\
         server {{ listen 127.0.0.1:{port}{opts}; root {d}/html;{tls} }}\n}}\n",
        d = dir.display(),
        opts = match listen {
            Listen::Http1 => "",
            Listen::H2c => " http2",
            Listen::Tls => " ssl http2",
        },
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

/// nginx for `test`, or `None` after saying why (a failure instead when the tools are
/// required, as in CI).
fn nginx_or_skip(test: &str, listen: Listen) -> Option<Nginx> {
    let nginx = start_nginx(listen);
    if nginx.is_none() {
        eprintln!("SKIP {test}: nginx (or openssl) not installed, or nginx did not start");
        assert_ne!(
            std::env::var("MIRROR_REQUIRE_TOOLS").as_deref(),
            Ok("1"),
            "{test}: nginx is required"
        );
    }
    nginx
}

/// Replays `n` copies of four requests (`first`, a 404, a HEAD, a chunked POST) to `mirror`
/// (a `--mirror` value) with `max_connections`, in bursts of 50, and returns the counters once
/// every copy is resolved.
async fn replay_mix(
    mirror: &str,
    max_connections: usize,
    first: &[u8],
    n: usize,
) -> mirror_agent::replay::stats::MirrorSnapshot {
    let spec = mirror_agent::replay::spec::parse_mirror(mirror).unwrap();
    let mut cfg = config(vec![spec]);
    cfg.max_connections = max_connections;
    cfg.timeout = Duration::from_secs(5);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    let reqs = [
        one(first),
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
    println!("{}", snap.table());
    snap.mirrors[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_mirror_with_keepalive_limit() {
    let Some(nginx) = nginx_or_skip("nginx_mirror_with_keepalive_limit", Listen::Http1) else {
        return;
    };
    let n = 600;
    let m = &replay_mix(
        &format!("http://127.0.0.1:{},name=nginx", nginx.port),
        4,
        b"GET / HTTP/1.1\r\nHost: mirror\r\nUser-Agent: t\r\n\r\n",
        n,
    )
    .await;
    // GET / and HEAD / -> 200; /missing -> 404; POST to a static file -> 405.
    assert_eq!(m.status[1], (n / 2) as u64, "{m:?}");
    assert_eq!(m.status[3], (n / 2) as u64, "{m:?}");
    assert_eq!(m.error_count() + m.timeouts + m.dropped_count(), 0, "{m:?}");
    assert!(
        m.connects >= (n / 50) as u64,
        "nginx closed every 50 requests: {m:?}"
    );
}

/// HTTP/1.1 requests to an HTTP/2 mirror (`protocol=h2`): nginx serving h2c, sending GOAWAY
/// every 50 streams. Every copy arrives as HTTP/2 (nginx's access log says so) and is answered
/// with its own status; copies the closing connection never started are retried, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_h2c_mirror_with_goaway_every_50_streams() {
    let Some(nginx) = nginx_or_skip("nginx_h2c_mirror_with_goaway_every_50_streams", Listen::H2c)
    else {
        return;
    };
    let n = 600;
    let m = &replay_mix(
        &format!("http://127.0.0.1:{},name=nginx-h2,protocol=h2", nginx.port),
        8,
        b"GET /?q=1 HTTP/1.1\r\nHost: mirror\r\nUser-Agent: t\r\nConnection: keep-alive\r\n\r\n",
        n,
    )
    .await;
    assert_eq!(m.timeouts + m.dropped_count(), 0, "{m:?}");
    // When nginx ends a connection after its GOAWAY, the h2 client now and then fails a
    // stream nginx did answer (GoAway NO_ERROR): that answer is lost to us, counted as an io
    // error, and the copy is not sent again (it reached nginx: the log below has it once).
    // At most one such stream per GOAWAY.
    let lost_answers = m.error(ErrorKind::Io);
    assert_eq!(m.error_count(), lost_answers, "{m:?}");
    assert!(lost_answers < m.connects, "{m:?}");
    assert_eq!(m.answered() + lost_answers, n as u64, "{m:?}");
    // Over HTTP/2 a copy counts as sent once its last frame is handed to the connection; one
    // the connection never took (it was closing, twice) is an io error, not sent.
    assert!(
        m.sent <= n as u64 && m.sent + lost_answers >= n as u64,
        "{m:?}"
    );
    println!("{n} copies over HTTP/2 to nginx: {m:?}");
    assert!(
        m.connects >= (n / 50) as u64,
        "nginx sends GOAWAY every 50 streams: {m:?}"
    );
    // nginx writes its log line after answering: give the last ones a moment.
    let log = nginx.dir.join("access.log");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let odd: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(" HTTP/2.0 200") && !l.contains(" HTTP/2.0 40"))
        .collect();
    assert_eq!(
        lines.len(),
        n,
        "one log line per copy: {m:?}; odd lines: {odd:?}"
    );
    // Every copy reached nginx exactly once, over HTTP/2, and got its own status.
    for (want, count) in [
        ("GET /?q=1 HTTP/2.0 200", n / 4),
        ("GET /missing HTTP/2.0 404", n / 4),
        ("HEAD / HTTP/2.0 200", n / 4),
        ("POST / HTTP/2.0 405", n / 4),
    ] {
        let got = lines.iter().filter(|l| l.starts_with(want)).count();
        assert_eq!(
            got,
            count,
            "`{want}` lines: {:?}",
            &lines[..lines.len().min(8)]
        );
    }
}

/// nginx's access log lines, once there are `n` (it writes each after answering).
async fn access_log(nginx: &Nginx, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(nginx.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines
}

/// An https mirror offering both HTTP/2 and HTTP/1.1: `protocol=h2` copies negotiate ALPN
/// `h2`, `protocol=h1` copies `http/1.1`; nginx's log shows each copy in the protocol asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_mirror_gets_http2_by_alpn_and_http11_when_asked() {
    let Some(nginx) = nginx_or_skip(
        "https_mirror_gets_http2_by_alpn_and_http11_when_asked",
        Listen::Tls,
    ) else {
        return;
    };
    // Fewer than nginx's 50 requests per connection: no GOAWAY race here (see the h2c test).
    let n = 40;
    let first = b"GET /?q=1 HTTP/1.1\r\nHost: mirror\r\n\r\n";
    for protocol in ["h2", "h1"] {
        let m = &replay_mix(
            &format!(
                "https://127.0.0.1:{},name=tls-{protocol},insecure=true,protocol={protocol}",
                nginx.port
            ),
            4,
            first,
            n,
        )
        .await;
        assert_eq!(
            (m.sent, m.answered(), m.error_count(), m.tls_failures),
            (n as u64, n as u64, 0, [0; 3]),
            "{protocol}: {m:?}"
        );
    }
    let lines = access_log(&nginx, 2 * n).await;
    assert_eq!(lines.len(), 2 * n);
    for version in ["HTTP/2.0", "HTTP/1.1"] {
        let got = lines
            .iter()
            .filter(|l| l.contains(&format!(" {version} ")))
            .count();
        assert_eq!(got, n, "{version}: {:?}", &lines[..lines.len().min(6)]);
    }
}

/// `--from` a recording of HTTP/2 streams (`"version":"HTTP/2"` lines) to an h2c mirror with
/// the default `protocol=auto`: the copies go over HTTP/2 again.
#[test]
fn from_replays_http2_records_over_http2() {
    let Some(nginx) = nginx_or_skip("from_replays_http2_records_over_http2", Listen::H2c) else {
        return;
    };
    let limits = mirror_agent::http::request::HttpLimits::default();
    let mut lines = String::new();
    for (i, path) in ["/", "/?x=1", "/missing"].iter().enumerate() {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: api\r\nuser-agent: rec\r\n\r\n");
        let mut request = mirror_agent::http2::convert::request_from_http1(
            raw.into_bytes(),
            1 + i as u64,
            &limits,
        )
        .expect("a request");
        request.h2_stream = Some(1 + 2 * i as u32);
        let c = mirror_agent::pipeline::CapturedRequest {
            src: "10.0.0.1:5000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            flow_id: 1,
            seq_in_flow: i as u64,
            request,
        };
        lines.push_str(&mirror_agent::record::to_line(&c));
        lines.push('\n');
    }
    let file = nginx.dir.join("h2.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .arg("--from")
        .arg(&file)
        .args([
            "--mirror",
            &format!("http://127.0.0.1:{},name=h2", nginx.port),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("records replayed: 3"), "{stderr}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = rt.block_on(access_log(&nginx, 3));
    let mut got: Vec<&str> = log.iter().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("GET / HTTP/2.0 200"), "{got:?}");
    assert!(got[1].starts_with("GET /?x=1 HTTP/2.0 200"), "{got:?}");
    assert!(got[2].starts_with("GET /missing HTTP/2.0 404"), "{got:?}");
}
