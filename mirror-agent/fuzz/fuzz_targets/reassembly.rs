//! Arbitrary segment sequences into one `Stream`, checking its invariants after every step.
//!
//! Input format (any byte string is valid; `seed_corpus.py` writes real captures in it):
//!
//! ```text
//! header:  max_buffered_bytes u16 LE | max_segments u8 | gap_timeout u16 LE
//! records: kind u8 | seq u32 LE | dt u16 LE | len u16 LE | payload (len bytes, or what is left)
//!   kind bits 0..5: TCP flags (FIN SYN RST PSH ACK); 0x40: poll(now) instead of a push
//!   (seq, len and payload ignored); 0x80: flush before this record.
//! ```
//! Time advances by `dt` per record. The payloads are slices of one buffer, as in the pipeline.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirror_agent::capture::TcpFlags;
use mirror_agent::reassembly::{Stream, StreamConfig, StreamEvent};

fn u16_at(d: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(i..i + 4)?.try_into().ok()?))
}

/// Checks what must hold after any call, and the events it produced.
fn check(s: &Stream, cfg: &StreamConfig, out: &mut Vec<StreamEvent>, ended: &mut bool) {
    let st = s.stats();
    assert!(
        st.bytes_delivered <= st.bytes_offered,
        "delivered more than offered: {st:?}"
    );
    assert_eq!(
        st.bytes_offered,
        st.bytes_delivered + st.discarded_bytes() + s.buffered_bytes() as u64,
        "accounting identity: {st:?}"
    );
    assert_eq!(s.stream_offset(), st.bytes_delivered + st.gap_bytes);
    assert!(s.buffered_bytes() <= cfg.max_buffered_bytes, "byte bound");
    assert!(s.buffered_segments() <= cfg.max_segments, "piece bound");
    for ev in out.drain(..) {
        assert!(!*ended, "event after End: {ev:?}");
        match ev {
            StreamEvent::Data { bytes, .. } => assert!(!bytes.is_empty(), "empty data"),
            StreamEvent::Gap { len, .. } => assert!(len > 0, "empty gap"),
            StreamEvent::End { .. } => *ended = true,
        }
    }
    assert_eq!(*ended, s.is_ended());
}

fuzz_target!(|data: &[u8]| {
    let (Some(max_bytes), Some(&max_segments), Some(timeout)) =
        (u16_at(data, 0), data.get(2), u16_at(data, 3))
    else {
        return;
    };
    let cfg = StreamConfig {
        max_buffered_bytes: usize::from(max_bytes),
        max_segments: usize::from(max_segments),
        gap_timeout_ns: u64::from(timeout),
    };
    let buf = Bytes::copy_from_slice(data);
    let mut s = Stream::new(cfg.clone());
    let mut out = Vec::new();
    let mut ended = false;
    let mut now = 0u64;
    let mut i = 5;
    while i < data.len() {
        let kind = data[i];
        let (Some(seq), Some(dt), Some(len)) = (
            u32_at(data, i + 1),
            u16_at(data, i + 5),
            u16_at(data, i + 7),
        ) else {
            break;
        };
        i += 9;
        now += u64::from(dt);
        if kind & 0x80 != 0 {
            s.flush(&mut out);
            check(&s, &cfg, &mut out, &mut ended);
        }
        if kind & 0x40 != 0 {
            s.poll(now, &mut out);
        } else {
            let end = (i + usize::from(len)).min(data.len());
            let payload = buf.slice(i..end);
            i = end;
            s.push(seq, TcpFlags(kind & 0x1F), payload, now, &mut out);
        }
        check(&s, &cfg, &mut out, &mut ended);
    }
    s.flush(&mut out);
    check(&s, &cfg, &mut out, &mut ended);
    assert_eq!(s.buffered_bytes(), 0, "flush releases everything");
});
