//! Test helper: builds a [`Request`] from complete wire bytes with httparse, so replay unit tests
//! do not depend on the streaming request framer (owned by `http`).

use bytes::Bytes;

use crate::http::{BodyFraming, Request, Text, TraceFields, Version, asks_upgrade, keeps_alive};

/// Parses one complete request (head and body) from `raw`.
pub fn request(raw: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(raw).expect("test request parses") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("test request head incomplete"),
    };
    let get = |n: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    let (framing, body_len) = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        (BodyFraming::Chunked, chunked_len(&raw[head_len..]))
    } else if let Some(cl) = get("content-length") {
        let n: u64 = cl.trim().parse().expect("numeric content-length");
        (BodyFraming::ContentLength(n), n)
    } else {
        (BodyFraming::None, 0)
    };
    let version = if req.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    let (method, target) = Text::request_line(raw, req.method.unwrap(), req.path.unwrap());
    Request {
        raw: Bytes::copy_from_slice(raw),
        head_len,
        method,
        target,
        version,
        keep_alive: keeps_alive(version, &raw[..head_len]),
        upgrade: asks_upgrade(&raw[..head_len]),
        trace: TraceFields::scan_head(raw, head_len).shared(),
        body_omitted: false,
        h2_stream: None,
        framing,
        body_len,
        ts_ns: 0,
        end_ts_ns: 0,
        te_and_cl: false,
    }
}

/// Sum of chunk sizes of a complete chunked body (test input is trusted).
fn chunked_len(mut body: &[u8]) -> u64 {
    let mut total = 0;
    loop {
        let nl = body
            .iter()
            .position(|&b| b == b'\n')
            .expect("chunk size line");
        let line = String::from_utf8_lossy(&body[..nl]);
        let size = line.trim().split(';').next().unwrap().trim();
        let n = u64::from_str_radix(size, 16).expect("hex chunk size");
        if n == 0 {
            return total;
        }
        total += n;
        body = &body[nl + 1 + n as usize..];
        body = body.strip_prefix(b"\r\n").unwrap_or(body);
    }
}

/// A mirror copy of the request in `raw` (flow 1, first request), bytes as captured.
pub fn copy(raw: &[u8]) -> crate::replay::MirrorCopy {
    let request = request(raw);
    let captured = crate::pipeline::CapturedRequest {
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        flow_id: 1,
        seq_in_flow: 0,
        request,
    };
    crate::replay::MirrorCopy {
        bytes: captured.request.raw.clone(),
        trace: captured.request.trace.clone(),
        head: crate::replay::CopyHead::of(&captured),
    }
}
