//! Privileged: telemetry and comparison through the real binary.
//!
//! The agent runs with `--metrics-addr` and `--compare` in front of a primary that answers 200,
//! with one mirror that answers 200 and one that answers 500. While it runs, `/readyz` answers
//! 200 and `/metrics` holds the per-mirror counters and the per-copy duration histogram; at exit
//! the comparison table says every copy was compared and exactly the 500 mirror's copies
//! mismatch by status class.

use std::time::Duration;

use mirror_tests::mirror::Behavior;
use mirror_tests::scenario::{
    Family, curl_ok, start_agent, start_mirror, start_primary, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const N: usize = 20;
const METRICS: &str = "127.0.0.1:9464";

/// The value of the first metric line that starts with `name` and contains every label.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// The comparison row of `mirror` in the exit log: (compared, status_class mismatches).
fn compare_row(log: &str, mirror: &str) -> Option<(u64, u64)> {
    let start = log
        .lines()
        .position(|l| l.contains("compared") && l.contains("status_class"))?;
    log.lines().skip(start + 1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&mirror) && f.len() >= 3)
            .then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?)))
            .flatten()
    })
}

#[test]
fn metrics_endpoint_and_comparison_through_the_binary() {
    metrics_and_comparison("metrics_endpoint_and_comparison_through_the_binary", &[]);
}

/// `--threads 1`: the endpoint is served, and the comparison thread fed, from the one thread
/// that also captures and sends the copies.
#[test]
fn metrics_endpoint_and_comparison_on_one_thread() {
    metrics_and_comparison(
        "metrics_endpoint_and_comparison_on_one_thread",
        &["--threads", "1"],
    );
}

/// `extra`: more agent flags.
fn metrics_and_comparison(test: &str, extra: &[&str]) {
    if !privileged_or_skip(test) {
        return;
    }
    let dir = TempDir::new("telemetry-e2e");
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let good = start_mirror(&topo, Family::V4, 9011, Behavior::Ok);
    let bad = start_mirror(
        &topo,
        Family::V4,
        9012,
        Behavior::Error500After(Duration::ZERO),
    );
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},name=good", url(good.addr)),
            "--mirror".into(),
            format!("{},name=bad", url(bad.addr)),
            "--metrics-addr".into(),
            METRICS.into(),
            "--compare".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>(),
    );
    curl_ok(
        &topo,
        &[
            "-o",
            "/dev/null",
            &format!("{}/t/[1-{N}]", url(primary.addr)),
        ],
    );
    good.wait_for(N, Duration::from_millis(300), Duration::from_secs(20));
    bad.wait_for(N, Duration::from_millis(300), Duration::from_secs(20));
    // Snapshots reach the exporter about once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let get = |path: &str| {
        let out = topo
            .server
            .command("curl")
            .args(["-sS", "--max-time", "5", "-w", "\nstatus=%{http_code}"])
            .arg(format!("http://{METRICS}{path}"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = get("/readyz");
    let metrics = get("/metrics");
    let (_, _table) = stop_agent(&mut agent);
    let log = agent.log();

    assert!(ready.ends_with("status=200"), "/readyz: {ready}");
    if extra == ["--threads", "1"] {
        assert!(log.contains("threads=1"), "ran on one thread: {log}");
    }
    for m in ["good", "bad"] {
        let label = format!("mirror_name=\"{m}\"");
        assert_eq!(
            metric(&metrics, "mirror_requests_sent_total", &[&label]),
            Some(N as f64),
            "sent to {m}: {metrics}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "http_client_request_duration_seconds_count",
            &["mirror_name=\"good\"", "http_response_status_code=\"200\""]
        ),
        Some(N as f64),
        "duration histogram of the good mirror: {metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "http_client_request_duration_seconds_count",
            &["mirror_name=\"bad\"", "http_response_status_code=\"500\""]
        ),
        Some(N as f64),
        "duration histogram of the 500 mirror: {metrics}"
    );
    assert_eq!(compare_row(&log, "good"), Some((N as u64, 0)), "{log}");
    assert_eq!(
        compare_row(&log, "bad"),
        Some((N as u64, N as u64)),
        "{log}"
    );
}
