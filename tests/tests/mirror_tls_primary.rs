//! Privileged: mirroring a primary that terminates TLS itself (issue 14 B), `--tls auto`.
//!
//! Real peers: the primary is a Python `ssl` server (pyenv's Python links the system
//! `libssl.so.3`) that writes the exact decrypted bytes of every request it reads to a file;
//! clients are curl over HTTPS (a keep-alive connection with two requests, a 300 KB POST) and a
//! Python TLS client whose connection was opened before the agent started. The agent captures
//! the server's veth and port with `--tls auto`, which finds the server's libssl; the mirror is
//! a recording server on the node's loopback. Checked:
//! - the mirror receives, byte for byte, every request the primary decrypted after the agent
//!   started, and nothing else (not the ciphertext, not the request sent before the agent ran),
//!   except the one the server was already waiting for in `SSL_read` when the probes attached:
//!   a return probe fires only for calls entered after it was attached, so that call is
//!   invisible (the early connection's `/before-2`; documented in the README);
//! - the connection opened before the agent started is found through procfs, the new ones from
//!   the kernel (opened with a SYN, closed with the kernel's close record);
//! - the classifiers leave the TLS port's ciphertext alone once it is known (counted), and the
//!   kernel's accounting identity holds with that outcome; no TLS record was lost.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirror_tests::agent::Agent;
use mirror_tests::mirror::{Behavior, MirrorTable};
use mirror_tests::scenario::{Family, curl_ok, noise, start_mirror};
use mirror_tests::{ChildGuard, TempDir, Topology, privileged_or_skip, wait_for_port};

const TLS_PORT: u16 = 8443;

/// The tests of this file run one at a time: the uprobes are on the system libssl for every
/// process, so each agent would also see the other test's TLS calls (counted as another port's
/// connections, or without an fd), which the exact counter checks here do not expect.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const MIRROR_PORT: u16 = 9001;

/// The primary: one thread per connection; each request (head and Content-Length body) is
/// written as read, decrypted, to `OUTDIR/req-N.bin`, and answered `200 ok` (`GET /big-answer`:
/// a 300000-byte body, in one write).
const PRIMARY: &str = r#"
import os, socket, ssl, sys, threading
cert, key, host, port, outdir = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket(socket.AF_INET)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, int(port)))
ls.listen(64)
lock = threading.Lock()
count = [0]
def serve(c):
    buf = b""
    with c:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, rest = buf.partition(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            while len(rest) < n:
                d = c.recv(65536)
                if not d:
                    return
                rest += d
            req, buf = head + b"\r\n\r\n" + rest[:n], rest[n:]
            with lock:
                count[0] += 1
                i = count[0]
            with open(os.path.join(outdir, "req-%04d.bin" % i), "wb") as f:
                f.write(req)
            body = b"ok"
            if head.split(b"\r\n")[0].startswith(b"GET /big-answer "):
                body = b"x" * 300000
            # One sendall: one SSL_write of the whole answer.
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
print("listening", flush=True)
while True:
    s, _ = ls.accept()
    try:
        c = ctx.wrap_socket(s, server_side=True)
    except Exception:
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// What every Python TLS client script here starts with ([`client_script`]): `s` connected to
/// `argv[1]:argv[2]` (the certificate not checked), and `answer()`, which reads until the
/// primary's `ok`.
const CLIENT_PREAMBLE: &str = r#"
import socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection((host, port)))
def answer():
    buf = b""
    while not buf.endswith(b"ok"):
        d = s.recv(4096)
        if not d:
            raise SystemExit("closed")
        buf += d
"#;

/// A client script: [`CLIENT_PREAMBLE`], then `body`.
fn client_script(body: &str) -> String {
    format!("{CLIENT_PREAMBLE}{body}")
}

/// A client whose TLS connection is opened (and used once) before the agent starts: it sends
/// `/before-1`, prints `sent`, waits for a line on stdin, sends `/before-2` and `/before-3`,
/// printing `sent` after each answer.
const EARLY_CLIENT: &str = r#"
def req(path):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: primary\r\nX-Conn: early\r\n\r\n")
    answer()
    print("sent", flush=True)
req(b"/before-1")
sys.stdin.readline()
req(b"/before-2")
req(b"/before-3")
s.close()
"#;

