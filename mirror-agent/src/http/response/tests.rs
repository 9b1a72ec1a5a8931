//! Response framer tests: every split point of each response kind, drop reasons, accounting.

use proptest::prelude::*;

use super::{ExpectedResponse, Response, ResponseDropReason, ResponseEvent, ResponseFramer};
use crate::http::request::HttpLimits;
use crate::http::{BodyFraming, Version};

const GET: ExpectedResponse = ExpectedResponse {
    head: false,
    connect: false,
};
const HEAD: ExpectedResponse = ExpectedResponse {
    head: true,
    connect: false,
};
const CONNECT: ExpectedResponse = ExpectedResponse {
    head: false,
    connect: true,
};

fn feed(expect: &[ExpectedResponse], pieces: &[&[u8]]) -> Vec<ResponseEvent> {
    let mut f = ResponseFramer::new(HttpLimits::default());
    for e in expect {
        f.expect(*e);
    }
    let mut out = Vec::new();
    for p in pieces {
        f.push(p, 7, &mut out);
        assert!(f.buffered_bytes() <= HttpLimits::default().max_head_bytes + 1);
    }
    f.finish(9, &mut out);
    check_accounting(&f, &out);
    out
}

fn check_accounting(f: &ResponseFramer, out: &[ResponseEvent]) {
    let s = f.stats();
    let dropped: u64 = out
        .iter()
        .map(|e| match e {
            ResponseEvent::Dropped { bytes, .. } => {
                assert!(*bytes > 0);
                *bytes
            }
            _ => 0,
        })
        .sum();
    assert_eq!(s.dropped_bytes, dropped);
    assert_eq!(
        s.pushed_bytes,
        s.response_bytes + s.dropped_bytes + s.ignored_bytes,
        "{s:?}"
    );
}

fn splits(expect: &[ExpectedResponse], msg: &[u8]) -> Vec<ResponseEvent> {
    let whole = feed(expect, &[msg]);
    for i in 0..=msg.len() {
        assert_eq!(feed(expect, &[&msg[..i], &msg[i..]]), whole, "split at {i}");
    }
    let bytes: Vec<&[u8]> = msg.chunks(1).collect();
    assert_eq!(feed(expect, &bytes), whole, "byte by byte");
    whole
}

fn dropped(reason: ResponseDropReason, bytes: u64) -> ResponseEvent {
    ResponseEvent::Dropped { reason, bytes }
}

