use super::*;
use crate::replay::testutil::request;

fn rw(opts: RewriteOptions) -> Rewriter {
    Rewriter::new(opts, "10.0.0.5:8080".into())
}

fn s(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap()
}

const GET: &[u8] = b"GET /a?b=1 HTTP/1.1\r\nhOST: example.com:8080\r\nX-Odd-CASE:  spaced \r\nAuthorization: Bearer t\r\n\r\n";

#[test]
fn identity_is_the_same_bytes_without_copy() {
    let req = request(GET);
    let out = rw(RewriteOptions::default()).apply(&req).unwrap().0;
    assert_eq!(out, req.raw);
    assert_eq!(
        out.as_ptr(),
        req.raw.as_ptr(),
        "raw must be shared, not copied"
    );
}

#[test]
fn set_strip_keep_untouched_lines_exact() {
    let opts = RewriteOptions {
        set_headers: vec![
            ("X-Mirrored-By".into(), "mirror-agent".into()),
            ("x-odd-case".into(), "new".into()),
        ],
        strip_headers: vec!["authorization".into()],
        ..Default::default()
    };
    let out = rw(opts).apply(&request(GET)).unwrap().0;
    assert_eq!(
        s(&out),
        "GET /a?b=1 HTTP/1.1\r\nhOST: example.com:8080\r\nx-odd-case: new\r\nX-Mirrored-By: mirror-agent\r\n\r\n"
    );
}

