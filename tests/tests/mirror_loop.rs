//! Mirrors and the capture must not feed each other, and bad mirror flags fail cleanly.
//!
//! - Privileged: a mirror listening on the captured port behind the captured interface (an
//!   address in the client namespace, on the veth the agent captures, egress classifier on too):
//!   requests captured == requests the client sent, and the mirror gets each exactly once. The
//!   replayed requests leave through the veth's egress and are never seen by the ingress
//!   classifier, so this checks delivery and accounting there, not the ignore map; the loops the
//!   map prevents (a mirror on `lo`, or behind DNAT) are `mirror_loop_local.rs`.
//! - Privileged: a mirror that is the primary itself is refused at start with exit status 2 and
//!   one line: the primary's wildcard listener reached by the node's address, by `localhost`
//!   and by IPv6, and a primary that is the only listener on the port; a distinct listener on
//!   the mirror's own address next to the primary is accepted.
//! - Bad `--mirror` values: exit status 2 and one line naming the problem.

use std::net::SocketAddr;
use std::time::Duration;

use mirror_tests::agent::{binary, run_to_exit};
use mirror_tests::mirror::{Behavior, RecordingServer, assert_same_requests};
use mirror_tests::scenario::{
    Family, PRIMARY_PORT, curl_ok, start_agent, start_primary, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip, wait_for_port};

/// A second address on the client's veth end: the mirror listens there on the captured port.
const MIRROR_V4: &str = "10.77.0.3";

#[test]
fn replayed_requests_are_not_captured_again() {
    let test = "replayed_requests_are_not_captured_again";
    if !privileged_or_skip(test) {
        return;
    }
    const N: usize = 30;
    let dir = TempDir::new("mirror-loop");
    let topo = Topology::new();
    topo.client.run(&[
        "ip",
        "addr",
        "add",
        &format!("{MIRROR_V4}/24"),
        "dev",
        &topo.client_if,
    ]);
    let primary = start_primary(&topo, Family::V4);
    let addr = SocketAddr::new(MIRROR_V4.parse().unwrap(), PRIMARY_PORT);
    let mirror = RecordingServer::start(&topo.client, addr, Behavior::Ok);
    wait_for_port(&topo.client, PRIMARY_PORT, Duration::from_secs(5));
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--compare".into(),
            "--mirror".into(),
            format!("{},name=same-port", url(addr)),
        ],
    );
    curl_ok(
        &topo,
        &[
            "-o",
            "/dev/null",
            "-H",
            "X-Loop: check",
            &format!("{}/loop/[1-{N}]", url(primary.addr)),
        ],
    );
    let sent = primary.received();
    assert_eq!(sent.len(), N);
    // Wait long enough for a loop to show: copies of copies would keep arriving.
    let got = mirror.wait_for(N, Duration::from_millis(1500), Duration::from_secs(20));
    let (summary, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(
        table.captured, N as u64,
        "captured == sent by the client: {log}"
    );
    assert_same_requests("loop", &sent, &got);
    let r = table.row("same-port");
    assert_eq!(
        (r.sampled, r.sent, r.status[0]),
        (N as u64, N as u64, N as u64),
        "{r:?}"
    );
    assert_eq!(summary.get("ring_full"), 0, "{summary:?}");
}

/// Runs the agent on the node's veth with `--mirror mirror` for at most 2 s; status and stderr.
fn run_agent(topo: &Topology, mirror: &str) -> (Option<i32>, String) {
    let out = topo
        .server
        .command(binary().to_str().unwrap())
        .args([
            "--iface",
            &topo.server_if,
            "--port",
            &PRIMARY_PORT.to_string(),
        ])
        .args(["--mirror", mirror, "--duration", "2"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(topo: &Topology, mirror: &str, why: &str) {
    let (code, err) = run_agent(topo, mirror);
    assert_eq!(code, Some(2), "{mirror}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{mirror}: one line: {err}");
    assert!(
        err.contains("is the primary itself") && err.contains(why),
        "{mirror}: the line says why ({why}): {err}"
    );
}

#[test]
fn a_mirror_that_is_the_primary_is_refused() {
    let test = "a_mirror_that_is_the_primary_is_refused";
    if !privileged_or_skip(test) {
        return;
    }
    let topo = Topology::new();
    // A dual-stack wildcard primary serves every local address on the port.
    let wildcard = SocketAddr::new("::".parse().unwrap(), PRIMARY_PORT);
    let primary = RecordingServer::start(&topo.server, wildcard, Behavior::Ok);
    wait_for_port(&topo.server, PRIMARY_PORT, Duration::from_secs(5));
    for mirror in [
        format!("http://{}:{PRIMARY_PORT}", Topology::SERVER_V4),
        format!("http://localhost:{PRIMARY_PORT},name=self"),
        format!("http://[{}]:{PRIMARY_PORT}", Topology::SERVER_V6),
    ] {
        assert_refused(&topo, &mirror, "wildcard listener");
    }
    assert_eq!(primary.count(), 0, "nothing was sent to the primary");

    // A primary bound to the node's address only: reaching it is refused; a distinct service
    // bound to 127.0.0.1 on the same port is a mirror like any other. Fresh namespaces: the
    // wildcard listener may outlive its drop for a moment in a process forked by a parallel test
    // (until that child execs), so the port is not bound again in the same namespace.
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    assert_refused(&topo, &url(primary.addr), "the only listener");
    let local = SocketAddr::new("127.0.0.1".parse().unwrap(), PRIMARY_PORT);
    let _other = RecordingServer::start(&topo.server, local, Behavior::Ok);
    let (code, err) = run_agent(&topo, &url(local));
    assert_eq!(
        code,
        Some(0),
        "a distinct local listener is accepted: {err}"
    );
    assert!(
        err.contains("not the primary"),
        "and the log says why: {err}"
    );
    assert_eq!(primary.count(), 0, "nothing was sent to the primary");
}

#[test]
fn bad_mirror_flags_exit_2_with_one_line() {
    if !binary().is_file() {
        eprintln!(
            "SKIPPED bad_mirror_flags_exit_2_with_one_line: agent binary {} missing",
            binary().display()
        );
        assert_ne!(
            std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref(),
            Ok("1"),
            "the agent binary must exist under cargo xtask test"
        );
        return;
    }
    let base = ["--iface", "lo", "--port", "8080"];
    for (extra, needle) in [
        (vec!["--mirror", "ftp://127.0.0.1:9001"], "scheme"),
        (
            vec!["--mirror", "https://127.0.0.1:9001,ca=/nonexistent/ca.pem"],
            "ca /nonexistent/ca.pem",
        ),
        (
            vec!["--mirror", "http://127.0.0.1:9001,percent=150"],
            "percent",
        ),
        (
            vec!["--mirror", "http://127.0.0.1:9001,percent=-1"],
            "percent",
        ),
        (
            vec!["--mirror", "http://127.0.0.1:9001,colour=red"],
            "colour",
        ),
        (vec!["--mirror", "http://:9001"], "host"),
        (vec!["--mirror", "http://127.0.0.1:9001,name="], "name"),
        (
            vec![
                "--mirror",
                "http://127.0.0.1:9001,percent=50",
                "--capture-percent",
                "20",
            ],
            "capture-percent",
        ),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let (code, err) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: one line: {err}");
        assert!(err.contains(needle), "{extra:?}: names {needle}: {err}");
    }
}
