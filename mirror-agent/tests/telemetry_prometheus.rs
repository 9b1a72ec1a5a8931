//! A real Prometheus scrapes the agent's `--metrics-addr` endpoint and the test reads the
//! mirror metrics back through Prometheus's HTTP API. The values come from a real replay run:
//! a loopback mirror server receiving copies from a real `Replayer`.

mod replay_common;
mod telemetry_common;

use std::time::Duration;

use mirror_agent::pipeline::PipelineStats;
use mirror_agent::replay::spec::MirrorSpec;
use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use mirror_agent::telemetry::{RequestResult, Telemetry, TelemetryConfig};
use replay_common::{Behavior, TestMirror, config, one, wait_until};
use telemetry_common::prometheus::{Prometheus, value};

const REQUESTS: u64 = 5;

fn get(url: &str) -> (u16, String) {
    let r = reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn prometheus_scrapes_mirror_metrics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let telemetry = rt
        .block_on(Telemetry::start(TelemetryConfig {
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        }))
        .expect("telemetry starts");
    let addr = telemetry.metrics_addr().unwrap();

    // Health before anything is attached: alive, not ready.
    assert_eq!(get(&format!("http://{addr}/healthz")).0, 200);
    assert_eq!(get(&format!("http://{addr}/readyz")).0, 503);
    telemetry.set_ready(true);
    assert_eq!(get(&format!("http://{addr}/readyz")).0, 200);
    assert_eq!(get(&format!("http://{addr}/nope")).0, 404);

    // A real replay run to a loopback mirror.
    let snapshot = rt.block_on(async {
        let mirror = TestMirror::start(Behavior::Ok).await;
        let spec = MirrorSpec {
            name: "app-v2".into(),
            host: "127.0.0.1".into(),
            port: mirror.addr.port(),
            percent: 100.0,
            tls: None,
            role: Default::default(),
            protocol: Default::default(),
        };
        let replayer = Replayer::start(config(vec![spec]), ConnectionHooks::default(), NoObserver);
        for _ in 0..REQUESTS {
            replayer.submit(&one(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n"));
        }
        wait_until("mirror answered every copy", Duration::from_secs(5), || {
            replayer.snapshot().mirrors[0].status[1] == REQUESTS
        })
        .await;
        replayer.snapshot()
    });
    let pipeline = PipelineStats {
        requests: REQUESTS,
        flows: 1,
        flows_active: 1,
        ..Default::default()
    };
    telemetry.update_from(None, Some(&pipeline), Some(&snapshot));
    let rec = telemetry.recorder();
    for _ in 0..REQUESTS {
        rec.record(
            "app-v2",
            "GET",
            RequestResult::Status(200),
            Duration::from_millis(3),
            "127.0.0.1",
        );
    }
    rec.record(
        "app-v2",
        "GET",
        RequestResult::Error("timeout"),
        Duration::from_millis(300),
        "127.0.0.1",
    );

    // The endpoint itself.
    let (status, text) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(
            "mirror_requests_sent_total{{mirror_name=\"app-v2\"}} {REQUESTS}"
        )),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    let Some(prom) = Prometheus::start(addr) else {
        return;
    };
    let limit = Duration::from_secs(20);
    let s = prom.wait_for(
        "mirror_requests_sent_total{mirror_name=\"app-v2\"}",
        limit,
        |s| value(s) == REQUESTS as f64,
    );
    assert_eq!(s["metric"]["job"], "mirror-agent");
    let s = prom.wait_for(
        "mirror_requests_responses_total{mirror_name=\"app-v2\",http_response_status_class=\"2xx\"}",
        limit,
        |_| true,
    );
    assert_eq!(value(&s), REQUESTS as f64);
    let s = prom.wait_for(
        "http_client_request_duration_seconds_count{mirror_name=\"app-v2\",http_response_status_code=\"200\"}",
        limit,
        |_| true,
    );
    assert_eq!(value(&s), REQUESTS as f64);
    assert_eq!(s["metric"]["http_request_method"], "GET");
    assert_eq!(s["metric"]["server_address"], "127.0.0.1");
    let s = prom.wait_for(
        "http_client_request_duration_seconds_count{error_type=\"timeout\"}",
        limit,
        |_| true,
    );
    assert_eq!(value(&s), 1.0);
    let s = prom.wait_for("mirror_completeness_ratio", limit, |_| true);
    assert_eq!(value(&s), 1.0);
    let s = prom.wait_for("mirror_http_requests_total", limit, |_| true);
    assert_eq!(value(&s), REQUESTS as f64);
    drop(prom);
    drop(telemetry);
}