#[test]
fn set_replaces_every_duplicate_once() {
    let req = request(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\n");
    let opts = RewriteOptions {
        set_headers: vec![("A".into(), "x".into())],
        ..Default::default()
    };
    assert_eq!(
        s(&rw(opts).apply(&req).unwrap().0),
        "GET / HTTP/1.1\r\nA: x\r\nB: 2\r\n\r\n"
    );
}

#[test]
fn host_modes() {
    let req = request(GET);
    let host = |mode: HostMode| {
        let out = rw(RewriteOptions {
            host: mode,
            ..Default::default()
        })
        .apply(&req)
        .unwrap()
        .0;
        s(&out).lines().nth(1).unwrap().to_string()
    };
    assert_eq!(host(HostMode::Mirror), "hOST: 10.0.0.5:8080");
    assert_eq!(
        host(HostMode::Suffix("-shadow".into())),
        "hOST: example.com-shadow:8080"
    );
    let no_port = request(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n");
    let out = rw(RewriteOptions {
        host: HostMode::Suffix("-shadow".into()),
        ..Default::default()
    })
    .apply(&no_port)
    .unwrap()
    .0;
    assert_eq!(s(&out), "GET / HTTP/1.1\r\nHost: api-shadow\r\n\r\n");
    // HTTP/1.0 without Host: mirror mode adds one.
    let old = request(b"GET / HTTP/1.0\r\n\r\n");
    let out = rw(RewriteOptions {
        host: HostMode::Mirror,
        ..Default::default()
    })
    .apply(&old)
    .unwrap()
    .0;
    assert_eq!(s(&out), "GET / HTTP/1.0\r\nHost: 10.0.0.5:8080\r\n\r\n");
}

#[test]
fn no_body_content_length() {
    let req = request(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX: y\r\n\r\nhello");
    let opts = RewriteOptions {
        mirror_body: false,
        ..Default::default()
    };
    let out = rw(opts).apply(&req).unwrap().0;
    assert_eq!(
        s(&out),
        "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX: y\r\n\r\n"
    );
}

#[test]
fn no_body_chunked_drops_framing_and_trailers() {
    let req = request(
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    );
    assert_eq!(req.framing, BodyFraming::Chunked);
    let opts = RewriteOptions {
        mirror_body: false,
        ..Default::default()
    };
    let out = rw(opts).apply(&req).unwrap().0;
    assert_eq!(
        s(&out),
        "POST /u HTTP/1.1\r\nContent-Length: 0\r\nHost: h\r\n\r\n"
    );
    // A request without a body is unchanged in content.
    let get = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let opts = RewriteOptions {
        mirror_body: false,
        ..Default::default()
    };
    assert_eq!(rw(opts).apply(&get).unwrap().0, get.raw);
}

#[test]
fn body_kept_after_rebuilt_head() {
    let raw =
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n";
    let req = request(raw);
    let opts = RewriteOptions {
        set_headers: vec![("X".into(), "1".into())],
        ..Default::default()
    };
    let out = rw(opts).apply(&req).unwrap().0;
    assert_eq!(
        s(&out),
        "POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n"
    );
}

#[test]
fn bare_lf_and_obs_fold_follow_their_field() {
    // httparse refuses obs-fold in requests, so the head is spliced in by hand.
    let mut req = request(b"GET / HTTP/1.1\nA: 1\nB: 2\n\n");
    req.raw = Bytes::from_static(b"GET / HTTP/1.1\nA: 1\n  folded\nB: 2\n\n");
    req.head_len = req.raw.len();
    let opts = RewriteOptions {
        strip_headers: vec!["a".into()],
        ..Default::default()
    };
    assert_eq!(
        s(&rw(opts).apply(&req).unwrap().0),
        "GET / HTTP/1.1\nB: 2\n\n"
    );
    let opts = RewriteOptions {
        strip_headers: vec!["b".into()],
        ..Default::default()
    };
    assert_eq!(
        s(&rw(opts).apply(&req).unwrap().0),
        "GET / HTTP/1.1\nA: 1\n  folded\n\n"
    );
}

#[test]
fn max_body_size() {
    let req = request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    let opts = |max, body| RewriteOptions {
        max_body_size: Some(max),
        mirror_body: body,
        ..Default::default()
    };
    assert_eq!(
        rw(opts(4, true)).apply(&req).map(|o| o.0),
        Err(Skip::BodyTooLarge)
    );
    assert!(rw(opts(5, true)).apply(&req).is_ok());
    // Without bodies the size does not matter (Traefik applies maxBodySize only with mirrorBody).
    assert!(rw(opts(4, false)).apply(&req).is_ok());
}

#[test]
fn option_parsing() {
    assert_eq!(
        parse_header("X-Mirrored-By: mirror-agent").unwrap(),
        ("X-Mirrored-By".into(), "mirror-agent".into())
    );
    assert!(parse_header("no colon").is_err());
    assert!(parse_header("Bad Name: x").is_err());
    assert!(parse_header("X: a\r\nInjected: 1").is_err());
    assert!(parse_header_name("Authorization").is_ok());
    assert!(parse_header_name("a b").is_err());
    assert_eq!(HostMode::parse("Mirror", "").unwrap(), HostMode::Mirror);
    assert_eq!(
        HostMode::parse("suffix", "-s").unwrap(),
        HostMode::Suffix("-s".into())
    );
    assert!(
        HostMode::parse("proxy", "")
            .unwrap_err()
            .to_string()
            .contains("keep, mirror or suffix")
    );
}

#[test]
fn trace_fields_are_located_in_the_rebuilt_head() {
    let req = request(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Drop: 1\r\ntraceparent:  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \r\ntracestate: k=v\r\n\r\n",
    );
    let opts = RewriteOptions {
        strip_headers: vec!["X-Drop".into()],
        set_headers: vec![("X-Mirrored-By".into(), "agent".into())],
        ..RewriteOptions::default()
    };
    let (out, trace) = rw(opts).apply(&req).unwrap();
    let trace = trace.expect("trace fields located");
    assert_eq!(
        trace.traceparent_value(&out),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(trace.tracestate_value(&out), Some("k=v"));
    let line = trace.traceparent.unwrap().line;
    assert!(
        std::str::from_utf8(&out[line.0..line.1])
            .unwrap()
            .starts_with("traceparent:")
    );
    assert!(
        std::str::from_utf8(&out[line.0..line.1])
            .unwrap()
            .ends_with("\r\n")
    );
    // Without options the framer's own positions are passed on.
    let (same, trace) = rw(RewriteOptions::default()).apply(&req).unwrap();
    assert_eq!(same, req.raw);
    assert_eq!(trace, req.trace);
}

#[test]
fn a_request_whose_body_was_omitted_goes_out_without_it_or_not_at_all() {
    // What the framer emits when no consumer needs the body: the head only.
    let mut req = request(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n");
    req.body_len = 5_000_000;
    req.body_omitted = true;
    let no_body = RewriteOptions {
        mirror_body: false,
        ..Default::default()
    };
    assert_eq!(
        s(&rw(no_body).apply(&req).unwrap().0),
        "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    );
    // A mirror that sends bodies cannot send this one.
    assert_eq!(
        rw(RewriteOptions::default()).apply(&req).unwrap_err(),
        Skip::BodyTooLarge
    );
}
