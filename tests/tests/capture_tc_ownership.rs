//! Privileged: the classic tc attachment (`--attach tc`) touches only what the agent owns.
//! Cleanup after a killed agent stays in the killed agent's network namespace and removes only
//! its filters, never a foreign filter that took the same priority and handle on a same-named
//! interface elsewhere. A clean exit removes the clsact qdisc when the agent created it, and only
//! then. `tc` from iproute2 is the oracle.

use mirror_tests::agent::Agent;
use mirror_tests::tc::{filters, has_clsact, pref_and_handle};
use mirror_tests::{NetNs, TempDir, privileged_or_skip, unique_name};

/// A classic BPF filter that is not the agent's: accepts everything into class 1:1.
const FOREIGN_BYTECODE: &str = "1,6 0 0 4294967295,";

fn tc_args(iface: &str) -> [&str; 6] {
    ["--iface", iface, "--port", "8080", "--attach", "tc"]
}

/// The agent's filter lines on `hook`.
fn agent_filters(ns: &NetNs, iface: &str, hook: &str) -> Vec<String> {
    filters(ns, iface, hook)
        .into_iter()
        .filter(|l| l.contains("mirror_ingress") || l.contains("mirror_egress"))
        .collect()
}

#[test]
fn tc_cleanup_stays_in_its_namespace_and_spares_foreign_filters() {
    if !privileged_or_skip("tc_cleanup_stays_in_its_namespace_and_spares_foreign_filters") {
        return;
    }
    let dir = TempDir::new("tc-owner");
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    // The same interface name in both namespaces.
    let (iface, peer) = (unique_name("mo"), unique_name("mp"));
    ns_a.add_veth(&iface, &peer);
    ns_b.add_veth(&iface, &peer);

    // 1. An agent in A is killed: its filter stays (the kernel does not own classic filters).
    let mut killed = Agent::start(&ns_a, &tc_args(&iface), dir.path());
    let orphan = agent_filters(&ns_a, &iface, "ingress");
    assert_eq!(
        orphan.len(),
        1,
        "the agent's ingress filter in A: {orphan:?}"
    );
    let (pref, handle) = pref_and_handle(&orphan[0]);
    killed.stop(libc::SIGKILL);
    assert_eq!(
        agent_filters(&ns_a, &iface, "ingress"),
        orphan,
        "the killed agent's filter outlives it"
    );

    // 2. In B, a foreign filter on the same-named interface, same hook, same priority and
    //    handle as the orphan in A. An agent in B starts and exits cleanly.
    ns_b.run(&["tc", "qdisc", "add", "dev", &iface, "clsact"]);
    ns_b.run(&[
        "tc",
        "filter",
        "add",
        "dev",
        &iface,
        "ingress",
        "pref",
        &pref,
        "handle",
        &handle,
        "bpf",
        "bytecode",
        FOREIGN_BYTECODE,
        "classid",
        "1:1",
    ]);
    let foreign = filters(&ns_b, &iface, "ingress");
    assert_eq!(foreign.len(), 1, "{foreign:?}");
    assert_eq!(pref_and_handle(&foreign[0]), (pref.clone(), handle.clone()));
    let mut in_b = Agent::start(&ns_b, &tc_args(&iface), dir.path());
    assert_eq!(
        agent_filters(&ns_b, &iface, "ingress").len(),
        1,
        "the B agent attached next to the foreign filter: {:?}",
        filters(&ns_b, &iface, "ingress")
    );
    let (status, _) = in_b.stop(libc::SIGTERM);
    assert!(status.success(), "{}", in_b.log());
    assert_eq!(
        filters(&ns_b, &iface, "ingress"),
        foreign,
        "only the foreign filter is left in B, untouched: {}",
        in_b.log()
    );
    assert!(
        has_clsact(&ns_b, &iface),
        "B's clsact was there before the agent: it stays"
    );

    // 3. The next agent in A removes the orphan, and on its clean exit leaves nothing of the
    //    agents in A, not even the clsact qdisc the killed agent created.
    let mut next = Agent::start(&ns_a, &tc_args(&iface), dir.path());
    let on = agent_filters(&ns_a, &iface, "ingress");
    assert_eq!(
        on.len(),
        1,
        "only the new agent's filter in A: {on:?}: {}",
        next.log()
    );
    assert_ne!(on, orphan, "the orphan was replaced: {}", next.log());
    assert!(
        next.log()
            .contains("removed a tc filter left by a killed agent"),
        "{}",
        next.log()
    );
    let (status, _) = next.stop(libc::SIGTERM);
    assert!(status.success(), "{}", next.log());
    assert_eq!(filters(&ns_a, &iface, "ingress"), Vec::<String>::new());
    assert!(
        !has_clsact(&ns_a, &iface),
        "the clsact an agent created in A is gone: {}",
        next.log()
    );
    assert_eq!(
        filters(&ns_b, &iface, "ingress"),
        foreign,
        "B still untouched"
    );
}

#[test]
fn tc_clean_exit_removes_only_a_clsact_it_created_and_left_empty() {
    if !privileged_or_skip("tc_clean_exit_removes_only_a_clsact_it_created_and_left_empty") {
        return;
    }
    let dir = TempDir::new("tc-clsact");
    let ns = NetNs::new();
    let (iface, peer) = (unique_name("mq"), unique_name("mr"));
    ns.add_veth(&iface, &peer);
    let run_and_stop = |add_foreign_while_running: bool| {
        let mut agent = Agent::start(&ns, &tc_args(&iface), dir.path());
        assert!(has_clsact(&ns, &iface), "clsact while attached");
        if add_foreign_while_running {
            ns.run(&[
                "tc",
                "filter",
                "add",
                "dev",
                &iface,
                "egress",
                // Not the agent's protocol (all): the agent must see it all the same.
                "protocol",
                "ip",
                "bpf",
                "bytecode",
                FOREIGN_BYTECODE,
                "classid",
                "1:1",
            ]);
        }
        let (status, _) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{}", agent.log());
        assert!(agent_filters(&ns, &iface, "ingress").is_empty());
        agent.log()
    };

    // 1. No clsact before: the agent created it, and removes it on a clean exit.
    assert!(!has_clsact(&ns, &iface));
    let log = run_and_stop(false);
    assert!(
        !has_clsact(&ns, &iface),
        "the clsact the agent created is removed: {log}"
    );

    // 2. The agent created it, but another filter was put on it meanwhile: it stays, with
    //    that filter.
    let log = run_and_stop(true);
    assert!(
        has_clsact(&ns, &iface),
        "clsact kept for the other filter: {log}"
    );
    assert_eq!(filters(&ns, &iface, "egress").len(), 1, "{log}");

    // 3. A clsact that was there before the agent (added here by the test) is not the
    //    agent's to remove, even when the agent leaves it empty.
    ns.run(&["tc", "qdisc", "del", "dev", &iface, "clsact"]);
    ns.run(&["tc", "qdisc", "add", "dev", &iface, "clsact"]);
    let log = run_and_stop(false);
    assert!(has_clsact(&ns, &iface), "a clsact found is left: {log}");
}
