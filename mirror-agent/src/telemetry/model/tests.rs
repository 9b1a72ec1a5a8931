use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::replay::stats::{MirrorStats, Outcome, ReplayStats, Ticket};

fn replay_snapshot() -> ReplaySnapshot {
    let a = Arc::new(MirrorStats::new("app-v2".into(), 100.0, 1.0));
    let b = Arc::new(MirrorStats::new("app-v3".into(), 50.0, 0.5));
    let stats = ReplayStats::new(vec![a.clone(), b.clone()]);
    let lat = std::time::Duration::from_millis(2);
    let outcomes = [
        Outcome::Answered {
            status: 200,
            latency: lat,
            grpc_status: None,
        },
        Outcome::Answered {
            status: 503,
            latency: lat,
            grpc_status: None,
        },
        Outcome::Error(ErrorKind::Io),
        Outcome::Timeout,
        Outcome::Dropped(DropReason::QueueFull),
    ];
    for o in outcomes {
        Ticket::new(a.clone()).resolve(o);
    }
    Ticket::new(b.clone()).resolve(Outcome::Dropped(DropReason::Filtered));
    a.on_grpc_status(0);
    a.on_grpc_status(14);
    for _ in 0..6 {
        stats.on_submitted(1);
    }
    for _ in 0..3 {
        a.on_sent();
    }
    stats.snapshot()
}

