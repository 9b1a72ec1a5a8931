//! End to end through the real replay path: a `Replayer` with the telemetry recorder sends
//! copies to a loopback mirror; the mirror receives a `traceparent` that is a child of the
//! exported mirror span (every other byte as the client sent it), the span reaches a real OTLP
//! receiver with a link to the client's trace, and the duration histogram counts every copy.

mod replay_common;
mod telemetry_common;

use std::time::Duration;

use mirror_agent::replay::{ConnectionHooks, Replayer};
use mirror_agent::telemetry::{OtlpProtocol, Telemetry};
use replay_common::{Behavior, TestMirror, config, finish, one, wait_until};
use telemetry_common::otlp::{Receiver, wait};

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_copies_carry_child_trace_context() {
    let receiver = Receiver::grpc().await;
    let telemetry = Telemetry::start(telemetry_common::otlp_only(
        receiver.url(),
        OtlpProtocol::Grpc,
    ))
    .await
    .unwrap();
    let mirror = TestMirror::start(Behavior::Ok).await;
    let cfg = config(vec![mirror.spec("app-v2", 100.0)]);
    let observer = telemetry.replay_observer(&cfg.mirrors);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), observer);

    let traced = format!(
        "POST /pay HTTP/1.1\r\nHost: shop\r\nTraceParent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01\r\ntracestate: congo=t61rcWkgMzE\r\nContent-Length: 3\r\n\r\nabc"
    );
    let plain = "GET /health HTTP/1.1\r\nHost: shop\r\n\r\n";
    replayer.submit(&one(traced.as_bytes()));
    replayer.submit(&one(plain.as_bytes()));
    wait_until("both copies arrive", Duration::from_secs(5), || {
        mirror.count() == 2
    })
    .await;
    finish(&replayer).await;
    telemetry.flush().await;
    wait("two spans", Duration::from_secs(10), || {
        receiver.spans().len() == 2
    })
    .await;

    let spans = receiver.spans();
    let post = spans.iter().find(|s| s.name == "POST").expect("POST span");
    assert_eq!(post.links.len(), 1);
    assert_eq!(hex(&post.links[0].trace_id), CLIENT_TRACE);
    assert_eq!(hex(&post.links[0].span_id), CLIENT_SPAN);
    let got = mirror.received();
    let post_raw = got
        .iter()
        .find(|r| r.method() == "POST")
        .map(|r| String::from_utf8_lossy(&r.raw).to_string())
        .unwrap();
    let child = format!("00-{}-{}-01", hex(&post.trace_id), hex(&post.span_id));
    assert_eq!(
        post_raw,
        traced.replace(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), &child),
        "only the traceparent value differs"
    );
    let get_raw = got.iter().find(|r| r.method() == "GET").unwrap();
    assert_eq!(
        &get_raw.raw[..],
        plain.as_bytes(),
        "no trace context: untouched"
    );

    let text = telemetry.render_prometheus();
    // One series per method: POST and GET, each answered 200.
    let count = |method: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("http_client_request_duration_seconds_count")
                    && l.contains("http_response_status_code=\"200\"")
                    && l.contains(&format!("http_request_method=\"{method}\""))
                    && l.contains("mirror_name=\"app-v2\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!((count("POST"), count("GET")), (1, 1), "{text}");
    telemetry.shutdown().await;
}
