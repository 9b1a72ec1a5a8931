//! A server byte stream cut at arbitrary points into `ResponseFramer`.
//!
//! Input format: `control u64 LE | stream bytes`, as for `http_request`. The control word also
//! says what requests the responses answer (HEAD, CONNECT, or plain), one bit pair each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_agent::http::request::HttpLimits;
use mirror_agent::http::response::{ExpectedResponse, ResponseEvent, ResponseFramer};

/// Split points from a small xorshift generator (see `http_request`).
struct Splits(u64);

impl Splits {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(control) = data.get(..8) else { return };
    let control = u64::from_le_bytes(control.try_into().expect("8 bytes"));
    let stream = &data[8..];
    let limits = HttpLimits {
        max_head_bytes: 256 + (control >> 8 & 0xFFF) as usize,
        max_headers: 1 + (control >> 20 & 0x3F) as usize,
        ..HttpLimits::default()
    };
    let mut framer = ResponseFramer::new(limits.clone());
    // Up to 8 expected requests; bits 32.. give HEAD / CONNECT for each.
    let expected = 1 + (control >> 26 & 0x7);
    for k in 0..expected {
        let bits = control >> (32 + 2 * k);
        framer.expect(ExpectedResponse {
            head: bits & 1 != 0,
            connect: bits & 2 != 0,
        });
    }
    let gaps = control & 2 != 0;
    let max_chunk = 1u64 << (control >> 2 & 0xF);
    let mut splits = Splits(control);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let n = (1 + splits.next() % max_chunk) as usize;
        let end = (pos + n).min(stream.len());
        if gaps && splits.next() % 16 == 0 {
            framer.gap((end - pos) as u64, &mut out);
        } else {
            framer.push(&stream[pos..end], pos as u64, &mut out);
        }
        pos = end;
    }
    framer.finish(stream.len() as u64, &mut out);
    for ev in &out {
        if let ResponseEvent::Informational(r) | ResponseEvent::Final(r) = ev {
            assert!(r.head_len <= stream.len(), "head longer than the stream");
            assert!(r.ts_ns <= r.end_ts_ns, "ends before it starts");
        }
    }
});
