//! What `tc` (iproute2) shows on an interface inside a namespace: an oracle independent of the
//! agent's own netlink code.

use crate::NetNs;

/// The filters on `hook` (`ingress` or `egress`) of `iface`, one `tc filter show` line each
/// (the per-priority header lines without a handle are left out).
pub fn filters(ns: &NetNs, iface: &str, hook: &str) -> Vec<String> {
    ns.run(&["tc", "filter", "show", "dev", iface, hook])
        .lines()
        .filter(|l| l.contains(" handle "))
        .map(str::to_owned)
        .collect()
}

/// Whether `iface` has a clsact qdisc.
pub fn has_clsact(ns: &NetNs, iface: &str) -> bool {
    ns.run(&["tc", "qdisc", "show", "dev", iface])
        .lines()
        .any(|l| l.starts_with("qdisc clsact"))
}

/// `pref` and `handle` of a `tc filter show` line, as `tc filter add` takes them back.
pub fn pref_and_handle(line: &str) -> (String, String) {
    let after = |key: &str| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key);
        words
            .next()
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_owned()
    };
    (after("pref"), after("handle"))
}
