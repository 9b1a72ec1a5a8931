//! A server byte stream cut at arbitrary points into `ResponseFramer`.
//!
//! Input format: `control u64 LE | stream bytes`, see `common`. The control word also
//! says what requests the responses answer (HEAD, CONNECT, or plain), one bit pair each.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use mirror_agent::http::response::{ExpectedResponse, ResponseEvent, ResponseFramer};

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::Input::decode(data) else {
        return;
    };
    let (control, stream) = (input.control, input.stream);
    let mut framer = ResponseFramer::new(input.limits.clone());
    // Up to 8 expected requests; bits 32.. give HEAD / CONNECT for each.
    let expected = 1 + (control >> 26 & 0x7);
    for k in 0..expected {
        let bits = control >> (32 + 2 * k);
        framer.expect(ExpectedResponse {
            head: bits & 1 != 0,
            connect: bits & 2 != 0,
        });
    }
    let mut out = Vec::new();
    for (range, gap) in input.pieces() {
        if gap {
            framer.gap(range.len() as u64, &mut out);
        } else {
            framer.push(&stream[range.clone()], range.start as u64, &mut out);
        }
    }
    framer.finish(stream.len() as u64, &mut out);
    for ev in &out {
        if let ResponseEvent::Informational(r) | ResponseEvent::Final(r) = ev {
            assert!(r.head_len <= stream.len(), "head longer than the stream");
            assert!(r.ts_ns <= r.end_ts_ns, "ends before it starts");
        }
    }
});
