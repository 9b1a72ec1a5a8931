//! Privileged: comparison without ignore rules, through the real binary and a real kernel. A
//! baseline mirror (a second instance of the primary's version) teaches the agent what differs
//! by nature; the candidate's one real change is reported and nothing else is.
//!
//! Three instances of [`mirror_tests::mirror::noisy_api`]: the primary, the baseline and the
//! candidate answer every response with their own response id, timestamps, instance name,
//! `X-Served-By` and `X-Trace` (none ignored by default), on three endpoints: `/users/N` (JSON),
//! `/orders/UUID` (JSON with an array of timestamped items) and `/health` (text). The
//! candidate changes `$.user.plan` on `/users/N`. Baseline and candidate each get 50%, with
//! no `--sampling` flag (a baseline makes it consistent) and no `--compare-ignore` rule.
//!
//! Checked: both mirrors received exactly the same requests; the candidate's only reported
//! differences are `$.user.plan` on exactly the `/users` requests it received (comparison row,
//! per-endpoint rows and one diff-log line each, with the noise marked); every other compared
//! request counts as noise only; the baseline's own comparison is all noise; the noise learned
//! names the fields that really differ.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use mirror_tests::mirror::{Behavior, Instance, compare_row};
use mirror_tests::scenario::{
    Family, read_responses, start_agent, start_mirror, start_primary_with, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const CONNECTIONS: usize = 48;
const PER_CONNECTION: usize = 6;

/// The `seq`-th request's path: the three endpoints in turn, each target unique.
fn path(seq: usize) -> String {
    match seq % 3 {
        0 => format!("/users/{}?seq={seq}", 100 + seq),
        1 => format!("/orders/{seq:08x}-0000-4000-8000-{seq:012x}?seq={seq}"),
        _ => format!("/health?seq={seq}"),
    }
}

/// The request line of each request a server received.
fn lines(received: &[mirror_tests::mirror::Received]) -> BTreeSet<String> {
    received.iter().map(|r| r.line()).collect()
}

/// Rows of the per-endpoint table: (endpoint, mirror) -> [compared, real, noise_only, fields].
fn endpoint_rows(log: &str) -> HashMap<(String, String), [u64; 4]> {
    let mut rows = HashMap::new();
    let mut inside = false;
    for line in log.lines() {
        if line.starts_with("endpoint ") && line.contains("noise_fields") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() != 7 {
            break;
        }
        let n = |i: usize| cols[i].parse::<u64>().unwrap_or(u64::MAX);
        rows.insert(
            (format!("{} {}", cols[0], cols[1]), cols[2].to_string()),
            [n(3), n(4), n(5), n(6)],
        );
    }
    rows
}

#[test]
fn a_baseline_mirror_leaves_only_the_candidates_real_change() {
    if !privileged_or_skip("a_baseline_mirror_leaves_only_the_candidates_real_change") {
        return;
    }
    let dir = TempDir::new("compare-baseline");
    let topo = Topology::new();
    let primary = start_primary_with(
        &topo,
        Family::V4,
        Behavior::NoisyApi(Instance::Current("primary-1")),
    );
    let baseline = start_mirror(
        &topo,
        Family::V4,
        9031,
        Behavior::NoisyApi(Instance::Current("baseline-1")),
    );
    let candidate = start_mirror(
        &topo,
        Family::V4,
        9032,
        Behavior::NoisyApi(Instance::Candidate("candidate-1")),
    );
    let log_path = dir.path().join("diff.jsonl");
    let args: Vec<String> = vec![
        "--mirror".into(),
        format!(
            "{},name=baseline,role=baseline,percent=50",
            url(baseline.addr)
        ),
        "--mirror".into(),
        format!("{},name=candidate,percent=50", url(candidate.addr)),
        "--compare".into(),
        "--diff-log".into(),
        log_path.display().to_string(),
        "--diff-log-rate".into(),
        "1000".into(),
    ];
    let mut agent = start_agent(&topo, dir.path(), &args);

    // Keep-alive connections, one request at a time on each.
    let addr = primary.addr;
    topo.client.enter(|| {
        for c in 0..CONNECTIONS {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for j in 0..PER_CONNECTION {
                let p = path(c * PER_CONNECTION + j);
                let req = format!("GET {p} HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n");
                s.write_all(req.as_bytes()).expect("write");
                let got = read_responses(&mut s, 1);
                assert_eq!(got[0].0, 200, "{p}: {}", got[0].1);
            }
        }
    });
    let total = CONNECTIONS * PER_CONNECTION;
    // Copies go out right after capture; wait until both mirrors are quiet for a second.
    let quiet = Duration::from_secs(1);
    let got_baseline = baseline.wait_for(1, quiet, Duration::from_secs(20));
    let got_candidate = candidate.wait_for(1, quiet, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(primary.count(), total, "primary served");

    // Consistent sampling: the same requests reached both. At 50% for both, the kernel samples
    // half the connections (per flow) and both mirrors take every request captured: whole
    // connections, about half of them (binomial, 48 connections, sd 3.5: 24 +- 4 sd).
    let (b_set, c_set) = (lines(&got_baseline), lines(&got_candidate));
    assert_eq!(
        b_set, c_set,
        "baseline and candidate got different requests"
    );
    let n = c_set.len();
    assert_eq!(n % PER_CONNECTION, 0, "whole connections are sampled: {n}");
    let connections = n / PER_CONNECTION;
    assert!(
        (10..=38).contains(&connections),
        "{connections} of {CONNECTIONS} connections sampled at 50%"
    );
    assert_eq!(table.row("candidate").sent, n as u64, "{log}");
    let users = c_set
        .iter()
        .filter(|l| l.starts_with("GET /users/"))
        .count() as u64;
    assert!(users > 0, "no /users request sampled: {c_set:?}");

    // The comparison rows: only the real change is a difference; the rest is noise.
    let cand = compare_row(&log, "candidate");
    let want = [
        ("compared", n as u64),
        ("status_class", 0),
        ("status_code", 0),
        ("no_response", 0),
        ("header", 0),
        ("body", users),
        ("noise_only", n as u64 - users),
        ("content_skipped", 0),
    ];
    for (k, v) in want {
        assert_eq!(cand.get(k), Some(&v), "candidate {k}: {cand:?}\n{log}");
    }
    let base = compare_row(&log, "baseline");
    for (k, v) in [
        ("compared", n as u64),
        ("header", 0),
        ("body", 0),
        ("noise_only", n as u64),
    ] {
        assert_eq!(base.get(k), Some(&v), "baseline {k}: {base:?}\n{log}");
    }

    // Per endpoint: the real differences sit on /users only.
    let rows = endpoint_rows(&log);
    let row = |endpoint: &str, mirror: &str| {
        *rows
            .get(&(endpoint.to_string(), mirror.to_string()))
            .unwrap_or_else(|| panic!("no row {endpoint} {mirror}: {log}"))
    };
    let users_row = row("GET /users/{n}", "candidate");
    assert_eq!(users_row[..3], [users, users, 0], "{log}");
    for endpoint in ["GET /orders/{uuid}", "GET /health"] {
        let r = row(endpoint, "candidate");
        assert_eq!((r[1], r[2]), (0, r[0]), "{endpoint}: {log}");
        assert!(r[3] > 0, "{endpoint} learned no noise: {log}");
        let b = row(endpoint, "baseline");
        assert_eq!((b[0], b[1], b[2]), (r[0], 0, r[0]), "{endpoint}: {log}");
    }
    // What was learned: the fields that really differ, and not the user's plan.
    for field in [
        "header:x-served-by",
        "header:x-trace",
        "json:$.response_id",
        "json:$.at",
        "json:$.served_by",
        "json:$.items[*].at",
        "body",
    ] {
        assert!(
            log.contains(&format!("{field} (")),
            "{field} not learned: {log}"
        );
    }
    assert!(!log.contains("json:$.user.plan"), "{log}");
    assert!(log.contains("baseline waits expired 0"), "{log}");

    // The diff log: one line per /users copy, naming the real path, with the noise marked.
    let text = std::fs::read_to_string(&log_path).expect("diff log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len() as u64, users, "{text}");
    // Exactly the /users requests the candidate received, each once.
    let logged: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    let received: BTreeSet<String> = c_set
        .iter()
        .filter(|l| l.starts_with("GET /users/"))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .collect();
    assert_eq!(
        logged, received,
        "diff log paths vs the candidate's /users requests"
    );
    for l in &lines {
        assert_eq!(l["mirror"], "candidate", "{l}");
        assert!(l["path"].as_str().unwrap().starts_with("/users/"), "{l}");
        assert_eq!(l["kinds"], serde_json::json!(["body"]), "{l}");
        assert_eq!(l["json_paths"], serde_json::json!(["$.user.plan"]), "{l}");
        let noise: Vec<&str> = l["noise_json_paths"]
            .as_array()
            .unwrap_or_else(|| panic!("no noise paths: {l}"))
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(noise, ["$.at", "$.response_id", "$.served_by"], "{l}");
        let headers = l["headers"].as_array().unwrap();
        assert!(
            !headers.is_empty() && headers.iter().all(|h| h["noise"] == true),
            "{l}"
        );
    }
}