/// A client whose TLS connection is opened before the agent starts and stays idle: it prints
/// `ready`, waits for a line on stdin, sends `/late` and prints `sent` after the answer, waits
/// for another line, closes and prints `closed`.
const LATE_CLIENT: &str = r#"
print("ready", flush=True)
sys.stdin.readline()
s.sendall(b"GET /late HTTP/1.1\r\nHost: primary\r\nX-Conn: late\r\n\r\n")
answer()
print("sent", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"#;

/// What every test here starts with: its turn (one at a time, see [`ONE_AT_A_TIME`]), a
/// temporary directory with a self-signed certificate (`cert.pem`, `key.pem`), and the network
/// namespaces. `None` when the test cannot run here (`privileged_or_skip` says why).
struct Lab {
    // Dropped in this order: the namespaces, the directory, then the next test's turn.
    topo: Topology,
    dir: std::path::PathBuf,
    _tmp: TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    fn new(test: &str) -> Option<Self> {
        if !privileged_or_skip(test) {
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = TempDir::new(test);
        let dir = tmp.0.clone();
        self_signed(&dir);
        Some(Self {
            topo: Topology::new(),
            dir,
            _tmp: tmp,
            _turn: turn,
        })
    }
}

/// Stops the agent (SIGTERM), which must exit successfully: its summary and log.
fn stop_ok(agent: &mut Agent) -> (mirror_tests::agent::Summary, String) {
    let (status, summary) = agent.stop(libc::SIGTERM);
    let log = agent.log();
    assert!(status.success(), "agent exit {status}: {log}");
    (summary, log)
}

/// `ab -q FLAGS -n N URL` from the client namespace: every request completed, none failed.
fn run_ab(topo: &Topology, flags: &[&str], n: usize, url: &str) {
    let out = topo
        .client
        .command("ab")
        .arg("-q")
        .args(flags)
        .args(["-n", &n.to_string()])
        .arg(url)
        .output()
        .expect("run ab");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&format!("Complete requests:      {n}"))
            && text.contains("Failed requests:        0"),
        "ab {flags:?} {url}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The exit report's TLS lines name `process` (`NAME (pid N): ...`).
fn assert_report_names(log: &str, process: &str) {
    let report: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.starts_with("TLS plaintext (--tls)"))
        .take(4)
        .collect();
    assert!(
        report
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{process} (pid "))),
        "the exit report names {process}: {report:?}\n{log}"
    );
}

/// A client whose TLS connection is opened before the agent starts and only shakes hands: it
/// prints `ready`, waits for a line on stdin, closes and prints `closed`.
const IDLE_CLIENT: &str = r#"
print("ready", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"#;

/// Runs `script` (written to `dir/name`) with python3 in the client namespace against the TLS
/// port, with piped stdin and stdout.
fn spawn_client(
    topo: &Topology,
    dir: &Path,
    name: &str,
    script: &str,
) -> (
    ChildGuard,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    std::fs::write(dir.join(name), client_script(script)).unwrap();
    let mut child = topo
        .client
        .command("python3")
        .arg(dir.join(name))
        .arg(Topology::SERVER_V4)
        .arg(TLS_PORT.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python TLS client");
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let guard = ChildGuard {
        child: Some(child),
        what: format!("TLS client {name}"),
    };
    (guard, stdin, stdout)
}

fn self_signed(dir: &Path) {
    let out = Command::new("openssl")
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
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent capturing `port` on the node's veth with `--tls auto`, mirroring to the recording
/// mirror (`name=shadow` and `mirror_keys`).
fn start_tls_agent(topo: &Topology, port: u16, mirror_keys: &str, dir: &Path) -> Agent {
    start_tls_agent_with(topo, port, mirror_keys, &[], dir)
}

/// [`start_tls_agent`] with `extra` flags (`--tls auto` unless they have their own `--tls`).
fn start_tls_agent_with(
    topo: &Topology,
    port: u16,
    mirror_keys: &str,
    extra: &[&str],
    dir: &Path,
) -> Agent {
    let port = port.to_string();
    let mirror = format!("http://127.0.0.1:{MIRROR_PORT},name=shadow{mirror_keys}");
    let mut args = vec![
        "--iface",
        &topo.server_if,
        "--port",
        &port,
        "--mirror",
        &mirror,
    ];
    if !extra.contains(&"--tls") {
        args.extend(["--tls", "auto"]);
    }
    args.extend_from_slice(extra);
    Agent::start(&topo.server, &args, dir)
}

/// The Python primary (`PRIMARY`, written to `dir` with the certificate) on the node's address
/// and `port`, writing what it decrypts to `seen`.
fn start_python_primary(topo: &Topology, dir: &Path, port: u16, seen: &Path) -> ChildGuard {
    start_python_primary_with(topo, dir, port, seen, None)
}

/// [`start_python_primary`] loading its libssl from `libdir` when given (`LD_LIBRARY_PATH`).
fn start_python_primary_with(
    topo: &Topology,
    dir: &Path,
    port: u16,
    seen: &Path,
    libdir: Option<&Path>,
) -> ChildGuard {
    std::fs::create_dir_all(seen).unwrap();
    std::fs::write(dir.join("primary.py"), PRIMARY).unwrap();
    let mut cmd = topo.server.command("python3");
    if let Some(d) = libdir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    cmd.arg(dir.join("primary.py"))
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(Topology::SERVER_V4)
        .arg(port.to_string())
        .arg(seen)
        .stdout(Stdio::null());
    let guard = ChildGuard::spawn("python TLS primary", &mut cmd);
    wait_for_port(&topo.server, port, Duration::from_secs(10));
    guard
}

/// Stops `primary` and starts it again on a private copy of the system libssl (another file,
/// not probed: as a new image of the service with its own libssl), writing what it decrypts to
/// `seen`.
fn restart_on_own_libssl(
    topo: &Topology,
    dir: &Path,
    port: u16,
    primary: ChildGuard,
    seen: &Path,
) -> ChildGuard {
    drop(primary);
    let libdir = dir.join("lib");
    std::fs::create_dir_all(&libdir).unwrap();
    std::fs::copy(
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        libdir.join("libssl.so.3"),
    )
    .expect("copy the system libssl");
    let restarted = start_python_primary_with(topo, dir, port, seen, Some(&libdir));
    let maps =
        std::fs::read_to_string(format!("/proc/{}/maps", restarted.pid())).unwrap_or_default();
    assert!(
        maps.contains(&format!("{}/libssl.so.3", libdir.display())),
        "the restarted primary maps its own libssl"
    );
    restarted
}

/// nginx's master, stopped with SIGTERM on drop, so it takes its workers with it: the SIGKILL
/// `ChildGuard` sends would leave the workers running, orphaned (seen after every run before).
struct Nginx(ChildGuard);

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.0.child.is_none() {
            return;
        }
        self.0.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(child) = self.0.child.as_mut() {
            match child.try_wait() {
                Ok(Some(_)) => self.0.child = None,
                // Still running after the deadline: `ChildGuard` kills it.
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// nginx terminating TLS on the node's address and `port` (`listen_extra`: e.g. ` http2`),
/// answering `ok`, logging requests to `dir/access.log`.
fn start_nginx_ssl(
    topo: &Topology,
    dir: &Path,
    port: u16,
    listen_extra: &str,
    workers: u32,
) -> Nginx {
    start_nginx_ssl_on(topo, dir, Topology::SERVER_V4, port, listen_extra, workers)
}

/// [`start_nginx_ssl`] listening on `ip` (`[::]` for every address, IPv4 too with
/// ` ipv6only=off`).
fn start_nginx_ssl_on(
    topo: &Topology,
    dir: &Path,
    ip: &str,
    port: u16,
    listen_extra: &str,
    workers: u32,
) -> Nginx {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("body")).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
             server {{\n    listen {ip}:{port} ssl{listen_extra};\n    ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = topo.server.command("nginx");
    cmd.args(["-g", "daemon off;", "-c"])
        .arg(&conf)
        .stdout(Stdio::null());
    let guard = Nginx(ChildGuard::spawn("nginx", &mut cmd));
    wait_for_port(&topo.server, port, Duration::from_secs(10));
    guard
}

/// The requests the primary decrypted, in the order it read them.
fn primary_requests(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("primary's directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read(p).expect("a request file"))
        .collect()
}

fn line(r: &[u8]) -> String {
    let end = r.windows(2).position(|w| w == b"\r\n").unwrap_or(r.len());
    String::from_utf8_lossy(&r[..end]).into_owned()
}

#[test]
fn a_tls_primary_is_mirrored_byte_for_byte() {
    let Some(lab) = Lab::new("a_tls_primary_is_mirrored_byte_for_byte") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    let seen = dir.join("primary");

    let server_ip = Topology::SERVER_V4;
    let _primary = start_python_primary(topo, dir, TLS_PORT, &seen);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);

    // A connection opened, and used once, before the agent starts.
    let (early, mut early_in, mut early_out) = spawn_client(topo, dir, "early.py", EARLY_CLIENT);
    let mut sent = String::new();
    early_out.read_line(&mut sent).expect("early client");
    assert_eq!(sent.trim(), "sent", "the early client's first request");
    // And one that only shakes hands before the agent starts, and closes after.
    let (idle, mut idle_in, mut idle_out) = spawn_client(topo, dir, "idle.py", IDLE_CLIENT);
    let mut ready = String::new();
    idle_out.read_line(&mut ready).expect("idle client");
    assert_eq!(ready.trim(), "ready", "the idle client's handshake");

    let mut agent = start_tls_agent(topo, TLS_PORT, "", dir);
    assert!(
        agent.log().contains("libssl"),
        "--tls auto names what it attached to: {}",
        agent.log()
    );

    // The idle connection closes without a call; the early connection's next requests, then
    // new connections.
    writeln!(idle_in, "go").unwrap();
    ready.clear();
    idle_out.read_line(&mut ready).expect("idle client");
    assert_eq!(ready.trim(), "closed");
    drop(idle);
    writeln!(early_in, "go").unwrap();
    for which in ["second", "third"] {
        sent.clear();
        early_out.read_line(&mut sent).expect("early client");
        assert_eq!(sent.trim(), "sent", "the early client's {which} request");
    }
    let base = format!("https://{server_ip}:{TLS_PORT}");
    let two = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            "-H",
            "X-Test: keep-alive",
            &format!("{base}/a?x=1"),
            &format!("{base}/b"),
        ],
    );
    assert_eq!(two, b"okok", "curl over HTTPS");
    let upload = dir.join("upload.bin");
    std::fs::write(&upload, noise(300_000, 7)).unwrap();
    let up = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("{base}/upload"),
        ],
    );
    assert_eq!(up, b"ok", "the 300 KB POST");

    let got = mirror.wait_for(4, Duration::from_millis(500), Duration::from_secs(15));
    drop(early);
    let (summary, log) = stop_ok(&mut agent);
    let table = MirrorTable::parse(&log);

    let decrypted = primary_requests(&seen);
    assert_eq!(
        decrypted.iter().map(|r| line(r)).collect::<Vec<_>>(),
        [
            "GET /before-1 HTTP/1.1",
            "GET /before-2 HTTP/1.1",
            "GET /before-3 HTTP/1.1",
            "GET /a?x=1 HTTP/1.1",
            "GET /b HTTP/1.1",
            "POST /upload HTTP/1.1",
        ],
        "what the primary read"
    );
    // Everything after the agent started but the call in flight at attach, byte for byte,
    // and nothing else.
    let mut want: Vec<Vec<u8>> = decrypted[2..].to_vec();
    let mut mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    want.sort();
    mirrored.sort();
    assert_eq!(
        mirrored.iter().map(|r| line(r)).collect::<Vec<_>>(),
        want.iter().map(|r| line(r)).collect::<Vec<_>>(),
        "the requests mirrored\n{log}"
    );
    assert!(mirrored == want, "byte-identical copies\n{log}");
    let row = table.row("shadow");
    assert_eq!(row.sent, 4, "every copy sent: {table:?}");
    assert!(row.balanced(), "{log}");

    let s = |k: &str| summary.get(k);
    assert_eq!(s("tls_ring_full"), 0, "{summary:?}");
    assert_eq!(s("tls_lost_bytes"), 0, "{summary:?}");
    assert_eq!(s("tls_malformed_records"), 0, "{summary:?}");
    assert!(s("tls_targets") >= 1, "{summary:?}");
    assert_eq!(
        (s("tls_internal_targets"), s("tls_socket_tracepoints")),
        (s("tls_targets"), 1),
        "OpenSSL's internal functions probed, the socket tracepoints on: {summary:?}"
    );
    assert_eq!(
        s("tls_syscall_tracepoints"),
        1,
        "the syscall tracepoints on for the connections open at start: {summary:?}"
    );
    // Both accounted for (the early one by its call, the idle one by its close, which the
    // kernel reports while such connections are pending): the tracepoints are off again.
    assert_eq!(
        (
            s("tls_open_before_pending"),
            s("tls_open_before_closed_idle"),
            s("tls_syscall_tracepoints_detached")
        ),
        (0, 1, 1),
        "{summary:?}"
    );
    assert!(
        log.contains("every connection open at start is accounted for"),
        "{log}"
    );
    assert_eq!(
        s("tls_connections_procfs"),
        2,
        "the early connection (server and client side), found in procfs at start: {summary:?}"
    );
    assert!(
        s("tls_client_side") > 0 && s("tls_client_side_bytes") > 0,
        "curl's calls left out in the kernel, the early client's here: {summary:?}"
    );
    assert_eq!(s("tls_unresolved_bytes"), 0, "{summary:?}");
    assert_eq!(
        s("tls_connections_from_start"),
        2,
        "curl's two connections, from the kernel: {summary:?}"
    );
    // Every connection ends with the kernel's close record: curl's, and the early one, which
    // the kernel did not see established but followed from its first call after attaching
    // (its close reported with the endpoints the kernel gives then; the client side's, whose
    // local port is not captured, is not reported).
    assert_eq!(
        (s("tls_connections_closed"), s("tls_closes_unmatched")),
        (3, 0),
        "{summary:?}"
    );
    assert!(
        s("tls_ciphertext") > 0,
        "the classifiers left the TLS port's ciphertext alone: {summary:?}"
    );
    summary.assert_kernel_balanced();
    println!("{summary:?}\n{table:?}");
}

/// nginx with `ssl` (the system OpenSSL, its workers unprivileged) as the primary; curl over
/// HTTPS on one keep-alive connection, `ab` over HTTPS with a new connection per request and
/// with keep-alive: every request nginx served reaches the mirror, every connection the kernel
/// saw opened is closed, no TLS record lost.
#[test]
fn nginx_over_https_is_mirrored_request_for_request() {
    let Some(lab) = Lab::new("nginx_over_https_is_mirrored_request_for_request") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8444;
    const AB_NEW: usize = 300;
    const AB_KEEPALIVE: usize = 200;
    let _nginx = start_nginx_ssl(topo, dir, PORT, "", 2);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, "", dir);
    assert!(
        agent.log().contains("\"nginx\""),
        "--tls auto found nginx: {}",
        agent.log()
    );
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let three = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            &format!("{base}/curl/1"),
            &format!("{base}/curl/2"),
            &format!("{base}/curl/3"),
        ],
    );
    assert_eq!(three, b"okokok");
    run_ab(topo, &["-c", "4"], AB_NEW, &format!("{base}/ab/new"));
    run_ab(
        topo,
        &["-k", "-c", "4"],
        AB_KEEPALIVE,
        &format!("{base}/ab/keep"),
    );
    let total = 3 + AB_NEW + AB_KEEPALIVE;
    let got = mirror.wait_for(total, Duration::from_millis(500), Duration::from_secs(30));
    let (summary, log) = stop_ok(&mut agent);
    let served = std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(served, total, "nginx served every request");
    let count = |prefix: &str| got.iter().filter(|r| r.line().starts_with(prefix)).count();
    assert_eq!(
        (
            count("GET /curl/"),
            count("GET /ab/new HTTP/1.0"),
            count("GET /ab/keep HTTP/1.0")
        ),
        (3, AB_NEW, AB_KEEPALIVE),
        "every request mirrored\n{log}"
    );
    assert_eq!(got.len(), total, "nothing else mirrored");
    let row = MirrorTable::parse(&log).row("shadow").clone();
    assert_eq!(row.sent, total as u64, "{log}");
    // The exit report says whose plaintext was read: nginx's worker processes.
    assert_report_names(&log, "nginx");
    let s = |k: &str| summary.get(k);
    assert_eq!(s("tls_ring_full"), 0, "{summary:?}");
    assert_eq!(s("tls_lost_bytes"), 0, "{summary:?}");
    assert_eq!(s("tls_unresolved_bytes"), 0, "{summary:?}");
    assert_eq!(s("tls_other_bytes"), 0, "{summary:?}");
    assert_eq!(
        (s("tls_syscall_tracepoints"), s("tls_no_fd")),
        (0, 0),
        "no connection open at start: no syscall tracepoints, and no call unmatched: {summary:?}"
    );
    // (`tls_connections_unread` is not 0 here: ab opens a few connections it closes unused.)
    // Without --compare nginx's responses are not read: only the read calls are probed.
    assert_eq!(s("tls_write_probes"), 0, "{summary:?}");
    assert_eq!(
        mirror_tests::agent::ledger(&log, "ignored.server_bytes"),
        0,
        "no response bytes read: {log}"
    );
    // curl's connection, ab's new connections and ab's keep-alive ones (one per concurrent
    // client, at most 4), each seen from its first call.
    assert!(
        (1 + AB_NEW as u64 + 1..=1 + AB_NEW as u64 + 4).contains(&s("tls_connections_from_start")),
        "{summary:?}"
    );
    // Every connection ab opened for one request was ended: by the kernel's close record, or
    // when nginx began the next connection on the same SSL* (it freed the old one before TCP
    // finished closing it); keep-alive connections may still be closing when the agent stops.
    let ended = s("tls_connections_closed") + s("tls_connections_replaced");
    assert!(
        (AB_NEW as u64..=s("tls_connections_from_start")).contains(&ended),
        "connections ended: {summary:?}"
    );
    assert!(
        s("tls_client_side") > 0,
        "ab's and curl's side left out: {summary:?}"
    );
    summary.assert_kernel_balanced();
    println!("{summary:?}\n{row:?}");
}

/// HTTP/2 over TLS (ALPN `h2`): nginx with `ssl http2` as the primary; curl `--http2` sends
/// two GETs on one connection and h2load 20 requests on one connection, 5 streams at a time
/// (HPACK's dynamic table carries fields from the second request on). The plaintext is the
/// HTTP/2 connection, decoded as for h2c; every stream reaches an HTTP/1.1 recording mirror
/// (`protocol=h1`) in its HTTP/1.1 form.
#[test]
fn http2_over_tls_is_decoded_and_mirrored() {
    let Some(lab) = Lab::new("http2_over_tls_is_decoded_and_mirrored") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8445;
    let _nginx = start_nginx_ssl(topo, dir, PORT, " http2", 1);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, ",protocol=h1", dir);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let two = curl_ok(
        topo,
        &[
            "-k",
            "--http2",
            "-H",
            "X-Test: h2-over-tls",
            &format!("{base}/h2/1"),
            &format!("{base}/h2/2"),
        ],
    );
    assert_eq!(two, b"okok");
    let out = topo
        .client
        .command("h2load")
        .args(["-n", "20", "-c", "1", "-m", "5", "-H", "X-Load: h2load"])
        .arg(format!("{base}/h2load"))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("20 succeeded"),
        "h2load over TLS: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = mirror.wait_for(22, Duration::from_millis(500), Duration::from_secs(15));
    let (summary, log) = stop_ok(&mut agent);
    let lines: Vec<String> = got.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("GET /h2/")).count(),
        2,
        "{lines:?}\n{log}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "GET /h2load HTTP/1.1")
            .count(),
        20,
        "{lines:?}\n{log}"
    );
    for r in &got {
        // HTTP/2 field names are lowercase.
        let t = String::from_utf8_lossy(&r.bytes).to_lowercase();
        assert!(
            t.contains("\r\nx-test: h2-over-tls\r\n") || t.contains("\r\nx-load: h2load\r\n"),
            "the client's fields, from HPACK: {t}"
        );
    }
    assert_eq!(got.len(), 22, "nothing else: {lines:?}");
    assert_eq!(summary.get("tls_ring_full"), 0, "{summary:?}");
    assert_eq!(summary.get("tls_lost_bytes"), 0, "{summary:?}");
    assert_eq!(
        mirror_tests::agent::ledger(&log, "h2.flows"),
        2,
        "two HTTP/2 connections decoded: {log}"
    );
}

