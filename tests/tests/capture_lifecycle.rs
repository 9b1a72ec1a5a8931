//! Privileged: attach lifetime (nothing of ours stays attached after SIGTERM or SIGKILL), the
//! classic tc attachment (`--attach tc`: captures, detaches on exit, a killed agent's filters are
//! removed at the next start), two agents on one interface, and bad flags (exit status 2, one
//! line, nothing attached).

use std::time::Duration;

use mirror_tests::agent::{Agent, attached_programs, binary, run_to_exit};
use mirror_tests::oracle::{start_recording_server, tshark_flow_sizes};
use mirror_tests::scenario::curl_served;
use mirror_tests::{TempDir, Topology, is_root, privileged_or_skip};

const PORT: u16 = 8080;

fn wait_detached(topo: &Topology, within: Duration) {
    mirror_tests::agent::wait_detached(&topo.server, &topo.server_if, within);
}

#[test]
fn nothing_stays_attached_after_sigterm_or_sigkill() {
    if !privileged_or_skip("nothing_stays_attached_after_sigterm_or_sigkill") {
        return;
    }
    let dir = TempDir::new("teardown");
    let topo = Topology::new();
    let args = ["--iface", &topo.server_if, "--port", "8080", "--compare"];
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut agent = Agent::start(&topo.server, &args, dir.path());
        let on = attached_programs(&topo.server, &topo.server_if);
        assert!(
            on.iter().any(|l| l.contains("mirror_ingress"))
                && on.iter().any(|l| l.contains("mirror_egress")),
            "both classifiers attached while running: {on:?}"
        );
        let (status, _) = agent.stop(sig);
        if sig == libc::SIGTERM {
            assert!(
                status.success(),
                "clean exit on SIGTERM: {status}: {}",
                agent.log()
            );
            assert!(
                agent.log().contains("detached"),
                "final summary logged: {}",
                agent.log()
            );
        }
        // TCX links go with the last fd; the kernel may release them a moment after exit.
        wait_detached(&topo, Duration::from_secs(5));
    }
}

/// The server's URL for `path` (requests the agent sees on the server's veth end).
fn server_url(path: &str) -> String {
    format!("http://{}:{PORT}{path}", Topology::SERVER_V4)
}

/// The clsact + netlink path (what kernels before 6.6 get), forced with `--attach tc`.
#[test]
fn tc_attach_captures_and_cleans_up_after_kill() {
    if !privileged_or_skip("tc_attach_captures_and_cleans_up_after_kill") {
        return;
    }
    let dir = TempDir::new("tc-attach");
    let topo = Topology::new();
    let _server = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir.path());
    let pcap = dir.path().join("tc.pcap");
    let base = [
        "--iface",
        &topo.server_if,
        "--port",
        "8080",
        "--attach",
        "tc",
    ];
    let classic = |on: &[String]| {
        on.iter().all(|l| l.starts_with("tc/"))
            && on.iter().filter(|l| l.contains("mirror_ingress")).count() == 1
            && on.iter().filter(|l| l.contains("mirror_egress")).count() == 1
    };

    // 1. Captures like TCX, and SIGTERM removes both filters.
    let mut args = base.to_vec();
    args.extend(["--compare", "--write-pcap", pcap.to_str().unwrap()]);
    let mut agent = Agent::start(&topo.server, &args, dir.path());
    let on = attached_programs(&topo.server, &topo.server_if);
    assert!(classic(&on), "one tc filter per hook, no TCX link: {on:?}");
    curl_served(&topo, &[&server_url("/tc")]);
    std::thread::sleep(Duration::from_millis(200));
    let (status, summary) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{}", agent.log());
    assert!(summary.get("segments") > 0, "{summary:?}: {}", agent.log());
    // Keyed by destination port: the request (ingress filter) and the response to the
    // client's port (egress filter, --compare).
    let flows = tshark_flow_sizes(&pcap);
    assert_eq!(flows.len(), 2, "one request and its response: {flows:?}");
    assert!(
        flows
            .values()
            .all(|(pkts, bytes, _)| *pkts > 0 && *bytes > 0),
        "both directions captured through the tc filters: {flows:?}"
    );
    assert!(flows.contains_key(&PORT), "{flows:?}");
    wait_detached(&topo, Duration::from_secs(5));

    // 2. A killed agent leaves its filters (the kernel does not own them as it owns TCX
    //    links); the next agent removes them before attaching its own.
    let mut killed = Agent::start(&topo.server, &args[..6], dir.path());
    killed.stop(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let left = attached_programs(&topo.server, &topo.server_if);
    assert!(
        left.iter().any(|l| l.contains("mirror_ingress")),
        "the killed agent's filter is still there: {left:?}"
    );
    let mut next = Agent::start(&topo.server, &args[..6], dir.path());
    let on = attached_programs(&topo.server, &topo.server_if);
    assert_eq!(
        on.iter().filter(|l| l.contains("mirror_ingress")).count(),
        1,
        "only the new agent's filter: {on:?}: {}",
        next.log()
    );
    assert!(
        next.log()
            .contains("removed a tc filter left by a killed agent"),
        "{}",
        next.log()
    );
    let (status, _) = next.stop(libc::SIGTERM);
    assert!(status.success(), "{}", next.log());
    wait_detached(&topo, Duration::from_secs(5));
}

