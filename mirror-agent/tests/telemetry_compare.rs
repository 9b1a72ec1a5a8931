//! Primary vs mirror through the real replay path: a mirror that answers 500 to one path
//! produces exactly one status-class mismatch; the others compare equal; every compared copy
//! has a latency difference; the counters reach the Prometheus text.

mod replay_common;

use std::sync::Arc;
use std::time::Duration;

use mirror_agent::compare::{CompareHub, PrimarySide};
use mirror_agent::replay::{ConnectionHooks, Replayer};
use mirror_agent::telemetry::{ReplayTelemetry, Telemetry, TelemetryConfig};
use replay_common::{Behavior, TestMirror, captured, config, finish, wait_until};

/// A replayer to `mirror` (as `app-v2`, 100%) whose outcomes go to a comparison hub, set up by
/// `hub` (content comparison or not).
fn compared_replayer(
    telemetry: &Telemetry,
    mirror: &TestMirror,
    hub: impl FnOnce(CompareHub) -> CompareHub,
) -> (CompareHub, Replayer<(ReplayTelemetry, CompareHub)>) {
    let hub = hub(CompareHub::new(
        vec!["app-v2".into()],
        Duration::from_secs(30),
        1024,
        Some(telemetry.compare_subscriber()),
    ));
    let cfg = config(vec![mirror.spec("app-v2", 100.0)]);
    let observer = (telemetry.replay_observer(&cfg.mirrors), hub.clone());
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), observer);
    (hub, replayer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_on_one_path_is_exactly_one_mismatch() {
    let telemetry = Telemetry::start(TelemetryConfig::default()).await.unwrap();
    let mirror = TestMirror::start(Behavior::Script(Arc::new(|req| {
        let status = if req.target() == "/fail" {
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
    let (hub, replayer) = compared_replayer(&telemetry, &mirror, |h| h);

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

/// The primary's response to `target` as the pipeline would capture it: framed (with capture
/// on) from the bytes on the wire.
fn primary_capture(wire: &[u8]) -> mirror_agent::http::response::ResponseSample {
    use mirror_agent::http::request::HttpLimits;
    use mirror_agent::http::response::{ResponseEvent, ResponseFramer};
    let mut f = ResponseFramer::new(HttpLimits::default()).with_capture(Some(64 * 1024));
    let mut ev = Vec::new();
    f.push(wire, 1, &mut ev);
    match ev.pop() {
        Some(ResponseEvent::Final(r)) => *r.capture.expect("captured"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_bodies_through_the_replay_path() {
    use mirror_agent::compare::PrimaryInfo;
    use mirror_agent::compare::rules::CompareRules;
    let telemetry = Telemetry::start(TelemetryConfig::default()).await.unwrap();
    let big = "z".repeat(100_000);
    let big2 = big.clone();
    // The mirror answers in chunked coding: /same the primary's JSON with other spacing, /diff
    // one field different, /hdr a different Cache-Control, /big 100 kB (compared on a prefix).
    let mirror = TestMirror::start(Behavior::Script(Arc::new(move |req| {
        let (extra, body) = match req.target() {
            "/same" => ("", r#"{ "b": [1, 2], "a": "x" }"#.to_string()),
            "/diff" => ("", r#"{"a":"y","b":[1,2]}"#.to_string()),
            "/hdr" => (
                "Cache-Control: no-store\r\n",
                r#"{"a":"x","b":[1,2]}"#.to_string(),
            ),
            _ => ("", big2.clone()),
        };
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: now\r\n{extra}\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            false,
        )
    })))
    .await;
    let (hub, replayer) = compared_replayer(&telemetry, &mirror, |h| {
        h.with_content(CompareRules::default(), None)
    });
    let reqs = captured(
        b"GET /same HTTP/1.1\r\nHost: s\r\n\r\nGET /diff HTTP/1.1\r\nHost: s\r\n\r\n\
          GET /hdr HTTP/1.1\r\nHost: s\r\n\r\nGET /big HTTP/1.1\r\nHost: s\r\n\r\n",
    );
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        replayer.submit(r);
    }
    let primary_json = r#"{"a":"x","b":[1,2]}"#;
    for (seq, target) in ["/same", "/diff", "/hdr", "/big"].iter().enumerate() {
        let body = if *target == "/big" {
            big.as_str()
        } else {
            primary_json
        };
        let wire = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: then\r\n\
             Cache-Control: private\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut capture = primary_capture(wire.as_bytes());
        if *target != "/hdr" {
            // Only /hdr differs by Cache-Control.
            let head = String::from_utf8(capture.head).unwrap();
            capture.head = head.replace("Cache-Control: private\r\n", "").into_bytes();
        }
        hub.primary_with(
            (1, seq as u64),
            PrimarySide {
                status: 200,
                latency: Duration::from_millis(1),
            },
            Some(PrimaryInfo {
                method: "GET".into(),
                target: target.to_string(),
                capture: Some(capture),
            }),
        );
    }
    wait_until("four copies answered", Duration::from_secs(5), || {
        replayer.snapshot().mirrors[0].answered() == 4
    })
    .await;
    finish(&replayer).await;
    hub.flush(Duration::from_secs(5));
    let snap = hub.snapshot();
    let m = &snap.mirrors[0];
    assert_eq!(m.compared, 4, "{snap:?}");
    assert_eq!(
        m.status_class + m.status_code + m.no_response,
        0,
        "{snap:?}"
    );
    // /hdr: header (Cache-Control missing on the mirror's side); /diff: body.
    assert_eq!((m.header, m.body), (1, 1), "{snap:?}");
    // /big: equal prefixes and equal decoded lengths, compared on the prefix.
    assert_eq!((m.body_truncated, m.content_skipped), (1, 0), "{snap:?}");
    telemetry.update_compare(Some(&snap));
    let text = telemetry.render_prometheus();
    for line in [
        "mirror_compare_mismatches_total{mirror_name=\"app-v2\",kind=\"body\"} 1",
        "mirror_compare_mismatches_total{mirror_name=\"app-v2\",kind=\"header\"} 1",
        "mirror_compare_body_truncated_total{mirror_name=\"app-v2\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}