/// A server started after the agent: with nothing listening on the port at start, `--tls auto`
/// attaches to the system libssl, and the uprobes (on the file) see the new process's calls;
/// another TLS server on a port the agent does not capture is left out in the kernel.
#[test]
fn a_server_started_after_the_agent_is_read() {
    let Some(lab) = Lab::new("a_server_started_after_the_agent_is_read") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8446;
    let seen = dir.join("primary");
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, "", dir);
    assert!(
        agent.log().contains("libssl.so"),
        "the system libssl: {}",
        agent.log()
    );
    let _primary = start_python_primary(topo, dir, PORT, &seen);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let two = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            &format!("{base}/late/1"),
            &format!("{base}/late/2"),
        ],
    );
    assert_eq!(two, b"okok");
    // Another TLS service on a port the agent does not capture: its calls trap into the same
    // uprobes but are not copied (nothing was open at start, so an unnoted socket is no
    // captured connection).
    let _other = start_python_primary(topo, dir, PORT + 100, &dir.join("elsewhere"));
    let other_base = format!("https://{}:{}", Topology::SERVER_V4, PORT + 100);
    assert_eq!(
        curl_ok(
            topo,
            &["-k", "--http1.1", &format!("{other_base}/not-captured")]
        ),
        b"ok"
    );
    let got = mirror.wait_for(2, Duration::from_millis(500), Duration::from_secs(15));
    let (summary, _) = stop_ok(&mut agent);
    assert!(
        summary.get("tls_other_calls") >= 2 && summary.get("tls_other_bytes") == 0,
        "the other service's calls left out in the kernel: {summary:?}"
    );
    let mut want = primary_requests(&seen);
    let mut mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    want.sort();
    mirrored.sort();
    assert_eq!(want.len(), 2);
    assert!(mirrored == want, "byte-identical copies: {summary:?}");
    assert_eq!(summary.get("tls_connections_from_start"), 1, "{summary:?}");
}

