use bytes::Bytes;

use super::*;
use crate::replay::testutil;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn req(extra: &str) -> Bytes {
    Bytes::from(format!(
        "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n{extra}Content-Length: 4\r\n\r\nbody"
    ))
}

/// The copy of `raw` as replay hands it over; the trace fields located as the framer would.
fn copy(raw: &Bytes) -> MirrorCopy {
    testutil::copy(raw)
}

/// Runs the tracer on a copy of `raw`: the span and the bytes to send.
fn traced(t: &MirrorTracer, raw: &Bytes) -> (Span, Bytes) {
    let mut c = copy(raw);
    let span = t.mirror_trace_context("m", "10.0.0.5", Some(8080), &mut c);
    // The fields still point at the fields in the bytes sent.
    let (strip, rewritten) = (t.mode == TraceparentMode::Strip, c.bytes != *raw);
    if let Some(tp) = c.trace_fields().traceparent {
        assert!(!strip || !rewritten, "strip left a traceparent");
        let line = std::str::from_utf8(&c.bytes[tp.line.0..tp.line.1]).unwrap();
        assert!(
            line.to_ascii_lowercase().starts_with("traceparent:"),
            "{line}"
        );
        assert!(line.ends_with("\r\n"), "{line}");
    }
    for ts in &c.trace_fields().tracestate {
        let line = std::str::from_utf8(&c.bytes[ts.line.0..ts.line.1]).unwrap();
        assert!(line.starts_with("tracestate:"), "{line}");
    }
    (span, c.bytes)
}

fn tracer(mode: TraceparentMode) -> (SdkTracerProvider, MirrorTracer) {
    let p = SdkTracerProvider::builder().build();
    let t = MirrorTracer::new(&p, mode, Default::default());
    (p, t)
}

#[test]
fn reads_the_single_traceparent_the_framer_located() {
    let raw = req(&format!("traceparent: {TP}\r\ntracestate: a=b\r\n"));
    let c = copy(&raw);
    let tp = c.trace_fields().traceparent.unwrap();
    assert_eq!(&raw[tp.value.0..tp.value.1], TP.as_bytes());
    assert_eq!(
        &raw[tp.line.0..tp.line.1],
        format!("traceparent: {TP}\r\n").as_bytes()
    );
    let sc = client_span_context(&c.bytes, c.trace_fields()).unwrap();
    assert_eq!(
        sc.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
}

#[test]
fn duplicate_or_invalid_traceparent_is_no_context() {
    let dup = copy(&req(&format!("traceparent: {TP}\r\nTraceparent: {TP}\r\n")));
    assert_eq!(dup.trace_fields().traceparent, None);
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let c = copy(&req(&format!("traceparent: {bad}\r\n")));
        assert!(
            client_span_context(&c.bytes, c.trace_fields()).is_none(),
            "{bad}"
        );
    }
}

#[test]
fn rewrite_changes_only_the_value_bytes() {
    let raw = req(&format!("TraceParent:   {TP}\r\ntracestate: a=b\r\n"));
    let (_p, t) = tracer(TraceparentMode::Rewrite);
    let (span, out) = traced(&t, &raw);
    use opentelemetry::trace::Span as _;
    let ours = span.span_context().clone();
    let expected = format!("00-{}-{}-01", ours.trace_id(), ours.span_id());
    assert_eq!(out.len(), raw.len());
    let (vs, ve) = copy(&raw).trace_fields().traceparent.unwrap().value;
    assert_eq!(&out[..vs], &raw[..vs]);
    assert_eq!(&out[vs..ve], expected.as_bytes());
    assert_eq!(&out[ve..], &raw[ve..]);
    // A longer client value (a later version's extra field) moves the fields after it.
    let long =
        req(&format!("traceparent: {TP}-00\r\ntracestate: a=b\r\n").replacen("00-", "01-", 1));
    let mut c = copy(&long);
    let _s = t.mirror_trace_context("m", "h", None, &mut c);
    assert_eq!(c.bytes.len(), long.len() - 3);
    assert_eq!(c.trace_fields().tracestate_value(&c.bytes), Some("a=b"));
    assert!(
        c.trace_fields()
            .traceparent_value(&c.bytes)
            .unwrap()
            .starts_with("00-")
    );
    // Our span is a new trace, not the client's.
    assert_ne!(
        ours.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[test]
fn keep_and_no_header_pass_the_same_bytes() {
    let with = req(&format!("traceparent: {TP}\r\n"));
    let (_p, keep) = tracer(TraceparentMode::Keep);
    let (_s, out) = traced(&keep, &with);
    assert_eq!(out, with);
    let without = req("");
    for mode in [
        TraceparentMode::Rewrite,
        TraceparentMode::Keep,
        TraceparentMode::Strip,
    ] {
        let (_p, t) = tracer(mode);
        let mut c = copy(&without);
        let before = c.bytes.as_ptr();
        let _s = t.mirror_trace_context("m", "h", None, &mut c);
        assert_eq!(c.bytes.as_ptr(), before, "{mode:?} copied");
    }
    // Invalid context: rewrite leaves it as the client sent it.
    let bad = req("traceparent: nonsense\r\n");
    let (_p, t) = tracer(TraceparentMode::Rewrite);
    let (_s, out) = traced(&t, &bad);
    assert_eq!(out, bad);
}

#[test]
fn strip_removes_traceparent_and_tracestate_lines() {
    let raw = req(&format!("traceparent: {TP}\r\ntracestate: a=b\r\n"));
    let (_p, t) = tracer(TraceparentMode::Strip);
    let (_s, out) = traced(&t, &raw);
    assert_eq!(out, req(""));
}

#[test]
fn url_path_and_method() {
    use super::super::semconv::{normalize_method, url_path};
    assert_eq!(url_path("/a/b?c=d"), "/a/b");
    assert_eq!(url_path("http://h:1/x/y?z"), "/x/y");
    assert_eq!(url_path("http://h"), "/");
    assert_eq!(url_path("*"), "*");
    assert_eq!(normalize_method("GET"), "GET");
    assert_eq!(normalize_method("get"), "_OTHER");
    assert_eq!(normalize_method("PROPFIND"), "_OTHER");
}

#[test]
fn future_versions_may_append_fields() {
    assert!(well_formed(TP));
    assert!(well_formed(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
    ));
    assert!(!well_formed(&format!("{TP}-extra")));
    assert!(!well_formed(&TP.to_uppercase()));
}
