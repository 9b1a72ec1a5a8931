//! Privileged: mirrors receive exactly what clients sent the primary.
//!
//! Each test builds its own namespaces (client ↔ node over a veth pair), runs a recording
//! primary on the node's veth address and recording mirrors on the node's loopback, runs the
//! real agent capturing the primary's port, drives real clients (curl, raw pipelined writes,
//! wrk), and compares what the mirror received with what the primary received, request by
//! request, byte for byte.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mirror_tests::mirror::{Behavior, assert_same_requests};
use mirror_tests::scenario::{
    Family, PRIMARY_PORT, curl_request_shapes, start_agent, start_mirror, start_primary,
    stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const MIRROR_PORT: u16 = 9001;

/// Three requests in one write on one connection; returns the responses' bytes.
fn pipelined(topo: &Topology, primary: SocketAddr) -> Vec<u8> {
    let host = primary.to_string();
    let reqs = format!(
        "GET /pipe/1 HTTP/1.1\r\nHost: {host}\r\nX-Seq: 1\r\n\r\n\
         POST /pipe/2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\nhello world\
         GET /pipe/3?last=yes HTTP/1.1\r\nHost: {host}\r\nx-lower-case: Kept\r\n\r\n"
    );
    topo.client.enter(|| {
        let mut s = TcpStream::connect_timeout(&primary, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(reqs.as_bytes()).expect("write pipelined");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count() < 3
            || !got.ends_with(b"\n")
        {
            let n = s.read(&mut buf).expect("read responses");
            assert!(
                n > 0,
                "primary closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        got
    })
}

/// `extra`: more agent flags (`--threads`).
fn byte_identical(family: Family, test: &str, extra: &[&str]) {
    if !privileged_or_skip(test) {
        return;
    }
    let dir = TempDir::new("mirror-bytes");
    let topo = Topology::new();
    let primary = start_primary(&topo, family);
    let mirror = start_mirror(&topo, family, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            &[
                "--mirror".into(),
                format!("{},name=shadow", url(mirror.addr)),
            ][..],
            &extra.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let base = url(primary.addr);

    // curl: a GET with custom headers (order and case must survive), a 10 MiB POST, a
    // chunked upload.
    curl_request_shapes(&topo, dir.path(), &base, 10 << 20, 300_000);
    // Pipelined requests on one connection.
    let answers = pipelined(&topo, primary.addr);
    assert!(String::from_utf8_lossy(&answers).contains("POST /pipe/2 HTTP/1.1 11"));
    // Keep-alive load from wrk, bounded in time and (by a 2 ms delay per request and
    // connection) in rate, so a debug build of the agent keeps up: this test is about fidelity,
    // `cargo xtask bench mirror` about full rate.
    let lua = dir.path().join("delay.lua");
    std::fs::write(&lua, "function delay()\n  return 2\nend\n").unwrap();
    let out = topo
        .client
        .command("wrk")
        .args([
            "-t",
            "1",
            "-c",
            "4",
            "-d",
            "2s",
            "-s",
            lua.to_str().unwrap(),
            "-H",
            "X-Load: wrk",
            &format!("{base}/wrk"),
        ])
        .output()
        .expect("run wrk");
    assert!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sent = primary.wait_for(1, Duration::from_millis(300), Duration::from_secs(5));
    let wrk_requests = sent
        .iter()
        .filter(|r| r.line().starts_with("GET /wrk "))
        .count();
    assert!(wrk_requests > 50, "wrk made only {wrk_requests} requests");
    let got = mirror.wait_for(
        sent.len(),
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let (summary, table) = stop_agent(&mut agent);
    let log = agent.log();
    eprintln!(
        "{test}: agent report:\n{}",
        log.lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_same_requests(&format!("{family:?}"), &sent, &got);
    let threads = match extra {
        ["--threads", n] => n,
        // `auto`: one thread only where the agent may use only one CPU.
        _ if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) => "1",
        _ => "3",
    };
    assert!(
        log.contains(&format!("threads={threads}")),
        "the start line names {threads} threads: {log}"
    );

    let row = table.row("shadow");
    assert_eq!(
        table.captured,
        sent.len() as u64,
        "captured every request: {log}"
    );
    assert_eq!(row.sampled, sent.len() as u64, "{row:?}");
    assert_eq!(row.sent, sent.len() as u64, "{row:?}");
    assert_eq!(
        row.status[0],
        sent.len() as u64,
        "every copy answered 2xx: {row:?}"
    );
    assert!(row.balanced(), "{row:?}");
    assert_eq!(summary.get("ring_full"), 0, "{summary:?}");
    eprintln!(
        "{test}: {} requests ({wrk_requests} from wrk) byte-identical at the mirror",
        sent.len()
    );
}

#[test]
fn mirror_gets_byte_identical_requests_ipv4() {
    byte_identical(Family::V4, "mirror_gets_byte_identical_requests_ipv4", &[]);
}

/// `--threads 1`: capture, the mirror connections and the exporters on one thread (a
/// current-thread runtime); the same shapes (a 10 MiB POST among them) arrive byte for byte.
#[test]
fn mirror_gets_byte_identical_requests_on_one_thread() {
    byte_identical(
        Family::V4,
        "mirror_gets_byte_identical_requests_on_one_thread",
        &["--threads", "1"],
    );
}

#[test]
fn mirror_gets_byte_identical_requests_ipv6() {
    byte_identical(Family::V6, "mirror_gets_byte_identical_requests_ipv6", &[]);
}

/// A keep-alive connection from the client namespace: `GET /a`, a POST of `BIG_BODY` bytes in
/// one write, then (after a pause for the agent to drain its ring) `GET /c`, each answered.
const RING_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
def answer():
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise SystemExit("closed")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
    while len(rest) < n:
        rest += s.recv(65536)
s.sendall(b"GET /a HTTP/1.1\r\nHost: primary\r\n\r\n")
answer()
time.sleep(0.2)
n = int(sys.argv[3])
s.sendall(b"POST /big HTTP/1.1\r\nHost: primary\r\nContent-Length: %d\r\n\r\n" % n + b"b" * n)
answer()
time.sleep(0.3)
s.sendall(b"GET /c HTTP/1.1\r\nHost: primary\r\n\r\n")
answer()
s.close()
"#;

/// A ring too small for large skbs (`--ring-buffer-size 4096`: an skb of more than 2 KiB of
/// payload needs a record of a 16 KiB or 64 KiB class, which never fits): the upload's large
/// skbs are lost in the kernel and counted (`ring_full`, `chunks_lost`, the kernel's identity
/// balanced); its request is not mirrored, since nothing the client did not send may be; the
/// requests around it on the same connection are, byte for byte; the pipeline counts the hole
/// and the request it cut.
#[test]
fn a_ring_too_small_for_an_upload_loses_it_counted_never_spliced() {
    const TEST: &str = "a_ring_too_small_for_an_upload_loses_it_counted_never_spliced";
    if !privileged_or_skip(TEST) {
        return;
    }
    const BIG_BODY: usize = 1 << 20;
    let dir = TempDir::new("mirror-ring-full");
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},name=shadow", url(mirror.addr)),
            "--ring-buffer-size".into(),
            "4096".into(),
        ],
    );
    let script = dir.path().join("client.py");
    std::fs::write(&script, RING_CLIENT).unwrap();
    let out = topo
        .client
        .command("python3")
        .arg(&script)
        .arg(primary.addr.ip().to_string())
        .arg(PRIMARY_PORT.to_string())
        .arg(BIG_BODY.to_string())
        .output()
        .expect("python client");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = primary.wait_for(3, Duration::from_millis(300), Duration::from_secs(10));
    let lines: Vec<String> = sent.iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        ["GET /a HTTP/1.1", "POST /big HTTP/1.1", "GET /c HTTP/1.1"],
        "what the primary received"
    );
    let got = mirror.wait_for(2, Duration::from_millis(1500), Duration::from_secs(15));
    let (summary, table) = stop_agent(&mut agent);
    let log = agent.log();
    let got_lines: Vec<String> = got.iter().map(|r| r.line()).collect();
    assert_eq!(
        got_lines,
        ["GET /a HTTP/1.1", "GET /c HTTP/1.1"],
        "the requests around the lost upload, nothing spliced\n{log}"
    );
    assert!(
        got[0].bytes == sent[0].bytes && got[1].bytes == sent[2].bytes,
        "byte-identical copies\n{log}"
    );
    let s = |k: &str| summary.get(k);
    assert!(
        s("ring_full") >= 1,
        "the upload's skbs lost, counted: {summary:?}"
    );
    assert!(s("chunks_lost") >= s("ring_full"), "{summary:?}");
    summary.assert_kernel_balanced();
    let ledger = |k: &str| mirror_tests::agent::ledger(&log, k);
    assert!(ledger("lost.client_gaps") >= 1, "{log}");
    assert_eq!(ledger("lost.requests_gap"), 1, "the upload, cut: {log}");
    assert_eq!(table.captured, 2, "{log}");
    let row = table.row("shadow");
    assert_eq!((row.sent, row.status[0]), (2, 2), "{row:?}");
    assert!(row.balanced(), "{row:?}");
    println!(
        "ring_full {} chunks_lost {} captured {} client gaps {}",
        s("ring_full"),
        s("chunks_lost"),
        s("captured"),
        ledger("lost.client_gaps")
    );
}