/// One keep-alive connection: `GET /a`; `POST /big` whose head and 10000-byte body go in two
/// TLS records (so the server reads them in two calls); `GET /c`. A pause between requests
/// lets the agent drain its small ring.
const SPLIT_CLIENT: &str = r#"
import time
s.sendall(b"GET /a HTTP/1.1\r\nHost: primary\r\n\r\n")
answer()
time.sleep(0.2)
s.sendall(b"POST /big HTTP/1.1\r\nHost: primary\r\nContent-Length: 10000\r\n\r\n")
time.sleep(0.2)
s.sendall(b"b" * 10000)
answer()
time.sleep(0.2)
s.sendall(b"GET /c HTTP/1.1\r\nHost: primary\r\n\r\n")
answer()
s.close()
"#;

/// The TLS ring full at a call's first chunk (`--ring-buffer-size 4096`: a call of more than
/// 2 KiB needs a 16 KiB record, which never fits) loses the call wholly, leaving no record.
/// The kernel's count of each direction's bytes (`stream_offset`) shows the jump, so the agent
/// leaves a hole instead of splicing the calls around it: the POST whose body was lost is not
/// mirrored (nothing the client did not send is), the request after it is, byte for byte, and
/// every loss is counted: the kernel's `tls_ring_full`, the hole's bytes, the cut request.
#[test]
fn a_call_the_ring_lost_is_a_hole_not_a_splice() {
    let Some(lab) = Lab::new("a_call_the_ring_lost_is_a_hole_not_a_splice") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8447;
    let seen = dir.join("primary");
    let _primary = start_python_primary(topo, dir, PORT, &seen);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent_with(topo, PORT, "", &["--ring-buffer-size", "4096"], dir);
    std::fs::write(dir.join("split.py"), client_script(SPLIT_CLIENT)).unwrap();
    let out = topo
        .client
        .command("python3")
        .arg(dir.join("split.py"))
        .arg(Topology::SERVER_V4)
        .arg(PORT.to_string())
        .output()
        .expect("python TLS client");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = mirror.wait_for(2, Duration::from_millis(1500), Duration::from_secs(15));
    let (summary, log) = stop_ok(&mut agent);
    let decrypted = primary_requests(&seen);
    assert_eq!(
        decrypted.iter().map(|r| line(r)).collect::<Vec<_>>(),
        ["GET /a HTTP/1.1", "POST /big HTTP/1.1", "GET /c HTTP/1.1"],
        "what the primary read"
    );
    let mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(
        mirrored.iter().map(|r| line(r)).collect::<Vec<_>>(),
        ["GET /a HTTP/1.1", "GET /c HTTP/1.1"],
        "the requests around the lost call, not a splice\n{log}"
    );
    assert!(
        mirrored[0] == decrypted[0] && mirrored[1] == decrypted[2],
        "byte-identical copies\n{log}"
    );
    let s = |k: &str| summary.get(k);
    assert!(
        s("tls_ring_full") >= 1,
        "the body's call lost in the kernel, counted: {summary:?}"
    );
    assert!(
        s("tls_lost_bytes") >= 10_000,
        "its bytes a hole in the stream: {summary:?}"
    );
    assert_eq!(s("tls_connections_from_start"), 1, "{summary:?}");
    // The pipeline's ledger: the hole, and the request it cut.
    let ledger = |k: &str| mirror_tests::agent::ledger(&log, k);
    assert_eq!(
        (
            ledger("lost.client_gaps"),
            ledger("lost.client_gap_bytes"),
            ledger("lost.requests_gap")
        ),
        (1, 10_000, 1),
        "{log}"
    );
    summary.assert_kernel_balanced();
    println!("{summary:?}");
}

