//! Primary vs mirror through the real replay path: a mirror that answers 500 to one path
//! produces exactly one status-class mismatch; the others compare equal; every compared copy
//! has a latency difference; the counters reach the Prometheus text.

#[path = "replay_common/mod.rs"]
mod replay_common;

use std::sync::Arc;
use std::time::Duration;

use mirror_agent::replay::Replayer;
use mirror_agent::telemetry::compare::{CompareHub, PrimarySide};
use mirror_agent::telemetry::{Telemetry, TelemetryConfig};
use replay_common::{Behavior, TestMirror, captured, config, finish, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_on_one_path_is_exactly_one_mismatch() {
    let telemetry = Telemetry::start(TelemetryConfig::default()).await.unwrap();
    let mirror = TestMirror::start(Behavior::Script(Arc::new(|req| {
        let status = if req.target == "/fail" {
            "500 Oops"
        } else {
            "200 OK"
        };
        (
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
            false,
        )
    })))
    .await;
    let hub = CompareHub::new(
        vec!["app-v2".into()],
        Duration::from_secs(30),
        1024,
        Some(telemetry.recorder()),
    );
    let mut cfg = config(vec![mirror.spec("app-v2", 100.0)]);
    cfg.telemetry = Some(telemetry.recorder());
    cfg.compare = Some(hub.clone());
    let replayer = Replayer::start(cfg);

    // One keep-alive connection with three pipelined requests: keys (1, 0), (1, 1), (1, 2).
    let reqs = captured(
        b"GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /fail HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\r\nHost: s\r\n\r\n",
    );
    assert_eq!(reqs.len(), 3);
    let ok = PrimarySide {
        status: 200,
        latency: Duration::from_millis(1),
    };
    // The primary's response arrives before the copy for the first request, after for the rest.
    hub.primary((1, 0), ok);
    for r in &reqs {
        replayer.submit(r);
    }
    wait_until("three copies answered", Duration::from_secs(5), || {
        replayer.snapshot().mirrors[0].answered() == 3
    })
    .await;
    finish(&replayer).await;
    hub.primary((1, 1), ok);
    hub.primary((1, 2), ok);

    let snap = hub.snapshot();
    let m = &snap.mirrors[0];
    assert_eq!(m.compared, 3, "{snap:?}");
    assert_eq!((m.status_class, m.status_code, m.no_response), (1, 0, 0));
    assert_eq!(m.primary_missing, 0);

    telemetry.update_compare(Some(&snap));
    let text = telemetry.render_prometheus();
    for line in [
        "mirror_compare_mismatches_total{mirror_name=\"app-v2\",kind=\"status_class\"} 1",
        "mirror_compare_requests_total{mirror_name=\"app-v2\"} 3",
        "mirror_compare_latency_difference_seconds_count{mirror_name=\"app-v2\"} 3",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}
