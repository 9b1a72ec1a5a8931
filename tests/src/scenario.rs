//! A mirroring scenario for end-to-end tests: a [`Topology`], a recording primary on the node's
//! veth address, mirrors on the node's loopback (not on the captured interface), and the agent
//! capturing the primary's port. Clients run in the client namespace.

use std::io::Read;
use std::net::TcpStream;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Summary};
use crate::mirror::{Behavior, MirrorTable, RecordingServer};
use crate::{NetNs, Topology, wait_for_port};

pub const PRIMARY_PORT: u16 = 8080;

/// IPv4 or IPv6 addressing of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn server_ip(self) -> IpAddr {
        match self {
            Family::V4 => Topology::SERVER_V4.parse().unwrap(),
            Family::V6 => Topology::SERVER_V6.parse().unwrap(),
        }
    }
    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => "127.0.0.1".parse().unwrap(),
            Family::V6 => "::1".parse().unwrap(),
        }
    }
}

/// `http://addr` with IPv6 brackets.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// The primary and its address.
pub fn start_primary(topo: &Topology, family: Family) -> RecordingServer {
    start_primary_with(topo, family, Behavior::Ok)
}

/// The primary, answering with `behavior`.
pub fn start_primary_with(topo: &Topology, family: Family, behavior: Behavior) -> RecordingServer {
    let addr = SocketAddr::new(family.server_ip(), PRIMARY_PORT);
    let s = RecordingServer::start(&topo.server, addr, behavior);
    wait_for_port(&topo.server, PRIMARY_PORT, Duration::from_secs(5));
    s
}

/// A mirror on the node's loopback at `port`.
pub fn start_mirror(
    topo: &Topology,
    family: Family,
    port: u16,
    behavior: Behavior,
) -> RecordingServer {
    let addr = SocketAddr::new(family.loopback(), port);
    let s = RecordingServer::start(&topo.server, addr, behavior);
    wait_for_port(&topo.server, port, Duration::from_secs(5));
    s
}

/// Starts the agent on the node's veth capturing the primary's port, with `extra` flags
/// (`--mirror ...`).
pub fn start_agent(topo: &Topology, dir: &Path, extra: &[String]) -> Agent {
    let mut args: Vec<String> = vec![
        "--iface".into(),
        topo.server_if.clone(),
        "--port".into(),
        PRIMARY_PORT.to_string(),
    ];
    args.extend_from_slice(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&topo.server, &refs, dir)
}

/// SIGTERM, waits, asserts a clean exit; returns the capture summary and the mirror table.
pub fn stop_agent(agent: &mut Agent) -> (Summary, MirrorTable) {
    let (status, summary) = agent.stop(libc::SIGTERM);
    let log = agent.log();
    assert!(status.success(), "agent exit {status}: {log}");
    let table = MirrorTable::parse(&log);
    assert!(!table.rows.is_empty(), "no mirror table in the log: {log}");
    (summary, table)
}

/// Runs curl in the client namespace (`-sS --max-time 30`, no `Expect: 100-continue`).
pub fn curl(topo: &Topology, args: &[&str]) -> Output {
    curl_in(&topo.client, args)
}

/// Runs curl in `ns` (`-sS --max-time 30`, no `Expect: 100-continue`).
pub fn curl_in(ns: &NetNs, args: &[&str]) -> Output {
    ns.command("curl")
        .args(["-sS", "--max-time", "30", "-H", "Expect:"])
        .args(args)
        .output()
        .expect("run curl")
}

/// curl that must succeed; returns its stdout.
pub fn curl_ok(topo: &Topology, args: &[&str]) -> Vec<u8> {
    let out = curl(topo, args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// curl that must be answered with a 2xx (`--fail`), the response body discarded: for tests
/// that only need the request to have been served (the capture tests compare what was sent).
pub fn curl_served(topo: &Topology, args: &[&str]) {
    curl_served_in(&topo.client, args);
}

/// [`curl_served`] in `ns`.
pub fn curl_served_in(ns: &NetNs, args: &[&str]) {
    let mut all = vec!["--fail", "-o", "/dev/null"];
    all.extend_from_slice(args);
    let out = curl_in(ns, &all);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes that do not compress or repeat at a short period (an LCG), for bodies.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

/// The shapes every mirroring test sends through curl, three requests: a GET whose custom
/// headers must keep their order, case and spacing (and an empty value); a POST of
/// `post_bytes` of noise; a chunked upload of `chunked_bytes`. Bodies are written into `dir`.
pub fn curl_request_shapes(
    topo: &Topology,
    dir: &Path,
    base: &str,
    post_bytes: usize,
    chunked_bytes: usize,
) {
    curl_ok(
        topo,
        &[
            "-H",
            "X-Custom-Header: Value With  Spaces",
            "-H",
            "x-lower: lower",
            "-H",
            "Accept: */*",
            "-H",
            "X-Empty;",
            &format!("{base}/get?a=1&b=%20two"),
        ],
    );
    let post = dir.join("post.bin");
    std::fs::write(&post, noise(post_bytes, 7)).expect("write the POST body");
    curl_ok(
        topo,
        &[
            "--data-binary",
            &format!("@{}", post.display()),
            &format!("{base}/upload"),
        ],
    );
    let chunked = dir.join("chunked.bin");
    std::fs::write(&chunked, noise(chunked_bytes, 11)).expect("write the chunked body");
    curl_ok(
        topo,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", chunked.display()),
            &format!("{base}/chunked"),
        ],
    );
}

/// Reads `n` Content-Length-framed responses from `s` (10 s at most); returns the status and
/// body of each.
pub fn read_responses(s: &mut TcpStream, n: usize) -> Vec<(u16, String)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 8192];
    while out.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = r.parse(&buf) {
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .expect("the server frames by Content-Length");
            if buf.len() >= head + len {
                let status = r.code.unwrap_or(0);
                out.push((
                    status,
                    String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
                ));
                buf.drain(..head + len);
                continue;
            }
        }
        assert!(Instant::now() < deadline, "responses: got {out:?}");
        let k = s.read(&mut chunk).expect("read from the server");
        assert!(k > 0, "the server closed early; got {out:?}");
        buf.extend_from_slice(&chunk[..k]);
    }
    out
}