/// `--capture-percent` with `--tls`: the kernel samples a TLS connection where it notes the
/// socket (at its establishment, with the classifiers' flow hash), so a connection outside the
/// share costs no ring space. nginx `ssl`, `ab` over HTTPS with a new connection per request,
/// one mirror at 50%: the mirrored requests are exactly those of the connections kept, their
/// share is within binomial bounds, and the calls of the others are counted as sampled out in
/// the kernel (none reaches userspace).
#[test]
fn tls_connections_are_sampled_in_the_kernel() {
    let Some(lab) = Lab::new("tls_connections_are_sampled_in_the_kernel") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8448;
    const N: u64 = 200;
    let _nginx = start_nginx_ssl(topo, dir, PORT, "", 1);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, ",percent=50", dir);
    run_ab(
        topo,
        &["-c", "4"],
        N as usize,
        &format!("https://{}:{PORT}/sampled", Topology::SERVER_V4),
    );
    // Whatever was sampled arrives within the quiet period; the count is checked against the
    // agent's own numbers below.
    let got = mirror.wait_for(
        N as usize,
        Duration::from_millis(1500),
        Duration::from_secs(20),
    );
    let (summary, log) = stop_ok(&mut agent);
    let m = got.len() as u64;
    assert!(
        got.iter().all(|r| r.line() == "GET /sampled HTTP/1.0"),
        "only ab's requests"
    );
    // 50% of 200 connections: mean 100, standard deviation ~7; +-5 deviations.
    assert!(
        (65..=135).contains(&m),
        "{m} of {N} connections mirrored at 50%: {summary:?}"
    );
    let s = |k: &str| summary.get(k);
    assert_eq!(
        s("tls_connections_from_start"),
        m,
        "one request per connection: the connections kept are the requests mirrored: {summary:?}"
    );
    // nginx makes the same calls on every connection: the calls counted as sampled out are
    // to the calls copied as the connections left out are to those kept.
    assert!(
        s("tls_sampled_out") >= N - m && s("tls_sampled_out") * m == s("tls_calls") * (N - m),
        "every connection left out had its calls counted as sampled out: {summary:?}"
    );
    // Each ended by the kernel's close record, or when nginx began the next connection on
    // the same SSL* before TCP finished closing the last (see the nginx test).
    assert_eq!(
        s("tls_connections_closed") + s("tls_connections_replaced"),
        m,
        "{summary:?}"
    );
    assert_eq!(
        (
            s("tls_sampled_out_bytes"),
            s("tls_other_bytes"),
            s("tls_lost_bytes")
        ),
        (0, 0, 0),
        "the kernel sampled; nothing else lost: {summary:?}"
    );
    let row = MirrorTable::parse(&log).row("shadow").clone();
    assert_eq!((row.sampled, row.sent), (m, m), "{log}");
    summary.assert_kernel_balanced();
    println!("{m} of {N} mirrored; {summary:?}");
}