fn finals(events: &[ResponseEvent]) -> Vec<&Response> {
    events
        .iter()
        .filter_map(|e| match e {
            ResponseEvent::Final(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn content_length_and_chunked_keepalive() {
    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\nde\n0\r\nT: v\r\n\r\n";
    let ev = splits(&[GET, GET], msg);
    let f = finals(&ev);
    assert_eq!(ev.len(), 2);
    assert_eq!((f[0].status, f[0].body_len), (200, 5));
    assert_eq!(f[0].framing, BodyFraming::ContentLength(5));
    assert_eq!(f[0].head_len, 38);
    assert_eq!((f[1].status, f[1].body_len), (404, 5));
    assert_eq!(f[1].framing, BodyFraming::Chunked);
}

/// `Connection: close` is a token of a list, in any case, possibly in a second field.
#[test]
fn connection_close_is_reported() {
    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Upgrade-Insecure , CLOSE\r\n\r\n\
HTTP/1.1 200 OK\r\nConnection: foo\r\nContent-Length: 0\r\nconnection: close\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Connection: close\r\n\r\n";
    let ev = splits(&[GET, GET, GET, GET], msg);
    let closes: Vec<bool> = finals(&ev).iter().map(|r| r.close).collect();
    assert_eq!(closes, [false, true, true, false]);
}

#[test]
fn head_204_304_have_no_body() {
    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let ev = splits(&[HEAD, GET, GET, GET], msg);
    let f = finals(&ev);
    let got: Vec<(u16, u64)> = f.iter().map(|r| (r.status, r.body_len)).collect();
    assert_eq!(got, [(200, 0), (204, 0), (304, 0), (200, 2)]);
}

#[test]
fn several_100_continue_then_final() {
    let msg = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let ev = splits(&[GET], msg);
    assert_eq!(ev.len(), 4);
    assert!(
        ev[..3]
            .iter()
            .all(|e| matches!(e, ResponseEvent::Informational(_)))
    );
    assert_eq!(finals(&ev)[0].status, 201);
}

#[test]
fn switching_protocols_is_final_then_tunnel() {
    let msg = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
    let ev = splits(&[GET], msg);
    assert_eq!(ev.len(), 1);
    assert_eq!(finals(&ev)[0].status, 101);
}

#[test]
fn connect_2xx_is_a_tunnel_other_status_is_not() {
    let ev = splits(
        &[CONNECT],
        b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03\x00\x10",
    );
    assert_eq!(ev.len(), 1);
    let msg =
        b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\n\r\nTLS...";
    let ev = splits(&[CONNECT, CONNECT], msg);
    let got: Vec<u16> = finals(&ev).iter().map(|r| r.status).collect();
    assert_eq!(got, [407, 200]);
}

#[test]
fn close_delimited_completed_by_finish() {
    let msg = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until close";
    let ev = splits(&[], msg);
    let f = finals(&ev);
    assert_eq!(f[0].framing, BodyFraming::CloseDelimited);
    assert_eq!(f[0].body_len, 16);
}

#[test]
fn no_expectation_queued_means_get_like() {
    let ev = splits(&[], b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(finals(&ev)[0].body_len, 3);
}

#[test]
fn timestamps() {
    let mut f = ResponseFramer::new(HttpLimits::default());
    let mut out = Vec::new();
    f.push(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na",
        10,
        &mut out,
    );
    f.push(b"b", 20, &mut out);
    let r = finals(&out)[0];
    assert_eq!((r.ts_ns, r.end_ts_ns), (10, 20));
}

#[test]
fn drops_truncated_gap_malformed_too_large() {
    let ev = feed(
        &[GET],
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"],
    );
    assert_eq!(ev, [dropped(ResponseDropReason::Truncated, 41)]);

    let mut f = ResponseFramer::new(HttpLimits::default());
    let mut out = Vec::new();
    f.push(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
        1,
        &mut out,
    );
    f.gap(30, &mut out);
    f.push(b"xyzHTTP/1.1 204 No Content\r\n\r\n", 2, &mut out);
    f.finish(3, &mut out);
    check_accounting(&f, &out);
    assert_eq!(out[0], dropped(ResponseDropReason::Gap, 41 + 30));
    // The gap went past the body's end, so the framer resyncs by lines: the line
    // "xyzHTTP/1.1 204..." does not start with a status line and is skipped to its end (with
    // the blank line after it): one Gap drop.
    assert_eq!(out.len(), 1, "{out:?}");

    let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let ev = splits(&[GET, GET], msg);
    assert_eq!(ev[0], dropped(ResponseDropReason::Malformed, 57));
    assert_eq!(finals(&ev)[0].status, 200);

    let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200_000));
    big.extend_from_slice(b"\r\n\r\n");
    let mut f = ResponseFramer::new(HttpLimits::default());
    let mut out = Vec::new();
    for p in big.chunks(999) {
        f.push(p, 1, &mut out);
        assert!(f.buffered_bytes() <= HttpLimits::default().max_head_bytes + 1);
    }
    f.finish(2, &mut out);
    check_accounting(&f, &out);
    assert_eq!(
        out,
        [dropped(ResponseDropReason::HeadTooLarge, big.len() as u64)]
    );
}

#[test]
fn hundred_thousand_tiny_chunks() {
    let mut msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..100_000 {
        msg.extend_from_slice(b"1\r\na\r\n");
    }
    msg.extend_from_slice(b"0\r\n\r\n");
    let pieces: Vec<&[u8]> = msg.chunks(5).collect();
    let ev = feed(&[GET], &pieces);
    assert_eq!(finals(&ev)[0].body_len, 100_000);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: crate::http::tests::regressions(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_input_is_accounted(
        pieces in proptest::collection::vec(
            (proptest::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b'H'), Just(b'0'), any::<u8>()
            ], 0..64), any::<bool>()),
            0..24),
        prefix in prop_oneof![
            Just(&b""[..]),
            Just(&b"HTTP/1.1 200 OK\r\n"[..]),
            Just(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..]),
        ],
    ) {
        let limits = HttpLimits { max_head_bytes: 64, max_headers: 4, max_body_bytes: 32, omit_bodies_over: None };
        let mut f = ResponseFramer::new(limits);
        let mut out = Vec::new();
        f.push(prefix, 0, &mut out);
        for (p, gap) in pieces {
            f.push(&p, 1, &mut out);
            prop_assert!(f.buffered_bytes() <= 65);
            if gap {
                f.gap(3, &mut out);
            }
        }
        f.finish(2, &mut out);
        check_accounting(&f, &out);
    }
}

#[test]
fn http09_response_is_body_until_close() {
    // Shape of the answer in suricata-verify http-missing-protocol: no status line at all.
    let ev = splits(&[GET], b"xzscxc#$#AzMTax4wG=$#$vxxd");
    let f = finals(&ev);
    assert_eq!(ev.len(), 1);
    assert_eq!((f[0].status, f[0].version), (200, Version::Http09));
    assert_eq!(f[0].body_len, 26);
    assert_eq!(f[0].head_len, 0);
    // Only as the first thing on a stream: after a response, garbage is malformed.
    let ev = splits(&[GET], b"HTTP/1.1 204 No Content\r\n\r\ngarbage\r\n");
    assert_eq!(ev[1], dropped(ResponseDropReason::Malformed, 9));
}

