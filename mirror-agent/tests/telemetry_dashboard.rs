//! The Grafana dashboard (deploy/grafana-dashboard.json) names only metrics the agent exports:
//! every metric name in its PromQL is a series name of the agent's `/metrics` text. When the
//! Prometheus binary is present, every query is also checked for syntax by a real Prometheus.

mod telemetry_common;

use std::collections::BTreeSet;
use std::time::Duration;

use mirror_agent::capture::ebpf::Counters;
use mirror_agent::compare::{Comparator, CompareSnapshot, MirrorSide, PrimarySide};
use mirror_agent::pipeline::PipelineStats;
use mirror_agent::replay::stats::{MirrorStats, ReplaySnapshot};
use mirror_agent::telemetry::{RequestResult, Telemetry, TelemetryConfig};
use telemetry_common::prometheus::Prometheus;

fn dashboard() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every PromQL expression: panel targets and query variables.
fn queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("target expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            out.push(v["query"]["query"].as_str().unwrap().to_string());
        }
    }
    out
}

const KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
];

/// Metric names in a PromQL expression: identifiers that are not functions (followed by `(`),
/// keywords, label lists (`by (...)`), label matchers (`{...}`), strings or ranges. Grafana's
/// `label_values(metric, label)` names a metric in its first argument only.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = expr.to_string();
    if let Some(inner) = s
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        s = inner.split(',').next().unwrap().to_string();
    }
    // Blank out strings, {...}, [...] and the parenthesised label list after by/without/on/...
    let b: Vec<char> = s.chars().collect();
    let mut clean = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let close = match c {
            '"' => Some('"'),
            '{' => Some('}'),
            '[' => Some(']'),
            _ => None,
        };
        if let Some(close) = close {
            i += 1;
            while i < b.len() && b[i] != close {
                i += 1;
            }
            i += 1;
            clean.push(' ');
            continue;
        }
        clean.push(c);
        i += 1;
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = clean.chars().collect();
    let mut i = 0;
    let mut skip_paren_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            // An aggregation with its clause first: `sum by (le) (...)`.
            let rest: String = chars[i..].iter().collect();
            let rest = rest.trim_start();
            let clause_follows = ["by", "without"]
                .iter()
                .any(|k| rest.starts_with(k) && rest[k.len()..].trim_start().starts_with('('));
            if KEYWORDS.contains(&word.as_str()) {
                skip_paren_list = next == Some('(');
            } else if next == Some('(') || clause_follows {
                // a function call or an aggregation
            } else {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_paren_list {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_paren_list = false;
        }
        i += 1;
    }
    names
}

/// The series names the agent's `/metrics` shows with every stage present.
async fn exported() -> BTreeSet<String> {
    let t = Telemetry::start(TelemetryConfig::default()).await.unwrap();
    let m = std::sync::Arc::new(MirrorStats::new("app-v2".into(), 100.0, 1.0));
    let replay = ReplaySnapshot {
        captured: 10,
        mirrors: vec![m.snapshot()],
    };
    t.update_from(
        Some(&Counters::default()),
        Some(&PipelineStats::default()),
        Some(&replay),
    );
    let mut c = Comparator::new(&["app-v2".into()], Duration::from_secs(5), 16);
    let primary = PrimarySide {
        status: 200,
        latency: Duration::from_millis(3),
    };
    c.on_primary((1, 0), primary, 0);
    let side = MirrorSide::Answered {
        status: 500,
        latency: Duration::from_millis(9),
    };
    let verdict = c.on_mirror((1, 0), 0, side, 1).unwrap();
    let snap: CompareSnapshot = c.snapshot();
    t.update_compare(Some(&snap));
    let rec = t.recorder();
    rec.record(
        "app-v2",
        "GET",
        RequestResult::Status(200),
        Duration::from_millis(2),
        "10.0.0.5",
    );
    // What the comparison tells its subscriber (telemetry) in a run.
    let subscriber = t.compare_subscriber();
    subscriber.verdict("app-v2", &verdict);
    subscriber.primary_exchange("GET", 200, Duration::from_millis(1), "10.0.0.2");
    t.render_prometheus()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn extracts_metric_names_from_promql() {
    let n = metric_names(
        r#"histogram_quantile(0.99, sum by (le, mirror_name) (rate(a_bucket{x="y", z=~"$m"}[$__rate_interval]))) / on (job) group_left(instance) b_total + sum without (le) (c)"#,
    );
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_total", "c"]
    );
    assert_eq!(
        metric_names("label_values(mirror_requests_sent_total, mirror_name)")
            .into_iter()
            .collect::<Vec<_>>(),
        ["mirror_requests_sent_total"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_name_only_exported_metrics() {
    let d = dashboard();
    let qs = queries(&d);
    assert!(qs.len() >= 20, "{} queries", qs.len());
    let exported = exported().await;
    let mut used = BTreeSet::new();
    for q in &qs {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric in `{q}`");
        used.extend(names);
    }
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "dashboard uses metrics the agent does not export: {missing:?}\nexported: {exported:?}"
    );
    // The issue's panels: per-mirror rate, errors, latency next to the primary's, mismatches,
    // drops, completeness.
    for needed in [
        "mirror_requests_sent_total",
        "mirror_requests_errors_total",
        "http_client_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_bucket",
        "mirror_compare_mismatches_total",
        "mirror_requests_dropped_total",
        "mirror_kernel_packets_dropped_total",
        "mirror_completeness_ratio",
    ] {
        assert!(used.contains(needed), "no panel uses {needed}");
    }
}

/// A real Prometheus parses every query (Grafana variables substituted).
#[test]
fn dashboard_queries_parse_in_prometheus() {
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let Some(prom) = Prometheus::start(unused) else {
        return;
    };
    let qs = queries(&dashboard());
    let start = std::time::Instant::now();
    for q in qs {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$mirror", ".*");
        let q = match q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            Some(inner) => inner.split(',').next().unwrap().to_string(),
            None => q,
        };
        // Prometheus needs a moment to open its API; `query` panics on a rejected query.
        loop {
            if prom.query(&q).is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "prometheus API never answered"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
