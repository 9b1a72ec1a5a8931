//! A client byte stream cut at arbitrary points into `RequestFramer`.
//!
//! Input format: `control u64 LE | stream bytes`. The control word seeds the split points and
//! says whether the stream is picked up mid-stream and where gaps fall; `seed_corpus.py` writes
//! captured client streams with a zero control word.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};

/// Split points from a small xorshift generator (not the fuzzer's own, so a seed file replays
/// the same splits on every run).
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
    let stream = Bytes::copy_from_slice(&data[8..]);
    let limits = HttpLimits {
        max_head_bytes: 256 + (control >> 8 & 0xFFF) as usize,
        max_headers: 1 + (control >> 20 & 0x3F) as usize,
        ..HttpLimits::default()
    };
    let mut framer = RequestFramer::new(limits.clone(), control & 1 != 0);
    let gaps = control & 2 != 0;
    // Chunk sizes up to 1..=2^k, so some inputs arrive a byte at a time and some whole.
    let max_chunk = 1u64 << (control >> 2 & 0xF);
    let mut splits = Splits(control);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut pushed = 0u64;
    while pos < stream.len() {
        let n = (1 + splits.next() % max_chunk) as usize;
        let end = (pos + n).min(stream.len());
        if gaps && splits.next() % 16 == 0 {
            framer.gap((end - pos) as u64, &mut out);
        } else {
            framer.push(&stream.slice(pos..end), pos as u64, &mut out);
            pushed += (end - pos) as u64;
        }
        pos = end;
    }
    framer.finish(&mut out);
    let mut raw = 0u64;
    for ev in &out {
        if let RequestEvent::Request(req) = ev {
            assert!(
                req.head_len <= req.raw.len(),
                "head longer than the request"
            );
            assert!(req.head_len <= limits.max_head_bytes, "head over the limit");
            assert!(req.headers.len() <= limits.max_headers, "too many headers");
            raw += req.raw.len() as u64;
        }
    }
    assert!(
        raw <= pushed,
        "requests hold more bytes ({raw}) than were pushed ({pushed})"
    );
});
