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

#[allow(dead_code)]
const _: u16 = PRIMARY_PORT;