/// Builds (once per target directory) `tests/fixtures/static_tls_server.c` linked statically
/// against OpenSSL 1.1.1 from the openssl-src crate's source: configure and `make build_libs`
/// take about 40 s on two cores. Fails with the failing step's output; `cargo xtask setup`
/// installs what it needs (gcc, make, perl).
fn static_tls_server() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openssl-1.1.1-static");
    let server = root.join("static_tls_server");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/static_tls_server.c");
    let built_from = root.join("static_tls_server.c");
    let fixture_text = std::fs::read(&fixture).expect("the fixture's source");
    if server.is_file() && std::fs::read(&built_from).ok() == Some(fixture_text.clone()) {
        return server;
    }
    let src = root.join("src");
    let libs = [src.join("libssl.a"), src.join("libcrypto.a")];
    let run = |what: &str, cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    if !libs.iter().all(|l| l.is_file()) {
        build_openssl(&root, &src, &run);
    }
    let tmp = root.join("static_tls_server.tmp");
    run(
        "compile the static TLS server",
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg("-I")
            .arg(src.join("include"))
            .arg(&fixture)
            .args(&libs)
            .args(["-ldl", "-pthread"]),
    );
    std::fs::rename(&tmp, &server).unwrap();
    std::fs::write(&built_from, fixture_text).unwrap();
    server
}

/// OpenSSL 1.1.1's static libraries in `src`, from the openssl-src crate's source.
fn build_openssl(root: &Path, src: &Path, run: &impl Fn(&str, &mut Command)) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    run(
        "copy the OpenSSL source",
        Command::new("cp")
            .arg("-r")
            .arg(openssl_src::source_dir())
            .arg(src),
    );
    run(
        "configure OpenSSL 1.1.1",
        Command::new("./Configure")
            .args([
                "linux-x86_64",
                "no-shared",
                "no-tests",
                "no-engine",
                "no-async",
            ])
            .current_dir(src),
    );
    run(
        "build OpenSSL 1.1.1",
        Command::new("make")
            .args(["-j2", "build_libs"])
            .current_dir(src),
    );
}

/// `--tls-binary` on a server with OpenSSL 1.1.1 linked in statically (no libssl mapped at
/// all): the probes go on the binary's own OpenSSL, found by symbol. curl on one keep-alive
/// connection, `ab -k` on another, curl on new connections: every request the server decrypted
/// reaches the mirror byte for byte, and the exit report names the process.
#[test]
fn a_server_with_openssl_1_1_linked_in_is_read() {
    let Some(lab) = Lab::new("a_server_with_openssl_1_1_linked_in_is_read") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8449;
    const AB: usize = 20;
    const SINGLES: usize = 5;
    let server_bin = static_tls_server();
    let seen = dir.join("primary");
    std::fs::create_dir_all(&seen).unwrap();
    let mut cmd = topo
        .server
        .command(server_bin.to_str().expect("a UTF-8 path"));
    cmd.arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(Topology::SERVER_V4)
        .arg(PORT.to_string())
        .arg(&seen)
        .stdout(Stdio::null());
    let _server = ChildGuard::spawn("static TLS server", &mut cmd);
    wait_for_port(&topo.server, PORT, Duration::from_secs(10));
    let maps = std::fs::read_to_string(format!(
        "/proc/{}/maps",
        _server.child.as_ref().unwrap().id()
    ))
    .unwrap_or_default();
    assert!(
        !maps.contains("libssl"),
        "no libssl mapped: the OpenSSL is the binary's own"
    );
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let bin = server_bin.to_str().unwrap();
    let mut agent =
        start_tls_agent_with(topo, PORT, "", &["--tls", "off", "--tls-binary", bin], dir);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let three = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            "-H",
            "X-Test: static-openssl",
            &format!("{base}/s/1"),
            &format!("{base}/s/2"),
            &format!("{base}/s/3"),
        ],
    );
    assert_eq!(three, b"okokok");
    // Keep-alive: the server keeps every connection open until the client closes it.
    run_ab(topo, &["-k", "-c", "1"], AB, &format!("{base}/ab"));
    // New connections, one request each.
    for i in 0..SINGLES {
        assert_eq!(
            curl_ok(topo, &["-k", "--http1.1", &format!("{base}/single/{i}")]),
            b"ok"
        );
    }
    let total = 3 + AB + SINGLES;
    let got = mirror.wait_for(total, Duration::from_millis(500), Duration::from_secs(15));
    let (summary, log) = stop_ok(&mut agent);
    // What the server decrypted, cut into requests at each head's end (no bodies).
    let mut want: Vec<Vec<u8>> = Vec::new();
    for conn in primary_requests(&seen) {
        let mut rest = &conn[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            want.push(rest[..end + 4].to_vec());
            rest = &rest[end + 4..];
        }
        assert!(rest.is_empty(), "whole requests only");
    }
    assert_eq!(want.len(), total, "what the server read");
    let mut mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    want.sort();
    mirrored.sort();
    assert_eq!(
        mirrored.iter().map(|r| line(r)).collect::<Vec<_>>(),
        want.iter().map(|r| line(r)).collect::<Vec<_>>(),
        "every request mirrored\n{log}"
    );
    assert!(mirrored == want, "byte-identical copies\n{log}");
    let s = |k: &str| summary.get(k);
    assert_eq!(s("tls_targets"), 1, "the binary: {summary:?}");
    assert_eq!(
        (s("tls_ring_full"), s("tls_lost_bytes"), s("tls_no_fd")),
        (0, 0, 0),
        "{summary:?}"
    );
    assert_eq!(
        s("tls_connections_from_start"),
        2 + SINGLES as u64,
        "curl's, ab's and the single ones: {summary:?}"
    );
    // OpenSSL 1.1.1's SSL_read_ex/SSL_write_ex call ssl_read_internal/ssl_write_internal as
    // 3.0's do: the probes go there (no single-stepped prologue).
    assert_eq!(s("tls_internal_targets"), 1, "{summary:?}");
    assert_report_names(&log, "static_tls_serv");
    summary.assert_kernel_balanced();
    println!("{summary:?}");
}

/// An IPv6 listener (`[::]`, `ipv6only=off`): a connection over IPv6 and one from an IPv4 client
/// (an IPv4-mapped peer of the IPv6 socket, whose packets are IPv4). The kernel notes both
/// sockets' endpoints as the classifiers see their packets, and each request reaches the mirror.
#[test]
fn an_ipv6_listener_is_read_for_ipv6_and_ipv4_clients() {
    let Some(lab) = Lab::new("an_ipv6_listener_is_read_for_ipv6_and_ipv4_clients") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8450;
    let _nginx = start_nginx_ssl_on(topo, dir, "[::]", PORT, " ipv6only=off", 1);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, "", dir);
    let v6 = format!("https://[{}]:{PORT}", Topology::SERVER_V6);
    assert_eq!(
        curl_ok(
            topo,
            &[
                "-k",
                "--http1.1",
                &format!("{v6}/v6/1"),
                &format!("{v6}/v6/2")
            ]
        ),
        b"okok"
    );
    let v4 = format!("https://{}:{PORT}", Topology::SERVER_V4);
    assert_eq!(
        curl_ok(topo, &["-k", "--http1.1", &format!("{v4}/v4-mapped")]),
        b"ok"
    );
    let got = mirror.wait_for(3, Duration::from_millis(500), Duration::from_secs(15));
    let (summary, log) = stop_ok(&mut agent);
    let mut lines: Vec<String> = got.iter().map(|r| r.line()).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "GET /v4-mapped HTTP/1.1",
            "GET /v6/1 HTTP/1.1",
            "GET /v6/2 HTTP/1.1"
        ],
        "{log}"
    );
    let s = |k: &str| summary.get(k);
    // Ended by their close records (matched by the endpoints the kernel noted), or, should
    // nginx reuse the SSL* before the first one's close, by the next connection.
    assert_eq!(
        (
            s("tls_connections_from_start"),
            s("tls_connections_closed") + s("tls_connections_replaced"),
        ),
        (2, 2),
        "both connections noted when established, their closes matched: {summary:?}"
    );
    assert_eq!(
        (s("tls_lost_bytes"), s("tls_other_bytes")),
        (0, 0),
        "{summary:?}"
    );
    summary.assert_kernel_balanced();
}