pub(super) fn all() -> Snapshots {
    let mut ps = PipelineStats {
        requests: 7,
        flows: 3,
        flows_active: 1,
        ..Default::default()
    };
    ps.client.gaps_timeout = 2;
    ps.request_drops.malformed.count = 4;
    ps.request_drops.after_te_and_cl.count = 5;
    Snapshots {
        kernel: Some(Counters {
            seen: 100,
            matched: 90,
            ring_full: 3,
            malformed_records: 2,
            tls: Some(crate::capture::ebpf::tls::TlsCounters {
                kernel: crate::capture::ebpf::tls::TlsKernelCounters {
                    calls: 11,
                    client_side: 4,
                    ..Default::default()
                },
                processes: vec![crate::capture::ebpf::tls::TlsProcess {
                    pid: 42,
                    name: "nginx".into(),
                    connections: 3,
                    plaintext_bytes: 900,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        pipeline: Some(ps),
        replay: Some(replay_snapshot()),
        compare: Some(crate::compare::CompareSnapshot {
            mirrors: vec![crate::compare::MirrorCompare {
                name: "app-v2".into(),
                compared: 3,
                status_class: 1,
                body: 1,
                ..Default::default()
            }],
            diff_log: crate::compare::difflog::DiffLogStats {
                lines: 2,
                suppressed: 5,
                errors: 0,
            },
            endpoints: [(
                ("GET /users/{n}".to_string(), 0),
                crate::compare::EndpointCounts {
                    compared: 3,
                    real: 1,
                    noise_only: 1,
                },
            )]
            .into_iter()
            .collect(),
            noise: Some(crate::compare::NoiseSnapshot {
                baseline: "app-v1b".into(),
                endpoints: vec![crate::compare::noise::EndpointFields {
                    endpoint: "GET /users/{n}".into(),
                    fields: vec![("header:x-host".into(), 3)],
                }],
                losses: Default::default(),
            }),
            ..Default::default()
        }),
        otlp: Some(crate::telemetry::export_stats::ExportSnapshot {
            metric_exports_ok: 4,
            metric_exports_failed: 1,
            spans_started: 9,
            spans_exported: 6,
            spans_failed: 2,
        }),
        outputs: vec![(
            "record",
            crate::output_queue::OutputSnapshot {
                submitted: 20,
                written: 12,
                dropped_queue_full: 5,
                dropped_write_error: 0,
                dropped_at_exit: 2,
                queued: 1,
                queued_bytes: 300,
            },
        )],
    }
}

#[test]
fn output_threads_export_written_and_drops_by_reason() {
    let s = all();
    let w = |n, a: &[(&str, &str)]| value(&s, n, a);
    assert_eq!(
        w("mirror.output.items.written", &[("output", "record")]),
        Some(12.0)
    );
    for (reason, n) in [("queue_full", 5.0), ("write_error", 0.0), ("at_exit", 2.0)] {
        assert_eq!(
            w(
                "mirror.output.items.dropped",
                &[("output", "record"), ("reason", reason)]
            ),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(
        w("mirror.output.queue.size", &[("output", "record")]),
        Some(300.0)
    );
}

fn value(s: &Snapshots, name: &str, attrs: &[(&str, &str)]) -> Option<f64> {
    let def = DEFS.iter().find(|d| d.name == name).expect(name);
    def.points(s)
        .into_iter()
        .find(|p| {
            attrs
                .iter()
                .all(|(k, v)| p.attrs.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .map(|p| p.value.as_f64())
}

#[test]
fn otlp_export_outcomes() {
    let s = all();
    let v = |name, attrs: &[(&str, &str)]| value(&s, name, attrs);
    assert_eq!(
        v("mirror.otlp.exports", &[("outcome", "failed")]),
        Some(1.0)
    );
    assert_eq!(v("mirror.otlp.exports", &[("outcome", "ok")]), Some(4.0));
    assert_eq!(v("mirror.otlp.spans", &[("outcome", "started")]), Some(9.0));
    assert_eq!(v("mirror.otlp.spans", &[("outcome", "failed")]), Some(2.0));
    let none = Snapshots::default();
    assert_eq!(
        value(&none, "mirror.otlp.spans", &[]),
        None,
        "absent without OTLP"
    );
}

#[test]
fn names_are_unique_and_prometheus_safe() {
    let mut seen = HashSet::new();
    for d in DEFS {
        assert!(seen.insert(d.name), "duplicate {}", d.name);
        assert!(d.name.starts_with("mirror."), "{}", d.name);
        let p = d.prometheus_name();
        assert!(
            p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{p}"
        );
        // OpenMetrics reserves these suffixes for the series of one family.
        let base = prometheus_base(d.name);
        for bad in ["_created", "_total", "_info", "_bucket", "_count", "_sum"] {
            assert!(!base.ends_with(bad), "{base} ends with {bad}");
        }
    }
}

#[test]
fn prometheus_names_follow_the_otel_mapping() {
    let find = |n: &str| DEFS.iter().find(|d| d.name == n).unwrap().prometheus_name();
    assert_eq!(
        find("mirror.kernel.packets.dropped"),
        "mirror_kernel_packets_dropped_total"
    );
    assert_eq!(
        find("mirror.reassembly.gap.size"),
        "mirror_reassembly_gap_size_bytes_total"
    );
    assert_eq!(find("mirror.completeness"), "mirror_completeness_ratio");
    assert_eq!(find("mirror.queue.depth"), "mirror_queue_depth");
}

#[test]
fn values_come_from_the_snapshots() {
    let s = all();
    assert_eq!(value(&s, "mirror.kernel.packets.seen", &[]), Some(100.0));
    assert_eq!(value(&s, "mirror.kernel.records.malformed", &[]), Some(2.0));
    assert_eq!(
        value(
            &s,
            "mirror.kernel.packets.dropped",
            &[("reason", "ring_full")]
        ),
        Some(3.0)
    );
    assert_eq!(value(&s, "mirror.http.requests", &[]), Some(7.0));
    // Which processes' TLS plaintext is read.
    assert_eq!(
        value(
            &s,
            "mirror.tls.process.connections",
            &[("process.pid", "42"), ("process.executable.name", "nginx")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(&s, "mirror.tls.calls", &[("result", "client_side")]),
        Some(4.0)
    );
    assert_eq!(
        value(
            &s,
            "mirror.reassembly.gaps",
            &[("direction", "client"), ("reason", "timeout")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            "mirror.http.request.parse_errors",
            &[("error.type", "malformed")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &s,
            "mirror.http.requests.unserved",
            &[("reason", "after_te_and_cl")]
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &s,
            "mirror.requests.responses",
            &[
                ("mirror.name", "app-v2"),
                ("http.response.status_class", "5xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "mirror.requests.dropped",
            &[("mirror.name", "app-v3"), ("reason", "filtered")]
        ),
        Some(1.0)
    );
}

#[test]
fn absent_stages_export_nothing() {
    let s = Snapshots::default();
    for d in DEFS {
        assert!(d.points(&s).is_empty(), "{} exported without data", d.name);
    }
}

/// The exported per-mirror series add up to `sampled`, as the replay identity says: nothing
/// the replay counts is missing from the metrics.
#[test]
fn per_mirror_series_account_for_every_sampled_copy() {
    let s = all();
    for m in &s.replay.as_ref().unwrap().mirrors {
        let sum_of = |name: &str| -> f64 {
            let def = DEFS.iter().find(|d| d.name == name).unwrap();
            def.points(&s)
                .iter()
                .filter(|p| p.attrs.contains(&("mirror.name", m.name.clone())))
                .map(|p| p.value.as_f64())
                .sum()
        };
        let parts = sum_of("mirror.requests.responses")
            + sum_of("mirror.requests.errors")
            + sum_of("mirror.requests.timeouts")
            + sum_of("mirror.requests.dropped")
            + sum_of("mirror.queue.depth");
        assert_eq!(parts, sum_of("mirror.requests.sampled"), "{}", m.name);
        assert!(parts > 0.0);
    }
    assert_eq!(
        value(&s, "mirror.completeness", &[("mirror.name", "app-v2")]),
        Some(0.5)
    );
}

#[test]
fn comparison_kinds_and_diff_log_counters() {
    let s = all();
    assert_eq!(
        value(
            &s,
            "mirror.compare.mismatches",
            &[("mirror.name", "app-v2"), ("kind", "body")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "mirror.compare.mismatches", &[("kind", "header")]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "mirror.compare.diff_log.suppressed", &[]),
        Some(5.0)
    );
    assert_eq!(value(&s, "mirror.compare.diff_log.lines", &[]), Some(2.0));
}

/// Each loss reason is exported under its own label with its own counter: every counter below
/// gets a value no other has, and each label must show exactly it (a reason mapped to another
/// reason's counter, or left at zero, fails here).
#[test]
fn every_loss_reason_is_exported_under_its_own_label() {
    let mut s = all();
    let k = s.kernel.as_mut().unwrap();
    k.ring_full = 31;
    k.load_error = 37;
    let t = &mut k.tls.as_mut().unwrap().kernel;
    (t.ring_full, t.close_lost, t.unmatched, t.read_errors) = (41, 43, 47, 53);
    let r = s.replay.as_mut().unwrap();
    r.mirrors[0].tls_failures = [59, 61, 67];
    let c = s.compare.as_mut().unwrap();
    (c.captures_over_budget, c.content_queue_full) = (71, 73);
    (c.evicted, c.primary_unmatched) = (79, 83);
    (c.primary_requests_evicted, c.primary_responses_unknown) = (89, 97);
    c.mirrors[0].primary_missing = 101;
    let losses = &mut c.noise.as_mut().unwrap().losses;
    (losses.endpoints_full, losses.fields_full) = (103, 107);
    // A metric, the attributes of one of its points, and the value it must show.
    type Expectation = (&'static str, &'static [(&'static str, &'static str)], f64);
    let expected: &[Expectation] = &[
        (
            "mirror.kernel.packets.dropped",
            &[("reason", "ring_full")],
            31.0,
        ),
        (
            "mirror.kernel.packets.dropped",
            &[("reason", "load_error")],
            37.0,
        ),
        ("mirror.tls.lost", &[("reason", "ring_full")], 41.0),
        ("mirror.tls.lost", &[("reason", "close")], 43.0),
        ("mirror.tls.lost", &[("reason", "unmatched")], 47.0),
        ("mirror.tls.lost", &[("reason", "read_error")], 53.0),
        (
            "mirror.tls.handshake_failures",
            &[("mirror.name", "app-v2"), ("reason", "certificate")],
            59.0,
        ),
        (
            "mirror.tls.handshake_failures",
            &[("mirror.name", "app-v2"), ("reason", "alert")],
            61.0,
        ),
        (
            "mirror.tls.handshake_failures",
            &[("mirror.name", "app-v2"), ("reason", "other")],
            67.0,
        ),
        (
            "mirror.compare.captures_dropped",
            &[("reason", "over_budget")],
            71.0,
        ),
        (
            "mirror.compare.captures_dropped",
            &[("reason", "queue_full")],
            73.0,
        ),
        ("mirror.compare.unpaired", &[("reason", "evicted")], 79.0),
        (
            "mirror.compare.unpaired",
            &[("reason", "primary_only")],
            83.0,
        ),
        (
            "mirror.compare.unpaired",
            &[("reason", "request_evicted")],
            89.0,
        ),
        (
            "mirror.compare.unpaired",
            &[("reason", "response_unknown")],
            97.0,
        ),
        (
            "mirror.compare.unpaired",
            &[("mirror.name", "app-v2"), ("reason", "primary_missing")],
            101.0,
        ),
        (
            "mirror.compare.noise.not_learned",
            &[("reason", "endpoints_full")],
            103.0,
        ),
        (
            "mirror.compare.noise.not_learned",
            &[("reason", "fields_full")],
            107.0,
        ),
    ];
    for (name, attrs, want) in expected {
        assert_eq!(value(&s, name, attrs), Some(*want), "{name} {attrs:?}");
    }
    // And every point of these metrics is one of the above: no reason left untested.
    let names: HashSet<&str> = expected.iter().map(|(n, _, _)| *n).collect();
    for name in names {
        let def = DEFS.iter().find(|d| d.name == name).unwrap();
        for point in def.points(&s) {
            let is_app_v3 = point.attrs.contains(&("mirror.name", "app-v3".to_string()));
            assert!(
                is_app_v3
                    || expected.iter().any(|(n, a, v)| *n == name
                        && *v == point.value.as_f64()
                        && a.iter().all(|(k, val)| point
                            .attrs
                            .iter()
                            .any(|(pk, pv)| pk == k && pv == val))),
                "{name}: a point no expectation covers: {:?}",
                point.attrs
            );
        }
    }
}
