//! Shared by the telemetry integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod otlp;
pub mod prometheus;

use std::time::Duration;

use mirror_agent::telemetry::{OtlpConfig, OtlpProtocol, TelemetryConfig, TraceparentMode};

/// OTLP (metrics and spans) to `endpoint`, no Prometheus endpoint, `traceparent` rewritten.
/// The export interval is long: tests flush explicitly (or shut down), so what arrives is what
/// that flush sent.
pub fn otlp_only(endpoint: String, protocol: OtlpProtocol) -> TelemetryConfig {
    TelemetryConfig {
        metrics_addr: None,
        otlp: Some(OtlpConfig {
            endpoint: Some(endpoint),
            protocol,
            export_interval: Some(Duration::from_secs(3600)),
            service_name: None,
            traces: true,
        }),
        traceparent: TraceparentMode::Rewrite,
    }
}