/// `--compare` with a TLS primary: what the server wrote (`SSL_write`) is the flow's server
/// side, framed into responses and compared with the mirror's answers. The recording mirror
/// answers with a body of its own, so every request is a `body` difference whose diff-log line
/// holds the primary's decrypted answer (`ok`).
#[test]
fn a_tls_primarys_answers_are_compared() {
    let Some(lab) = Lab::new("a_tls_primarys_answers_are_compared") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8451;
    let _primary = start_python_primary(topo, dir, PORT, &dir.join("primary"));
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let diff_log = dir.join("diff.jsonl");
    let diff_arg = diff_log.to_str().unwrap();
    let mut agent =
        start_tls_agent_with(topo, PORT, "", &["--compare", "--diff-log", diff_arg], dir);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let three = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            &format!("{base}/cmp/1"),
            &format!("{base}/cmp/2"),
            &format!("{base}/cmp/3"),
        ],
    );
    assert_eq!(three, b"okokok");
    let got = mirror.wait_for(3, Duration::from_millis(500), Duration::from_secs(15));
    assert_eq!(got.len(), 3);
    // The mirror's answers reach the comparison right after it writes them.
    std::thread::sleep(Duration::from_millis(500));
    let (summary, log) = stop_ok(&mut agent);
    assert_eq!(
        summary.get("tls_write_probes"),
        1,
        "--compare probes the writes: {summary:?}"
    );
    let row = mirror_tests::mirror::compare_row(&log, "shadow");
    assert_eq!(
        (row["compared"], row["no_response"], row["body"]),
        (3, 0, 3),
        "{row:?}\n{log}"
    );
    assert_eq!(
        mirror_tests::agent::ledger(&log, "responses"),
        3,
        "the server's plaintext framed into responses: {log}"
    );
    let text = std::fs::read_to_string(&diff_log).expect("the diff log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        assert_eq!(l["primary"]["status"].as_u64(), Some(200), "{l}");
        assert_eq!(l["primary_body"]["text"], "ok", "the decrypted answer: {l}");
    }
}

/// An SSL write larger than the kernel copies (`MAX_CHUNKS` x `MAX_CHUNK` = 256 KiB): with
/// `--compare`, the primary's 300000-byte answer is cut; the rest is counted in the kernel
/// (`tls_truncated_bytes`), becomes a hole in the server's stream (the same bytes in the
/// ledger's `lost.server_gap_bytes`), and that answer is counted lost, not compared; the answer
/// after it is compared as usual.
#[test]
fn a_write_beyond_what_the_kernel_copies_is_counted_not_compared() {
    let Some(lab) = Lab::new("a_write_beyond_what_the_kernel_copies_is_counted_not_compared")
    else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8452;
    const ANSWER: u64 = 300_000;
    // mirror_common::tls::MAX_CHUNKS x MAX_CHUNK.
    const KERNEL_COPIES_PER_CALL: u64 = 16 * 16384;
    let _primary = start_python_primary(topo, dir, PORT, &dir.join("primary"));
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent_with(topo, PORT, "", &["--compare"], dir);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    let out = curl_ok(
        topo,
        &[
            "-k",
            "--http1.1",
            &format!("{base}/big-answer"),
            &format!("{base}/after"),
        ],
    );
    assert_eq!(
        out.len() as u64,
        ANSWER + 2,
        "the client got both answers whole"
    );
    let got = mirror.wait_for(2, Duration::from_millis(500), Duration::from_secs(15));
    assert_eq!(got.len(), 2, "both requests mirrored");
    std::thread::sleep(Duration::from_millis(500));
    let (summary, log) = stop_ok(&mut agent);
    let cut = ANSWER + "HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n".len() as u64
        - KERNEL_COPIES_PER_CALL;
    assert_eq!(summary.get("tls_truncated_bytes"), cut, "{summary:?}");
    assert_eq!(summary.get("tls_lost_bytes"), cut, "{summary:?}");
    let ledger = |k: &str| mirror_tests::agent::ledger(&log, k);
    assert_eq!(
        (
            ledger("lost.server_gap_bytes"),
            ledger("lost.responses_gap")
        ),
        (cut, 1),
        "{log}"
    );
    let row = mirror_tests::mirror::compare_row(&log, "shadow");
    assert_eq!(
        row["compared"], 1,
        "only the whole answer compared: {row:?}\n{log}"
    );
}

