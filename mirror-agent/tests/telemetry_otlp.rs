//! OTLP export to a real receiver in the test (official OTLP protobuf definitions over real
//! gRPC and HTTP): the mirror metrics, the duration histogram and the mirror spans arrive with
//! the right names and attributes, and a span links to the client's trace.

mod telemetry_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mirror_agent::replay::stats::{MirrorStats, Outcome, ReplayStats, Ticket};
use mirror_agent::telemetry::{OtlpProtocol, RequestResult, Telemetry};
use telemetry_common::otlp::{Receiver, attr, points, wait};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Real replay counters: 4 answered copies for app-v2.
fn replay_snapshot() -> mirror_agent::replay::stats::ReplaySnapshot {
    let m = Arc::new(MirrorStats::new("app-v2".into(), 100.0, 1.0));
    let stats = ReplayStats::new(vec![m.clone()]);
    for _ in 0..4 {
        Ticket::new(m.clone()).resolve(Outcome::Answered {
            status: 200,
            latency: Duration::from_millis(2),
            grpc_status: None,
        });
    }
    stats.snapshot()
}

async fn start(receiver: &Receiver, protocol: OtlpProtocol) -> Telemetry {
    Telemetry::start(telemetry_common::otlp_only(receiver.url(), protocol))
        .await
        .expect("telemetry starts")
}

