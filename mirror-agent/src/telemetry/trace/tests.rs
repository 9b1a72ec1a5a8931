use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn req(extra: &str) -> Bytes {
    Bytes::from(format!(
        "POST /api/v1/items?x=1 HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n{extra}Content-Length: 4\r\n\r\nbody"
    ))
}

fn tracer(mode: TraceparentMode) -> (SdkTracerProvider, MirrorTracer) {
    let p = SdkTracerProvider::builder().build();
    let t = MirrorTracer::new(&p, mode, Default::default());
    (p, t)
}

#[test]
fn finds_the_single_traceparent() {
    let raw = req(&format!("traceparent: {TP}\r\ntracestate: a=b\r\n"));
    let h = find_trace_headers(&raw).unwrap();
    assert_eq!(h.method, "POST");
    assert_eq!(h.target, "/api/v1/items?x=1");
    let (ls, vs, ve, le) = h.traceparent.unwrap();
    assert_eq!(&raw[vs..ve], TP.as_bytes());
    assert_eq!(&raw[ls..le], format!("traceparent: {TP}\r\n").as_bytes());
    let sc = client_span_context(&h).unwrap();
    assert_eq!(
        sc.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
}

#[test]
fn duplicate_or_invalid_traceparent_is_no_context() {
    let dup = req(&format!("traceparent: {TP}\r\nTraceparent: {TP}\r\n"));
    let h = find_trace_headers(&dup).unwrap();
    assert_eq!(h.traceparent, None);
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let raw = req(&format!("traceparent: {bad}\r\n"));
        let h = find_trace_headers(&raw).unwrap();
        assert!(client_span_context(&h).is_none(), "{bad}");
    }
    assert!(find_trace_headers(b"not http\r\n\r\n").is_none());
    assert!(find_trace_headers(b"GET / HTTP/1.1\r\nHost: a\r\n").is_none());
}

#[test]
fn rewrite_changes_only_the_value_bytes() {
    let raw = req(&format!("TraceParent:   {TP}\r\ntracestate: a=b\r\n"));
    let (_p, t) = tracer(TraceparentMode::Rewrite);
    let (span, out) = t.mirror_trace_context("m", "10.0.0.5", Some(8080), &raw);
    use opentelemetry::trace::Span as _;
    let ours = span.span_context().clone();
    let expected = format!("00-{}-{}-01", ours.trace_id(), ours.span_id());
    assert_eq!(out.len(), raw.len());
    let h = find_trace_headers(&raw).unwrap();
    let (_, vs, ve, _) = h.traceparent.unwrap();
    assert_eq!(&out[..vs], &raw[..vs]);
    assert_eq!(&out[vs..ve], expected.as_bytes());
    assert_eq!(&out[ve..], &raw[ve..]);
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
    let (_s, out) = keep.mirror_trace_context("m", "h", None, &with);
    assert_eq!(out, with);
    let without = req("");
    for mode in [
        TraceparentMode::Rewrite,
        TraceparentMode::Keep,
        TraceparentMode::Strip,
    ] {
        let (_p, t) = tracer(mode);
        let (_s, out) = t.mirror_trace_context("m", "h", None, &without);
        assert_eq!(out.as_ptr(), without.as_ptr(), "{mode:?} copied");
    }
    // Invalid context: rewrite leaves it as the client sent it.
    let bad = req("traceparent: nonsense\r\n");
    let (_p, t) = tracer(TraceparentMode::Rewrite);
    let (_s, out) = t.mirror_trace_context("m", "h", None, &bad);
    assert_eq!(out, bad);
}

#[test]
fn strip_removes_traceparent_and_tracestate_lines() {
    let raw = req(&format!("traceparent: {TP}\r\ntracestate: a=b\r\n"));
    let (_p, t) = tracer(TraceparentMode::Strip);
    let (_s, out) = t.mirror_trace_context("m", "h", None, &raw);
    assert_eq!(out, req(""));
}

#[test]
fn url_path_and_method() {
    use super::super::request::{normalize_method, url_path};
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