#[test]
fn second_agent_on_same_interface_does_not_break_the_first() {
    if !privileged_or_skip("second_agent_on_same_interface_does_not_break_the_first") {
        return;
    }
    let dir = TempDir::new("two");
    let topo = Topology::new();
    let _server = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir.path());
    let pcap = dir.path().join("first.pcap");
    let mut first = Agent::start(
        &topo.server,
        &[
            "--iface",
            &topo.server_if,
            "--port",
            "8080",
            "--write-pcap",
            pcap.to_str().unwrap(),
        ],
        dir.path(),
    );
    let mut second = Agent::start(
        &topo.server,
        &["--iface", &topo.server_if, "--port", "8080"],
        dir.path(),
    );
    curl_served(&topo, &[&server_url("/x")]);
    // Let the second agent drain before stopping it, then kill it the hard way.
    std::thread::sleep(Duration::from_millis(200));
    let (_, _) = second.stop(libc::SIGKILL);
    curl_served(&topo, &[&server_url("/x")]);
    let (status, summary) = first.stop(libc::SIGTERM);
    assert!(status.success(), "{}", first.log());
    let flows = tshark_flow_sizes(&pcap);
    let with_payload = flows
        .values()
        .filter(|(pkts, _, syn)| *pkts > 0 && *syn)
        .count();
    assert_eq!(
        with_payload, 2,
        "the first agent saw both requests: {flows:?} {summary:?}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    if !binary().is_file() {
        if std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("agent binary {} missing", binary().display());
        }
        eprintln!(
            "SKIPPED bad_flags_exit_2_with_one_line: agent binary {} missing",
            binary().display()
        );
        return;
    }
    let mut cases: Vec<(Vec<&str>, &str, &[&str])> = vec![
        (vec!["--iface", "lo"], "no ports", &[]),
        (
            vec!["--iface", "lo", "--port", "0"],
            "0 is not in 1-65535",
            &[],
        ),
        (
            vec!["--iface", "lo", "--port", "70000"],
            "70000 is not in 1-65535",
            &[],
        ),
        (
            vec!["--iface", "lo", "--port", "80", "--capture-percent", "150"],
            "--capture-percent",
            &[],
        ),
        (
            vec!["--iface", "lo", "--port", "80", "--capture-percent=-1"],
            "--capture-percent",
            &[],
        ),
        (
            vec![
                "--iface",
                "lo",
                "--port",
                "80",
                "--ring-buffer-size",
                "3000",
            ],
            "power of two",
            &[],
        ),
        (
            vec!["--iface", "lo", "--port", "80", "--attach", "xdp"],
            "invalid --attach `xdp`",
            &[],
        ),
    ];
    if is_root() {
        cases.push((
            vec!["--iface", "nosuchif0", "--port", "80"],
            "unknown interface",
            &[],
        ));
        // Drop to nobody: no capabilities left.
        cases.push((
            vec!["--iface", "lo", "--port", "80"],
            "needs root or CAP_BPF+CAP_NET_ADMIN",
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ],
        ));
    } else {
        eprintln!(
            "bad_flags_exit_2_with_one_line: not root, unknown-interface and no-capability cases skipped"
        );
    }
    for (args, expect, wrapper) in cases {
        let (code, stderr) = run_to_exit(&args, wrapper);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(code, Some(2), "{args:?}: exit status, stderr: {stderr}");
        assert_eq!(lines.len(), 1, "{args:?}: one line, got: {stderr}");
        assert!(
            lines[0].contains(expect),
            "{args:?}: expected {expect:?} in {:?}",
            lines[0]
        );
    }
}