/// A connection of a TLS port whose plaintext is never read is said, not silently missed: the
/// kernel counts a server-side socket of a port known to carry TLS that closes without a TLS
/// call seen (`tls_connections_unread`, the exit report, `mirror.tls.connections{source=unread}`).
/// Here: a TCP-only connection (a health check's), and, after the primary restarts with a
/// private copy of libssl (another file: the probes are on the first one, as when a new image
/// of the service rolls out), a connection whose requests the agent cannot read.
#[test]
fn connections_whose_tls_is_not_read_are_counted() {
    let Some(lab) = Lab::new("connections_whose_tls_is_not_read_are_counted") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8453;
    let primary = start_python_primary(topo, dir, PORT, &dir.join("primary"));
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent(topo, PORT, "", dir);
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    assert_eq!(
        curl_ok(topo, &["-k", "--http1.1", &format!("{base}/read")]),
        b"ok"
    );
    // A TCP-only check: connect, close.
    let out = topo
        .client
        .command("python3")
        .args([
            "-c",
            "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2]))).close()",
            Topology::SERVER_V4,
            &PORT.to_string(),
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    // The primary again, on its own copy of libssl.
    let _restarted = restart_on_own_libssl(topo, dir, PORT, primary, &dir.join("primary2"));
    assert_eq!(
        curl_ok(
            topo,
            &[
                "-k",
                "--http1.1",
                &format!("{base}/unread/1"),
                &format!("{base}/unread/2")
            ]
        ),
        b"okok"
    );
    let got = mirror.wait_for(3, Duration::from_millis(1000), Duration::from_secs(10));
    let (summary, log) = stop_ok(&mut agent);
    assert_eq!(
        got.iter().map(|r| r.line()).collect::<Vec<_>>(),
        ["GET /read HTTP/1.1"],
        "only what the probed libssl read"
    );
    assert_eq!(
        (
            summary.get("tls_connections_unread"),
            summary.get("tls_connections_from_start")
        ),
        (2, 1),
        "the TCP-only connection and the unread one: {summary:?}"
    );
    assert!(
        log.contains("2 connection(s) of TLS ports closed without plaintext read"),
        "the exit report says so: {log}"
    );
}

/// `--tls follow`: a listener of a captured port that maps a libssl file not probed yet (here
/// the primary restarted on a private copy, as when a new image of the service rolls out) is
/// found within a few seconds and probed from then on, after the agent gave up the rest of its
/// privileges (it keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE for this, and seccomp lets
/// `perf_event_open` through). Its requests are mirrored byte for byte.
#[test]
fn tls_follow_probes_a_new_listeners_libssl() {
    let Some(lab) = Lab::new("tls_follow_probes_a_new_listeners_libssl") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    const PORT: u16 = 8454;
    let primary = start_python_primary(topo, dir, PORT, &dir.join("primary"));
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_tls_agent_with(topo, PORT, "", &["--tls", "follow"], dir);
    assert!(
        agent.log().contains("CAP_SYS_ADMIN, CAP_SYS_PTRACE"),
        "the capabilities --tls follow keeps: {}",
        agent.log()
    );
    let base = format!("https://{}:{PORT}", Topology::SERVER_V4);
    assert_eq!(
        curl_ok(topo, &["-k", "--http1.1", &format!("{base}/before")]),
        b"ok"
    );
    let seen = dir.join("primary2");
    let _restarted = restart_on_own_libssl(topo, dir, PORT, primary, &seen);
    let found = "--tls follow: a new listener's libssl is probed";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !agent.log().contains(found) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains(found),
        "the new file found: {}",
        agent.log()
    );
    assert_eq!(
        curl_ok(
            topo,
            &[
                "-k",
                "--http1.1",
                &format!("{base}/after/1"),
                &format!("{base}/after/2")
            ]
        ),
        b"okok"
    );
    let got = mirror.wait_for(3, Duration::from_millis(500), Duration::from_secs(15));
    let (summary, log) = stop_ok(&mut agent);
    let mut mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    let mut want = primary_requests(&dir.join("primary"));
    want.extend(primary_requests(&seen));
    want.sort();
    mirrored.sort();
    assert_eq!(
        mirrored.iter().map(|r| line(r)).collect::<Vec<_>>(),
        [
            "GET /after/1 HTTP/1.1",
            "GET /after/2 HTTP/1.1",
            "GET /before HTTP/1.1"
        ],
        "{log}"
    );
    assert!(mirrored == want, "byte-identical copies\n{log}");
    let s = |k: &str| summary.get(k);
    assert_eq!(
        (
            s("tls_targets"),
            s("tls_targets_later"),
            s("tls_follow_errors")
        ),
        (2, 1, 0),
        "{summary:?}"
    );
    assert_eq!(s("tls_connections_unread"), 0, "{summary:?}");
}

/// A connection open at start that stays idle past `--tls-open-wait-secs` is given up: the
/// transition out of the start snapshot happens anyway (syscall tracepoints detached, so the
/// node's syscalls leave the tracing path), the connection is counted in the summary, the
/// exit report and the metrics' source, and its later request is counted in the kernel
/// (`tls_other_calls`), not read. New connections are mirrored as before.
#[test]
fn an_idle_connection_open_at_start_is_given_up_after_the_wait() {
    let Some(lab) = Lab::new("an_idle_connection_open_at_start_is_given_up_after_the_wait") else {
        return;
    };
    let (dir, topo) = (&lab.dir, &lab.topo);
    let seen = dir.join("primary");
    let _primary = start_python_primary(topo, dir, TLS_PORT, &seen);
    let mirror = start_mirror(topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let (late, mut late_in, mut late_out) = spawn_client(topo, dir, "late.py", LATE_CLIENT);
    let mut said = String::new();
    late_out.read_line(&mut said).expect("late client");
    assert_eq!(said.trim(), "ready", "the late client's handshake");

    let mut agent = start_tls_agent_with(topo, TLS_PORT, "", &["--tls-open-wait-secs", "2"], dir);
    let given_up = "connections open at start accounted for or given up: syscall tracepoints \
                    detached";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !agent.log().contains(given_up) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains(given_up) && agent.log().contains("no longer waited for"),
        "the idle connection given up after 2 s: {}",
        agent.log()
    );
    writeln!(late_in, "go").unwrap();
    said.clear();
    late_out.read_line(&mut said).expect("late client");
    assert_eq!(said.trim(), "sent", "the late request answered");
    let base = format!("https://{}:{TLS_PORT}", Topology::SERVER_V4);
    assert_eq!(
        curl_ok(topo, &["-k", "--http1.1", &format!("{base}/new")]),
        b"ok"
    );
    let got = mirror.wait_for(1, Duration::from_millis(1000), Duration::from_secs(15));
    writeln!(late_in, "go").unwrap();
    said.clear();
    late_out.read_line(&mut said).expect("late client");
    assert_eq!(said.trim(), "closed");
    drop(late);
    let (summary, log) = stop_ok(&mut agent);

    let decrypted = primary_requests(&seen);
    assert_eq!(
        decrypted.iter().map(|r| line(r)).collect::<Vec<_>>(),
        ["GET /late HTTP/1.1", "GET /new HTTP/1.1"],
        "what the primary read"
    );
    let mirrored: Vec<Vec<u8>> = got.iter().map(|r| r.bytes.clone()).collect();
    assert_eq!(
        mirrored,
        decrypted[1..].to_vec(),
        "only the new connection's request, byte for byte\n{log}"
    );
    let s = |k: &str| summary.get(k);
    assert_eq!(
        (
            s("tls_open_before_given_up"),
            s("tls_open_before_pending"),
            s("tls_syscall_tracepoints"),
            s("tls_syscall_tracepoints_detached")
        ),
        (1, 0, 1, 1),
        "{summary:?}"
    );
    assert!(
        s("tls_other_calls") >= 1,
        "the given-up connection's read counted in the kernel: {summary:?}\n{log}"
    );
    assert_eq!(
        (s("tls_ring_full"), s("tls_unresolved_bytes")),
        (0, 0),
        "nothing copied for the given-up connection: {summary:?}"
    );
    assert!(
        log.contains("were given up: their later requests were not read"),
        "the exit report says it: {log}"
    );
    summary.assert_kernel_balanced();
}
