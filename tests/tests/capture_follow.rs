//! Privileged: `--iface` with a glob follows interfaces as they come and go.
//!
//! A node namespace with a recording server on all its addresses; client namespaces joined to
//! it by veth pairs. The agent starts with one matching veth, then a second matching veth is
//! created (the agent attaches to it, logs it and counts it), and one that does not match.
//! Requests through both matching veths reach the mirror byte for byte, none through the other.
//! Deleting the second veth detaches it (logged, counted) and capture goes on through the first.
//! Runs with TCX and with classic tc filters (`--attach tc`), which the agent adds and removes
//! per interface.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mirror_tests::agent::{Agent, attached_programs};
use mirror_tests::mirror::{Behavior, MirrorTable, RecordingServer, assert_same_requests};
use mirror_tests::scenario::curl_served_in;
use mirror_tests::{NetNs, TempDir, privileged_or_skip, unique_name};

const PORT: u16 = 8080;
const MIRROR_PORT: u16 = 9001;

/// A veth pair from `node` to `client` on subnet 10.79.`subnet`.0/24: the node's end is .1, with
/// interface index `index` when given.
fn link(node: &NetNs, client: &NetNs, node_if: &str, subnet: u8, index: Option<u32>) {
    let client_if = unique_name("mc");
    let index = index.map(|i| i.to_string());
    let mut add = vec!["ip", "link", "add", node_if];
    if let Some(i) = &index {
        add.extend(["index", i.as_str()]);
    }
    add.extend([
        "type",
        "veth",
        "peer",
        "name",
        &client_if,
        "netns",
        &client.name,
    ]);
    node.run(&add);
    for (ns, ifname, host) in [(node, node_if, 1), (client, client_if.as_str(), 2)] {
        ns.run(&[
            "ip",
            "addr",
            "add",
            &format!("10.79.{subnet}.{host}/24"),
            "dev",
            ifname,
        ]);
        ns.run(&["ip", "link", "set", ifname, "up"]);
    }
}

/// Waits until a line of the agent's log contains both `what` and `iface`.
fn wait_log(agent: &Agent, what: &str, iface: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent
        .log()
        .lines()
        .any(|l| l.contains(what) && l.contains(iface))
    {
        assert!(
            Instant::now() < deadline,
            "no `{what}` for {iface} in the log: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn get(client: &NetNs, subnet: u8, path: &str) {
    curl_served_in(client, &[&format!("http://10.79.{subnet}.1:{PORT}{path}")]);
}

fn follow(attach: &str) {
    let test = format!("iface_glob_follows_interfaces_{attach}");
    if !privileged_or_skip(&test) {
        return;
    }
    let dir = TempDir::new("follow");
    let node = NetNs::new();
    let (a, b, c) = (NetNs::new(), NetNs::new(), NetNs::new());
    // `mf<pid>x<n>` for the interfaces the glob takes, `mq...` for one it does not.
    let prefix = unique_name("mf");
    let prefix = &prefix[..prefix.rfind('x').unwrap() + 1];
    let if_a = unique_name("mf");
    link(&node, &a, &if_a, 1, None);
    let primary = RecordingServer::start(&node, "0.0.0.0:8080".parse().unwrap(), Behavior::Ok);
    let mirror = RecordingServer::start(
        &node,
        format!("127.0.0.1:{MIRROR_PORT}").parse().unwrap(),
        Behavior::Ok,
    );
    mirror_tests::wait_for_port(&node, PORT, Duration::from_secs(5));

    let glob = format!("{prefix}*");
    let mut agent = Agent::start(
        &node,
        &[
            "--iface",
            &glob,
            "--port",
            &PORT.to_string(),
            "--attach",
            attach,
            "--mirror",
            &format!("http://127.0.0.1:{MIRROR_PORT},name=shadow"),
        ],
        dir.path(),
    );
    get(&a, 1, "/a/1");

    // A matching interface made after the start (with an index above the classifiers' array of
    // slots: the kernel hands indexes out cyclically, so long-lived nodes get there), and one
    // that does not match.
    let if_b = unique_name("mf");
    link(&node, &b, &if_b, 2, Some(100_000));
    wait_log(&agent, "attached to a new interface", &if_b);
    assert!(
        agent.log().contains("ifindex=100000"),
        "{if_b} has index 100000: {}",
        agent.log()
    );
    let on = attached_programs(&node, &if_b);
    assert!(
        on.iter().any(|l| l.contains("mirror_ingress")),
        "the classifier runs on {if_b}: {on:?}"
    );
    let if_c = unique_name("mq");
    link(&node, &c, &if_c, 3, None);
    get(&b, 2, "/b/1");
    get(&c, 3, "/c/1");
    get(&a, 1, "/a/2");

    // The second goes away: detached, and capture goes on through the first.
    node.run(&["ip", "link", "del", &if_b]);
    wait_log(&agent, "detached from an interface", &if_b);
    get(&a, 1, "/a/3");
    assert!(
        attached_programs(&node, &if_c).is_empty(),
        "nothing attached to {if_c}, which the glob does not match"
    );

    let sent = primary.wait_for(5, Duration::from_millis(200), Duration::from_secs(10));
    let lines: Vec<String> = sent
        .iter()
        .map(|r| format!("{} {}", r.peer, r.line()))
        .collect();
    assert_eq!(sent.len(), 5, "the primary served every request: {lines:?}");
    let through_c: IpAddr = "10.79.3.2".parse().unwrap();
    let expected: Vec<_> = sent
        .iter()
        .filter(|r| r.peer.ip() != through_c)
        .cloned()
        .collect();
    assert_eq!(expected.len(), 4);
    let got = mirror.wait_for(4, Duration::from_millis(500), Duration::from_secs(20));
    assert_same_requests(&test, &expected, &got);

    let (status, summary) = agent.stop(libc::SIGTERM);
    let log = agent.log();
    assert!(status.success(), "agent exit {status}: {log}");
    summary.assert_kernel_balanced();
    assert_eq!(summary.get("interfaces"), 1, "{log}");
    assert_eq!(summary.get("iface_attached"), 2, "{log}");
    assert_eq!(summary.get("iface_detached"), 1, "{log}");
    assert_eq!(summary.get("iface_attach_errors"), 0, "{log}");
    let table = MirrorTable::parse(&log);
    assert_eq!(table.captured, 4, "{log}");
    assert!(table.row("shadow").balanced(), "{log}");
    // Nothing of ours stays on the interface that is left (tc filters are removed at exit).
    mirror_tests::agent::wait_detached(&node, &if_a, Duration::from_secs(5));
    eprintln!("{test}: 4 requests through 2 followed interfaces mirrored, 1 through another not");
}

#[test]
fn iface_glob_follows_interfaces_tcx() {
    follow("auto");
}

#[test]
fn iface_glob_follows_interfaces_tc() {
    follow("tc");
}
