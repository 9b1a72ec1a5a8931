//! Privileged: the TLS uprobes (issue 14 B, first stage) on the system libssl, with real peers:
//! a Python `ssl` server (pyenv's Python links the system `libssl.so.3`) and curl over HTTPS on
//! loopback. The server's `SSL_read_ex` calls must yield the request's exact plaintext, with
//! the fd of the server's socket for that connection; its `SSL_write_ex` the response; curl's
//! calls (the client side of a connection to the captured port) are left out in the kernel,
//! counted. The server's
//! records carry its connection's endpoints (from the socket tracepoints: the server's port is
//! a captured one), the first is marked as the connection's first call, and the connection's
//! close is reported with the same endpoints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirror_agent::capture::ebpf::{has_object, tls::TlsCapture, tls_procfs};

const LIBSSL: &str = "/lib/x86_64-linux-gnu/libssl.so.3";

/// A one-request-at-a-time HTTPS server: prints its port, then for each request the fd of its
/// connection's socket, and answers 200 with the body's length.
const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        out = b"got %d" % len(body)
        print(self.connection.fileno(), flush=True)
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[3])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

fn skip(why: &str) -> bool {
    eprintln!("SKIPPED tls_uprobes: {why}");
    assert_ne!(
        std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref(),
        Ok("1"),
        "required: {why}"
    );
    true
}

/// Kills the child when dropped (also when an assertion fails).
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ssl_calls_yield_the_exact_plaintext_with_the_socket_fd() {
    // SAFETY: no arguments, no side effects.
    if unsafe { libc::geteuid() } != 0 && skip("needs root (uprobes, tracepoints)") {
        return;
    }
    if !has_object() && skip("the agent was built without the eBPF object") {
        return;
    }
    if !Path::new(LIBSSL).exists() && skip("no system libssl.so.3") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mirror-tls-uprobes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=localhost")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl req");
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER).unwrap();

    // A free port, known before the server starts: the programs note the sockets of the
    // captured ports when they are established.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut capture =
        TlsCapture::attach(Path::new(LIBSSL), &[port], 1 << 22).expect("attach the TLS probes");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let mut server_out = BufReader::new(child.stdout.take().unwrap());
    server_out.read_line(&mut line).expect("the server's port");
    let server = Guard(child);
    let server_pid = server.0.id();
    assert_eq!(line.trim(), port.to_string(), "the server's port");

    // The procfs resolution a captured fd goes through, on the server's listening socket.
    let listening = (0..32).find_map(|fd| tls_procfs::tcp_endpoints(server_pid, fd));
    assert_eq!(
        listening,
        Some((
            format!("127.0.0.1:{port}").parse().unwrap(),
            "0.0.0.0:0".parse().unwrap()
        )),
        "the server's listening socket from /proc"
    );

    let body = "x".repeat(3000);
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "-H",
            "X-Test: tls-uprobe",
            "--data-binary",
            &body,
        ])
        .arg(format!("https://127.0.0.1:{port}/hello"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got 3000",
        "curl over HTTPS: {out:?}"
    );

    // The server's reads, its writes, curl's writes, by process; fds seen.
    let mut server_read = Vec::new();
    let mut server_written = Vec::new();
    let mut curl_written = Vec::new();
    let mut server_fds = std::collections::BTreeSet::new();
    let mut endpoints = std::collections::BTreeSet::new();
    let mut firsts = 0;
    let mut offsets_right = true;
    let mut closes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && (!String::from_utf8_lossy(&server_written).contains("got 3000") || closes.is_empty())
    {
        capture.drain(|c| {
            let h = c.header;
            if h.kind == mirror_common::tls::kind::CLOSE {
                closes.push((h.local_port, h.remote_port, h.flags));
            } else if h.pid == server_pid {
                server_fds.insert(h.fd);
                endpoints.insert((
                    h.local_addr,
                    h.local_port,
                    h.remote_port,
                    h.family,
                    h.flags & 1,
                ));
                if h.flags & mirror_common::tls::header_flags::FIRST != 0 {
                    firsts += 1;
                }
                // The kernel's count of the direction's bytes: where this chunk belongs.
                let so_far = if c.is_read() {
                    server_read.len()
                } else {
                    server_written.len()
                };
                offsets_right &= h.flags & mirror_common::tls::header_flags::STREAM_OFFSET != 0
                    && h.stream_offset.wrapping_add(h.chunk_offset) as usize == so_far;
                if c.is_read() {
                    server_read.extend_from_slice(c.data);
                } else {
                    server_written.extend_from_slice(c.data);
                }
            } else if !c.is_read() && String::from_utf8_lossy(c.data).contains("X-Test: tls-uprobe")
            {
                curl_written.extend_from_slice(c.data);
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    let counters = capture.counters().expect("counters");
    let read = String::from_utf8_lossy(&server_read).into_owned();
    let want_head = format!("POST /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/");
    assert!(
        read.starts_with(&want_head),
        "the server read: {read:?}\n{counters:?}"
    );
    assert!(read.contains("\r\nX-Test: tls-uprobe\r\n"), "{read:?}");
    assert!(
        read.ends_with(&format!("\r\n\r\n{body}")),
        "the body, exactly: {read:?}"
    );
    let written = String::from_utf8_lossy(&server_written).into_owned();
    assert!(
        written.starts_with("HTTP/1.0 200 OK\r\n") && written.ends_with("\r\n\r\ngot 3000"),
        "the server wrote: {written:?}"
    );
    // curl's calls are the client side of a connection to a captured port: left out in the
    // kernel, counted.
    assert!(curl_written.is_empty(), "curl's side is not copied");
    assert!(counters.client_side >= 2, "{counters:?}");
    // Every server call carried the fd of its connection's socket, as the server saw it.
    let mut seen = String::new();
    server_out
        .read_line(&mut seen)
        .expect("the server's fd line");
    let fd: i32 = seen.trim().parse().expect("an fd");
    assert_eq!(
        server_fds.into_iter().collect::<Vec<_>>(),
        [fd],
        "one connection, its socket's fd"
    );
    assert!(counters.calls >= 3, "{counters:?}");
    assert_eq!(counters.ring_full, 0, "{counters:?}");
    // Every server record carried the connection's endpoints, from the kernel.
    let endpoints: Vec<_> = endpoints.into_iter().collect();
    assert_eq!(endpoints.len(), 1, "one connection: {endpoints:?}");
    let (local, local_port, remote_port, family, with_endpoints) = endpoints[0];
    assert_eq!(
        (&local[..4], local_port, family, with_endpoints),
        (&[127, 0, 0, 1][..], port, mirror_common::family::IPV4, 1),
        "{endpoints:?}"
    );
    assert_ne!(remote_port, 0);
    assert_eq!(firsts, 1, "the connection's first call is marked once");
    assert!(
        offsets_right,
        "every record says where its bytes sit in their direction"
    );
    assert_eq!(
        closes,
        [(
            port,
            remote_port,
            mirror_common::tls::header_flags::ENDPOINTS
        )],
        "the close, with the same endpoints"
    );
    assert!(counters.sockets >= 1, "{counters:?}");
    println!("TLS probe counters: {counters:?}; server connection fd {fd}");
    let _ = std::fs::remove_dir_all(&dir);
}
