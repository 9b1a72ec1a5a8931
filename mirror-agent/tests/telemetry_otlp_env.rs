//! The standard `OTEL_*` variables alone configure the export (no flags): endpoint, protocol,
//! export interval and service name. One test in its own binary, because it sets the
//! process environment before any other thread reads it.

mod telemetry_common;

use std::time::Duration;

use mirror_agent::replay::stats::{MirrorStats, ReplayStats};
use mirror_agent::telemetry::Telemetry;
use telemetry_common::otlp::{Receiver, attr, points, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_environment_variables_are_honoured() {
    let receiver = Receiver::grpc().await;
    // SAFETY: the only test of this binary; set before the SDK or any exporter thread starts.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url());
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "300");
        std::env::set_var("OTEL_SERVICE_NAME", "node-7-agent");
    }
    // No telemetry flag: everything comes from the environment, read by the agent's config.
    let cli = <mirror_agent::cli::Cli as clap::Parser>::try_parse_from(["mirror-agent"]).unwrap();
    let cfg = mirror_agent::config::telemetry::build(&cli.run.telemetry)
        .expect("config from the environment");
    assert!(
        cfg.otlp.is_some(),
        "OTEL_EXPORTER_OTLP_ENDPOINT turns OTLP on"
    );
    let telemetry = Telemetry::start(cfg).await.expect("telemetry starts");
    let stats = ReplayStats::new(vec![std::sync::Arc::new(MirrorStats::new(
        "app-v3".into(),
        50.0,
        0.5,
    ))]);
    telemetry.update_from(None, None, Some(&stats.snapshot()));
    // No explicit flush: the periodic reader exports on its own (300 ms).
    wait("a periodic export", Duration::from_secs(10), || {
        !receiver.metrics_named("mirror.requests.sampled").is_empty()
    })
    .await;
    let m = receiver.metrics_named("mirror.requests.sampled").remove(0);
    let (a, v) = points(&m).remove(0);
    assert_eq!(attr(&a, "mirror.name").as_deref(), Some("app-v3"));
    assert_eq!(v, 0.0);
    assert!(
        receiver.service_names().iter().all(|n| n == "node-7-agent"),
        "{:?}",
        receiver.service_names()
    );
    telemetry.shutdown().await;
}