async fn metrics_arrive(protocol: OtlpProtocol, receiver: Receiver) {
    let telemetry = start(&receiver, protocol).await;
    telemetry.update_from(None, None, Some(&replay_snapshot()));
    telemetry.recorder().record(
        "app-v2",
        "POST",
        RequestResult::Status(503),
        Duration::from_millis(12),
        "10.0.0.5",
    );
    telemetry.flush().await;
    wait("mirror.requests.responses", Duration::from_secs(10), || {
        !receiver
            .metrics_named("mirror.requests.responses")
            .is_empty()
    })
    .await;

    let m = receiver
        .metrics_named("mirror.requests.responses")
        .remove(0);
    assert_eq!(m.unit, "{request}");
    let two = points(&m)
        .into_iter()
        .find(|(a, _)| attr(a, "http.response.status_class").as_deref() == Some("2xx"))
        .expect("2xx point");
    assert_eq!(attr(&two.0, "mirror.name").as_deref(), Some("app-v2"));
    assert_eq!(two.1, 4.0);
    match &m.data {
        Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
            assert!(s.is_monotonic, "a counter");
            assert_eq!(s.aggregation_temporality, 2, "cumulative");
        }
        other => panic!("expected a Sum: {other:?}"),
    }

    let h = receiver.metrics_named("http.client.request.duration");
    let h = h.first().expect("duration histogram exported");
    assert_eq!(h.unit, "s");
    let (a, count) = points(h).remove(0);
    assert_eq!(count, 1.0);
    assert_eq!(attr(&a, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(&a, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attr(&a, "server.address").as_deref(), Some("10.0.0.5"));
    assert_eq!(attr(&a, "mirror.name").as_deref(), Some("app-v2"));
    assert!(receiver.service_names().iter().all(|n| n == "mirror-agent"));
    assert!(!receiver.service_names().is_empty());
    let exports = telemetry.otlp_snapshot().expect("OTLP is on");
    assert!(exports.metric_exports_ok >= 1, "{exports:?}");
    assert_eq!(exports.metric_exports_failed, 0, "{exports:?}");
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_grpc() {
    metrics_arrive(OtlpProtocol::Grpc, Receiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_http_protobuf() {
    let receiver = Receiver::http().await;
    let got = receiver.got.clone();
    metrics_arrive(OtlpProtocol::HttpProtobuf, receiver).await;
    let reqs = got.http_requests.lock().unwrap().clone();
    assert!(
        reqs.iter()
            .any(|(p, ct)| p == "/v1/metrics" && ct == "application/x-protobuf"),
        "{reqs:?}"
    );
}

async fn span_links_to_client(protocol: OtlpProtocol, receiver: Receiver) {
    let telemetry = start(&receiver, protocol).await;
    let recorder = telemetry.recorder();
    let raw = Bytes::from(format!(
        "GET /orders/42?full=1 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\nX-B: 2\r\n\r\n"
    ));
    let mut copy = telemetry_common::copy(&raw);
    let flight = recorder.start("app-v2", "10.0.0.5", Some(8080), &mut copy);
    let sent = copy.bytes;
    flight.finish(&Outcome::Answered {
        status: 200,
        latency: Duration::from_millis(4),
        grpc_status: None,
    });
    // A copy without trace context: a span without links, bytes untouched.
    let plain = Bytes::from_static(b"DELETE /x HTTP/1.1\r\nHost: shop\r\n\r\n");
    let mut copy = telemetry_common::copy(&plain);
    let flight = recorder.start("app-v2", "10.0.0.5", Some(8080), &mut copy);
    let plain_sent = copy.bytes;
    flight.finish(&Outcome::Timeout);
    assert_eq!(plain_sent, plain);
    // A gRPC call sent over HTTP/2, answered with grpc-status 14: the RPC attributes.
    let call = Bytes::from_static(
        b"POST /shop.Orders/Get HTTP/1.1\r\nHost: shop\r\ncontent-type: application/grpc\r\n\
          te: trailers\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0",
    );
    let mut copy = telemetry_common::copy(&call);
    copy.head.over_h2 = true;
    let flight = recorder.start("app-v2", "10.0.0.5", Some(8080), &mut copy);
    flight.finish(&Outcome::Answered {
        status: 200,
        latency: Duration::from_millis(2),
        grpc_status: Some(14),
    });
    telemetry.flush().await;
    wait("three spans", Duration::from_secs(10), || {
        receiver.spans().len() >= 3
    })
    .await;

    let spans = receiver.spans();
    let get = spans.iter().find(|s| s.name == "GET").expect("GET span");
    assert_eq!(get.kind, 3, "SPAN_KIND_CLIENT");
    assert!(
        get.parent_span_id.is_empty(),
        "a root span of its own trace"
    );
    assert_ne!(hex(&get.trace_id), CLIENT_TRACE);
    assert_eq!(get.links.len(), 1);
    assert_eq!(hex(&get.links[0].trace_id), CLIENT_TRACE);
    assert_eq!(hex(&get.links[0].span_id), CLIENT_SPAN);
    let a = &get.attributes;
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(a, "url.path").as_deref(), Some("/orders/42"));
    assert_eq!(attr(a, "server.address").as_deref(), Some("10.0.0.5"));
    assert_eq!(attr(a, "server.port").as_deref(), Some("8080"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "mirror.name").as_deref(), Some("app-v2"));
    assert_eq!(attr(a, "network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(attr(a, "rpc.system"), None, "not a gRPC call");
    let rpc = spans.iter().find(|s| s.name == "POST").expect("POST span");
    let r = &rpc.attributes;
    assert_eq!(attr(r, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(r, "rpc.service").as_deref(), Some("shop.Orders"));
    assert_eq!(attr(r, "rpc.method").as_deref(), Some("Get"));
    assert_eq!(attr(r, "rpc.grpc.status_code").as_deref(), Some("14"));
    assert_eq!(attr(r, "network.protocol.version").as_deref(), Some("2"));

    // The mirror got a child of our span, and every other byte as the client sent it.
    let child = format!(
        "traceparent: 00-{}-{}-01\r\n",
        hex(&get.trace_id),
        hex(&get.span_id)
    );
    let expected = String::from_utf8_lossy(&raw).replace(
        &format!("traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\n"),
        &child,
    );
    assert_eq!(String::from_utf8_lossy(&sent), expected);

    let del = spans
        .iter()
        .find(|s| s.name == "DELETE")
        .expect("DELETE span");
    assert!(del.links.is_empty());
    assert_eq!(
        attr(&del.attributes, "error.type").as_deref(),
        Some("timeout")
    );
    assert_eq!(
        del.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
    let exports = telemetry.otlp_snapshot().expect("OTLP is on");
    assert_eq!(
        (
            exports.spans_started,
            exports.spans_exported,
            exports.spans_failed
        ),
        (3, 3, 0),
        "{exports:?}"
    );
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_grpc_link_to_the_client_trace() {
    span_links_to_client(OtlpProtocol::Grpc, Receiver::grpc().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_over_http_protobuf_link_to_the_client_trace() {
    span_links_to_client(OtlpProtocol::HttpProtobuf, Receiver::http().await).await;
}

/// A collector that is down: every export fails, and the failures are counted (and exported on
/// `/metrics`), not only logged.
async fn collector_down(protocol: OtlpProtocol) {
    // A loopback port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let telemetry = Telemetry::start(telemetry_common::otlp_only(
        format!("http://127.0.0.1:{port}"),
        protocol,
    ))
    .await
    .expect("telemetry starts even when the collector is down");
    let raw = Bytes::from_static(b"GET /x HTTP/1.1\r\nHost: shop\r\n\r\n");
    let flight = telemetry.recorder().start(
        "app-v2",
        "10.0.0.5",
        Some(8080),
        &mut telemetry_common::copy(&raw),
    );
    flight.finish(&Outcome::Timeout);
    telemetry.flush().await;
    let exports = telemetry.otlp_snapshot().expect("OTLP is on");
    assert_eq!(exports.metric_exports_ok, 0, "{exports:?}");
    assert!(exports.metric_exports_failed >= 1, "{exports:?}");
    assert_eq!(
        (exports.spans_started, exports.spans_failed),
        (1, 1),
        "{exports:?}"
    );
    telemetry.update_from(None, None, None);
    let text = telemetry.render_prometheus();
    let failed = text
        .lines()
        .find(|l| l.starts_with("mirror_otlp_exports_total{") && l.contains("outcome=\"failed\""))
        .unwrap_or_else(|| panic!("no failed-export series in:\n{text}"));
    assert!(!failed.ends_with(" 0"), "{failed}");
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_grpc_failures_are_counted() {
    collector_down(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_http_failures_are_counted() {
    collector_down(OtlpProtocol::HttpProtobuf).await;
}

// `--threads 1`: the live agent's runtime is a current-thread one, so the OTLP channel's tasks
// run on the same thread as everything else while the SDK's export thread waits on them.

#[tokio::test(flavor = "current_thread")]
async fn metrics_over_grpc_on_a_current_thread_runtime() {
    metrics_arrive(OtlpProtocol::Grpc, Receiver::grpc().await).await;
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_over_http_protobuf_on_a_current_thread_runtime() {
    metrics_arrive(OtlpProtocol::HttpProtobuf, Receiver::http().await).await;
}

#[tokio::test(flavor = "current_thread")]
async fn spans_over_grpc_on_a_current_thread_runtime() {
    span_links_to_client(OtlpProtocol::Grpc, Receiver::grpc().await).await;
}
