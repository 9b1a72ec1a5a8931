//! Privileged: `--cgroup` captures the sockets of one cgroup's processes and nothing else.
//!
//! Two recording servers (python, real processes) listen on the same port of the node
//! namespace, on two addresses; only the first runs in a test cgroup, joined before its socket
//! exists. The agent, attached to that cgroup only (not to any interface), must mirror every
//! request the first server received, byte for byte, and none of the second's. `--compare` runs
//! the egress program too: every response of the cgroup's server is captured and compared.
//!
//! The agent runs through `nsenter --net` rather than `ip netns exec`, which remounts /sys and
//! hides the cgroup tree.

use std::time::{Duration, Instant};

use mirror_tests::agent::Agent;
use mirror_tests::cgroup::TestCgroup;
use mirror_tests::mirror::{Behavior, MirrorTable, Received, assert_same_requests, compare_row};
use mirror_tests::oracle::{received, spawn_recording_server};
use mirror_tests::scenario::{Family, curl_ok, noise, start_mirror};
use mirror_tests::{NetNs, TempDir, Topology, privileged_or_skip};

const PORT: u16 = 8080;
const MIRROR_PORT: u16 = 9001;
/// The second server's address, next to `Topology::SERVER_V4` on the node's veth.
const OTHER_V4: &str = "10.77.0.3";

/// Waits until something listens on exactly `addr:port` in `ns`.
fn wait_for_listener(ns: &NetNs, addr: &str, port: u16) {
    let want = format!("{addr}:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&["ss", "-Hltn"]);
        if out.split_whitespace().any(|w| w == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {want}: {out}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The requests sent to `host`, one connection each (the recording server closes after one
/// answer): a GET with headers whose order and spacing must survive, a 200 KB POST of noise
/// (several skbs of up to 64 KiB), two plain GETs. Returns how many.
fn send(topo: &Topology, dir: &std::path::Path, host: &str, tag: &str) -> usize {
    let base = format!("http://{host}:{PORT}/{tag}");
    curl_ok(
        topo,
        &[
            "-H",
            "X-Custom-Header: Value With  Spaces",
            "-H",
            "X-Empty;",
            &format!("{base}/get?a=1"),
        ],
    );
    let body = dir.join(format!("{tag}.bin"));
    std::fs::write(&body, noise(200_000, 5)).unwrap();
    curl_ok(
        topo,
        &[
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{base}/upload"),
        ],
    );
    curl_ok(topo, &[&format!("{base}/one"), &format!("{base}/two")]);
    4
}

#[test]
fn cgroup_capture_mirrors_only_the_cgroups_server() {
    let test = "cgroup_capture_mirrors_only_the_cgroups_server";
    if !privileged_or_skip(test) {
        return;
    }
    let Some(cgroup) = TestCgroup::new() else {
        let why = "this system has no cgroup v2 mount";
        if std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return;
    };
    let dir = TempDir::new("cgroup");
    let (in_dir, out_dir) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let topo = Topology::new();
    topo.server.run(&[
        "ip",
        "addr",
        "add",
        &format!("{OTHER_V4}/24"),
        "dev",
        &topo.server_if,
    ]);
    let _inside = spawn_recording_server(
        cgroup.command_in(&topo.server, "python3"),
        Topology::SERVER_V4,
        PORT,
        &in_dir,
    );
    let _outside = spawn_recording_server(topo.server.command("python3"), OTHER_V4, PORT, &out_dir);
    wait_for_listener(&topo.server, Topology::SERVER_V4, PORT);
    wait_for_listener(&topo.server, OTHER_V4, PORT);
    assert_eq!(cgroup.pids().len(), 1, "one process in the test cgroup");
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);

    let cg = cgroup.path().display().to_string();
    let mut agent = Agent::start_keeping_sys(
        &topo.server,
        &[
            "--cgroup",
            &cg,
            "--port",
            &PORT.to_string(),
            "--mirror",
            &format!("http://127.0.0.1:{MIRROR_PORT},name=shadow"),
            "--compare",
        ],
        dir.path(),
    );
    assert!(
        agent.log().contains("mode=Cgroup"),
        "attached by cgroup: {}",
        agent.log()
    );

    let n_in = send(&topo, dir.path(), Topology::SERVER_V4, "in");
    let n_out = send(&topo, dir.path(), OTHER_V4, "out");
    let sent_in = received(&in_dir, n_in);
    let sent_out = received(&out_dir, n_out);
    assert_eq!(
        sent_in.len(),
        n_in,
        "the cgroup's server recorded every connection"
    );
    assert_eq!(
        sent_out.len(),
        n_out,
        "the other server recorded every connection"
    );

    let got = mirror.wait_for(n_in, Duration::from_millis(500), Duration::from_secs(20));
    let primary: Vec<Received> = sent_in
        .into_iter()
        .map(|(port, bytes)| Received {
            peer: format!("{}:{port}", Topology::CLIENT_V4).parse().unwrap(),
            index: 0,
            bytes,
        })
        .collect();
    // Exactly the cgroup server's requests, byte for byte: none of the other server's.
    assert_same_requests("cgroup", &primary, &got);
    // The mirror's answers reach the comparison right after it writes them.
    std::thread::sleep(Duration::from_millis(500));

    let (status, summary) = agent.stop(libc::SIGTERM);
    let log = agent.log();
    assert!(status.success(), "agent exit {status}: {log}");
    summary.assert_kernel_balanced();
    let table = MirrorTable::parse(&log);
    assert_eq!(table.captured, n_in as u64, "captured: {log}");
    let row = table.row("shadow");
    assert_eq!(row.sent, n_in as u64, "{row:?}");
    assert!(row.balanced(), "{row:?}");
    // Responses come from the egress program: every request's answer was captured.
    let compared = compare_row(&log, "shadow");
    assert_eq!(compared["compared"], n_in as u64, "compared: {log}");
    eprintln!(
        "{test}: {n_in} requests of the cgroup's server mirrored byte for byte, {n_out} of the \
         other server's not; {} responses compared",
        compared["compared"]
    );
}
