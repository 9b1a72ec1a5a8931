//! A client byte stream cut at arbitrary points into `RequestFramer`.
//!
//! Input format: `control u64 LE | stream bytes` (see `common`). Bit 0 of the control word says
//! whether the stream is picked up mid-stream; `seed_corpus.py` writes captured client streams
//! with a zero control word.
#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror_agent::http::request::{RequestEvent, RequestFramer};

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::Input::decode(data) else {
        return;
    };
    let stream = Bytes::copy_from_slice(input.stream);
    let limits = input.limits.clone();
    let mut framer = RequestFramer::new(limits.clone(), input.control & 1 != 0);
    let mut out = Vec::new();
    let mut pushed = 0u64;
    for (range, gap) in input.pieces() {
        if gap {
            framer.gap(range.len() as u64, &mut out);
        } else {
            pushed += range.len() as u64;
            framer.push(&stream.slice(range.clone()), range.start as u64, &mut out);
        }
    }
    framer.finish(&mut out);
    let mut raw = 0u64;
    // Once the connection ended for the server (a request that closes it, or one with both
    // Transfer-Encoding and Content-Length), nothing after it may be mirrored.
    let mut ended = false;
    for ev in &out {
        if let RequestEvent::Dropped { reason, .. } = ev {
            ended |= !reason.is_loss();
        }
        if let RequestEvent::Request(req) = ev {
            assert!(!ended, "a request mirrored after the connection ended");
            ended |= req.te_and_cl || !req.keep_alive;
            assert!(
                req.head_len <= req.raw.len(),
                "head longer than the request"
            );
            assert!(req.head_len <= limits.max_head_bytes, "head over the limit");
            assert!(req.headers().count() <= limits.max_headers, "too many headers");
            raw += req.raw.len() as u64;
        }
    }
    assert!(
        raw <= pushed,
        "requests hold more bytes ({raw}) than were pushed ({pushed})"
    );
});
