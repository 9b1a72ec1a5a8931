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

/// One mirror copy of the single request in `raw`, framed by the agent's own request framer
/// (so the trace fields are where the framer puts them), bytes as captured.
pub fn copy(raw: &[u8]) -> mirror_agent::replay::MirrorCopy {
    use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};
    let mut framer = RequestFramer::new(HttpLimits::default(), false);
    let mut events = Vec::new();
    framer.push(&bytes::Bytes::copy_from_slice(raw), 1, &mut events);
    framer.finish(&mut events);
    let Some(RequestEvent::Request(request)) = events.into_iter().next() else {
        panic!("test input is not one request");
    };
    let captured = mirror_agent::pipeline::CapturedRequest {
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        flow_id: 1,
        seq_in_flow: 0,
        request,
    };
    mirror_agent::replay::MirrorCopy {
        bytes: captured.request.raw.clone(),
        trace: captured.request.trace.clone(),
        head: mirror_agent::replay::CopyHead::of(&captured),
    }
}
