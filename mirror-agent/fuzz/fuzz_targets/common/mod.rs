//! Input decoding shared by the HTTP framing targets: `control u64 LE | stream bytes`.
//!
//! The control word seeds the split points (a small xorshift generator, not the fuzzer's own, so
//! a seed file replays the same splits on every run), chooses the chunk size (1..=2^k bytes, so
//! some inputs arrive a byte at a time and some whole), whether some chunks are lost as gaps,
//! and the head limits. Bits 0 and 26.. are left to each target.

use std::ops::Range;

use mirror_agent::http::request::HttpLimits;

/// A decoded fuzz input.
pub struct Input<'a> {
    pub control: u64,
    pub stream: &'a [u8],
    pub limits: HttpLimits,
}

impl<'a> Input<'a> {
    /// `None` when the input is too short to hold the control word.
    pub fn decode(data: &'a [u8]) -> Option<Self> {
        let control = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        let limits = HttpLimits {
            max_head_bytes: 256 + (control >> 8 & 0xFFF) as usize,
            max_headers: 1 + (control >> 20 & 0x3F) as usize,
            ..HttpLimits::default()
        };
        Some(Self {
            control,
            stream: &data[8..],
            limits,
        })
    }

    /// The stream cut into consecutive pieces; `true` marks a piece lost as a gap.
    pub fn pieces(&self) -> Vec<(Range<usize>, bool)> {
        let gaps = self.control & 2 != 0;
        let max_chunk = 1u64 << (self.control >> 2 & 0xF);
        let mut splits = Splits(self.control);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.stream.len() {
            let n = (1 + splits.next() % max_chunk) as usize;
            let end = (pos + n).min(self.stream.len());
            out.push((pos..end, gaps && splits.next() % 16 == 0));
            pos = end;
        }
        out
    }
}

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