#[test]
fn midstream_response_stream_resyncs_at_a_status_line() {
    let msg =
        b"tail of a body\r\nmore HTTP/1.1 200\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let whole = {
        let mut f = ResponseFramer::new_midstream(HttpLimits::default());
        let mut out = Vec::new();
        f.push(msg, 1, &mut out);
        f.finish(2, &mut out);
        check_accounting(&f, &out);
        out
    };
    for i in 0..=msg.len() {
        let mut f = ResponseFramer::new_midstream(HttpLimits::default());
        let mut out = Vec::new();
        f.push(&msg[..i], 1, &mut out);
        f.push(&msg[i..], 1, &mut out);
        f.finish(2, &mut out);
        assert_eq!(out, whole, "split at {i}");
    }
    assert_eq!(whole[0], dropped(ResponseDropReason::Midstream, 35));
    assert_eq!(finals(&whole)[0].body_len, 2);
}

#[test]
fn gap_inside_a_known_body_keeps_responses_paired() {
    let mut f = ResponseFramer::new(HttpLimits::default());
    let mut out = Vec::new();
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx";
    f.push(head, 1, &mut out);
    f.gap(50, &mut out);
    let mut rest = vec![b'y'; 48];
    rest.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    f.push(&rest, 2, &mut out);
    f.finish(3, &mut out);
    check_accounting(&f, &out);
    assert_eq!(
        out[0],
        dropped(ResponseDropReason::Gap, head.len() as u64 + 48)
    );
    assert_eq!(finals(&out)[0].status, 404);
    assert_eq!(out.len(), 2);
}

#[test]
fn too_many_headers_in_a_response() {
    let limits = HttpLimits {
        max_headers: 2,
        ..HttpLimits::default()
    };
    let bad = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let mut msg = bad.to_vec();
    msg.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
    let mut f = ResponseFramer::new(limits);
    let mut out = Vec::new();
    f.push(&msg, 1, &mut out);
    f.finish(2, &mut out);
    check_accounting(&f, &out);
    assert_eq!(
        out[0],
        dropped(ResponseDropReason::TooManyHeaders, bad.len() as u64)
    );
    assert_eq!(finals(&out)[0].status, 204);
}

#[test]
fn answers_dropped_tells_which_drops_took_an_expectation() {
    let mut f = ResponseFramer::new(HttpLimits::default());
    for _ in 0..4 {
        f.expect(GET);
    }
    let mut out = Vec::new();
    // 1: a gap inside its body (head read: takes an expectation).
    f.push(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab",
        1,
        &mut out,
    );
    assert!(f.response_open());
    f.gap(2, &mut out);
    f.push(
        b"cdefghHTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        2,
        &mut out,
    );
    // 2: invalid Content-Length (head read: takes one). 3: a head cut by a gap (does not).
    f.push(b"HTTP/1.1 200 OK\r\nConte", 3, &mut out);
    f.gap(5, &mut out);
    f.push(b"\r\nHTTP/1.1 204 No Content\r\n\r\n", 4, &mut out);
    f.finish(5, &mut out);
    check_accounting(&f, &out);
    assert_eq!(f.stats().answers_dropped, 2, "{out:?}");
    assert_eq!(finals(&out).len(), 1);
    assert_eq!(f.pending_expectations(), 1);
    assert!(!f.response_open());
}

/// The whole-head fast path (one httparse call when a head arrives in one push) against the
/// line-by-line path (`splits` compares every split and byte-by-byte pushes with the whole).
#[test]
fn whole_head_fast_path_agrees_with_line_by_line() {
    // Bare LF line ends, and a leading blank line (ignored, RFC 9112 2.2).
    let ev = splits(
        &[GET, GET],
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok\r\nHTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
    );
    let f = finals(&ev);
    assert_eq!(
        f.iter().map(|r| (r.status, r.body_len)).collect::<Vec<_>>(),
        [(200, 2), (304, 0)]
    );
    // Conflicting Content-Length: unframeable, dropped as malformed.
    let ev = splits(
        &[GET],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    );
    assert!(finals(&ev).is_empty(), "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(
            e,
            ResponseEvent::Dropped {
                reason: ResponseDropReason::Malformed,
                ..
            }
        )),
        "{ev:?}"
    );
    // HTTP/1.0 without a length: close-delimited.
    let ev = splits(
        &[GET],
        b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nbody until close",
    );
    assert_eq!(finals(&ev)[0].framing, BodyFraming::CloseDelimited);
    assert_eq!(finals(&ev)[0].body_len, 16);
    // A head larger than max_head_bytes arriving whole is not taken by the fast path.
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.resize(big.len() + HttpLimits::default().max_head_bytes, b'a');
    big.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let ev = feed(&[GET], &[&big]);
    assert!(finals(&ev).is_empty(), "{ev:?}");
    assert!(matches!(
        ev[0],
        ResponseEvent::Dropped {
            reason: ResponseDropReason::HeadTooLarge,
            ..
        }
    ));
}
