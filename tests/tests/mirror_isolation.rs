//! Privileged: mirror sampling and isolation, end to end.
//!
//! - Two mirrors at 100% and 50%: the first gets every request, the second its binomial share.
//! - Broken mirrors (down, never answers, 500 after 2 s, reset) next to a healthy one: the
//!   client gets exactly the responses it gets without the agent, the healthy mirror gets every
//!   request, and each broken mirror's row accounts for every copy it was given.

use std::time::Duration;

use mirror_tests::mirror::{Behavior, MirrorTable, RecordingServer};
use mirror_tests::scenario::{
    Family, curl_ok, start_agent, start_mirror, start_primary, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

/// `n` GETs on keep-alive connections (curl URL globbing), each with its status and body
/// printed, so two runs can be compared byte for byte.
fn drive(topo: &Topology, primary: &RecordingServer, tag: &str, n: usize) -> Vec<u8> {
    curl_ok(
        topo,
        &[
            "-w",
            "status=%{http_code}\\n",
            "-H",
            "X-Test: isolation",
            &format!("{}/{tag}/[1-{n}]", url(primary.addr)),
        ],
    )
}

#[test]
fn two_mirrors_at_100_and_50_percent() {
    if !privileged_or_skip("two_mirrors_at_100_and_50_percent") {
        return;
    }
    const N: usize = 400;
    let dir = TempDir::new("mirror-pct");
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let full = start_mirror(&topo, Family::V4, 9001, Behavior::Ok);
    let half = start_mirror(&topo, Family::V4, 9002, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},name=full", url(full.addr)),
            "--mirror".into(),
            format!("{},percent=50,name=half", url(half.addr)),
        ],
    );
    drive(&topo, &primary, "pct", N);
    assert_eq!(primary.count(), N);
    full.wait_for(N, Duration::from_millis(500), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(table.captured, N as u64, "{log}");
    assert_eq!(full.count(), N, "the 100% mirror gets every request");
    let f = table.row("full");
    assert_eq!(
        (f.sampled, f.sent, f.status[0]),
        (N as u64, N as u64, N as u64),
        "{f:?}"
    );
    // Binomial(400, 0.5): sd 10; 4.5 sd either side fails by chance about once in 150,000 runs.
    let h = table.row("half");
    let got = half.count() as u64;
    assert!((155..=245).contains(&got), "50% mirror got {got} of {N}");
    assert_eq!(h.sampled, got, "{h:?}");
    assert_eq!(h.sent, got, "{h:?}");
    assert!(f.balanced() && h.balanced(), "{table:?}");
    eprintln!("two_mirrors_at_100_and_50_percent: full {N}/{N}, half {got}/{N}");
}

#[test]
fn broken_mirrors_do_not_touch_the_primary_and_every_copy_is_counted() {
    let test = "broken_mirrors_do_not_touch_the_primary_and_every_copy_is_counted";
    if !privileged_or_skip(test) {
        return;
    }
    const N: usize = 40;
    let dir = TempDir::new("mirror-broken");
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let healthy = start_mirror(&topo, Family::V4, 9001, Behavior::Ok);
    let never = start_mirror(&topo, Family::V4, 9003, Behavior::Never);
    let slow = start_mirror(
        &topo,
        Family::V4,
        9004,
        Behavior::Error500After(Duration::from_secs(2)),
    );
    let reset = start_mirror(&topo, Family::V4, 9005, Behavior::Reset);
    // Nothing listens on 9002: the "down" mirror.
    let down = "http://127.0.0.1:9002".to_owned();

    // Without the agent first: what the client gets from the primary alone.
    let baseline = drive(&topo, &primary, "iso", N);
    let base_count = primary.count();
    assert_eq!(base_count, N);

    let mirrors = [
        format!("{},name=healthy", url(healthy.addr)),
        format!("{down},name=down"),
        format!("{},name=never", url(never.addr)),
        format!("{},name=slow500", url(slow.addr)),
        format!("{},name=reset", url(reset.addr)),
    ];
    let mut flags: Vec<String> = mirrors
        .iter()
        .flat_map(|m| ["--mirror".to_owned(), m.clone()])
        .collect();
    // 3 s: the slow mirror answers within it, the silent one does not.
    flags.extend(["--timeout-ms".into(), "3000".into()]);
    let mut agent = start_agent(&topo, dir.path(), &flags);
    let agent_started = std::time::Instant::now();
    let with_agent = drive(&topo, &primary, "iso", N);
    assert_eq!(
        String::from_utf8_lossy(&with_agent),
        String::from_utf8_lossy(&baseline),
        "the client's responses changed with broken mirrors"
    );
    healthy.wait_for(N, Duration::from_millis(300), Duration::from_secs(20));
    // Let the never-answering copies time out and the slow 500s arrive.
    std::thread::sleep(Duration::from_millis(3500));
    // The agent logs a progress line every 5 s: run past the first one.
    if let Some(rest) = Duration::from_millis(6500).checked_sub(agent_started.elapsed()) {
        std::thread::sleep(rest);
    }
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("captured ")
            && l.contains("| healthy: sent ")
            && l.contains("| down: sent 0")),
        "a progress line naming every mirror: {log}"
    );
    eprintln!("{test}: {}", table_text(&log));

    assert_eq!(table.captured, N as u64, "{log}");
    assert_eq!(healthy.count(), N, "the healthy mirror gets every request");
    let h = table.row("healthy");
    assert_eq!(
        (h.sent, h.status[0], h.dropped, h.errors),
        (N as u64, N as u64, 0, 0),
        "{h:?}"
    );
    for name in ["down", "never", "slow500", "reset"] {
        let r = table.row(name);
        assert_eq!(
            r.sampled, N as u64,
            "{name} was offered every request: {r:?}"
        );
        assert!(r.balanced(), "{name}: every copy accounted for: {r:?}");
        assert_eq!(r.status[0], 0, "{name} answered 2xx: {r:?}");
    }
    let down_row = table.row("down");
    assert_eq!(down_row.sent, 0, "{down_row:?}");
    assert_eq!(down_row.errors + down_row.dropped, N as u64, "{down_row:?}");
    let n = table.row("never");
    assert!(n.timeouts > 0, "never-answering copies time out: {n:?}");
    assert_eq!(
        never.count() as u64,
        n.sent,
        "every copy sent arrived: {n:?}"
    );
    let s = table.row("slow500");
    assert!(s.status[3] > 0, "slow 500s counted as 5xx: {s:?}");
    assert_eq!(slow.count() as u64, s.sent, "{s:?}");
    let r = table.row("reset");
    assert!(r.errors > 0, "resets counted as errors: {r:?}");
    // The server records each request before resetting: every copy written arrived.
    assert_eq!(reset.count() as u64, r.sent, "{r:?}");
    assert_eq!(primary.count(), 2 * N);
}

fn table_text(log: &str) -> String {
    let t = MirrorTable::parse(log);
    let start = log.rfind("\nmirror ").map_or(0, |i| i + 1);
    format!("{} rows\n{}", t.rows.len(), &log[start..])
}
