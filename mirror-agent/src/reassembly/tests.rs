//! Unit tests: one per case of the reassembly policy. The model and property tests are in
//! `model_tests.rs`.

use bytes::Bytes;

use super::{Stream, StreamConfig, StreamEvent};
use crate::capture::TcpFlags;

const NONE: TcpFlags = TcpFlags(TcpFlags::ACK);
const SYN: TcpFlags = TcpFlags(TcpFlags::SYN);
const FIN: TcpFlags = TcpFlags(TcpFlags::FIN | TcpFlags::ACK);
const RST: TcpFlags = TcpFlags(TcpFlags::RST);

/// Checks the accounting identities documented on `StreamStats`.
pub(super) fn assert_accounting(s: &Stream) {
    let st = s.stats();
    assert_eq!(
        st.bytes_offered,
        st.bytes_delivered + st.discarded_bytes() + s.buffered_bytes() as u64,
        "every offered byte is delivered, dropped with a counter, or held: {st:?}"
    );
    assert_eq!(
        s.stream_offset(),
        st.bytes_delivered + st.gap_bytes,
        "{st:?}"
    );
    assert_eq!(
        st.gaps,
        st.gaps_timeout + st.gaps_bound + st.gaps_end,
        "{st:?}"
    );
    assert!(
        st.overlap_conflict_bytes <= st.retransmitted_bytes,
        "{st:?}"
    );
}

struct H {
    s: Stream,
    out: Vec<StreamEvent>,
}

impl H {
    fn new() -> Self {
        Self::with(StreamConfig::default())
    }

    fn with(cfg: StreamConfig) -> Self {
        Self {
            s: Stream::new(cfg),
            out: Vec::new(),
        }
    }

    fn push(&mut self, seq: u32, flags: TcpFlags, data: &[u8], ts: u64) {
        self.s
            .push(seq, flags, Bytes::copy_from_slice(data), ts, &mut self.out);
        assert_accounting(&self.s);
        assert!(self.s.buffered_bytes() <= self.s.config().max_buffered_bytes);
    }

    /// The events so far, with consecutive data merged, as a readable trace.
    fn trace(&mut self) -> Vec<String> {
        let mut t: Vec<String> = Vec::new();
        for ev in self.out.drain(..) {
            match ev {
                StreamEvent::Data { bytes, .. } => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    match t.last_mut() {
                        Some(last) if last.starts_with('"') => {
                            last.pop();
                            last.push_str(&text);
                            last.push('"');
                        }
                        _ => t.push(format!("\"{text}\"")),
                    }
                }
                StreamEvent::Gap { len, .. } => t.push(format!("gap {len}")),
                StreamEvent::End { reset } => t.push(if reset { "rst" } else { "fin" }.into()),
            }
        }
        t
    }
}

#[test]
fn in_order_data_is_delivered_without_copy() {
    let mut s = Stream::new(StreamConfig::default());
    let mut out = Vec::new();
    let payload = Bytes::from_static(b"GET / HTTP/1.1\r\n");
    s.push(1000, SYN, Bytes::new(), 1, &mut out);
    s.push(1001, NONE, payload.clone(), 2, &mut out);
    let [StreamEvent::Data { bytes, ts_ns: 2 }] = &out[..] else {
        panic!("one data event expected, got {out:?}")
    };
    assert_eq!(
        bytes.as_ptr(),
        payload.as_ptr(),
        "delivered bytes must be the pushed buffer"
    );
    assert_eq!(s.midstream(), Some(false));
    assert_accounting(&s);
}

#[test]
fn syn_sets_isn_and_fast_open_data_starts_after_it() {
    let mut h = H::new();
    h.push(5000, SYN, b"abc", 1); // TFO: data at 5001
    h.push(5004, NONE, b"def", 2);
    h.push(5001, NONE, b"abc", 3); // retransmission of the SYN data
    assert_eq!(h.trace(), ["\"abcdef\""]);
    assert_eq!(h.s.stats().retransmitted_bytes, 3);
    assert_eq!(h.s.stats().bytes_delivered, 6);
}

#[test]
fn midstream_pickup_starts_at_first_segment_and_counts_earlier_bytes() {
    let mut h = H::new();
    h.push(100, NONE, b"GET ", 1);
    h.push(96, NONE, b"xxx\n", 2); // wholly before the start
    h.push(98, NONE, b"x\nGET /", 3); // straddles: 2 before start, 4 retransmitted, 1 new
    assert_eq!(h.trace(), ["\"GET /\""]);
    let st = h.s.stats();
    assert_eq!(h.s.midstream(), Some(true));
    assert_eq!(st.before_start_bytes, 6);
    assert_eq!(st.retransmitted_bytes, 4);
}

#[test]
fn bare_ack_does_not_start_the_stream() {
    let mut h = H::new();
    h.push(50, NONE, b"", 1);
    assert_eq!(h.s.midstream(), None);
    h.push(100, NONE, b"abc", 2);
    h.push(97, NONE, b"xyz", 3);
    assert_eq!(h.trace(), ["\"abc\""]);
    assert_eq!(h.s.stats().before_start_bytes, 3);
}

#[test]
fn sequence_numbers_wrap() {
    let mut h = H::new();
    let isn = 0xFFFF_FFF8;
    h.push(isn, SYN, b"", 1);
    // offsets 0..7 at seq FFFFFFF9..FFFFFFFF, then 7.. wraps to 0.
    h.push(3, NONE, b"3333", 2); // offset 11
    h.push(0xFFFF_FFFF, NONE, b"2222", 3); // offset 6..10 crosses the wrap
    h.push(isn.wrapping_add(1), NONE, b"111111", 4);
    h.push(7, NONE, b"4", 5);
    assert_eq!(h.trace(), ["\"111111222233334\""]);
    assert_eq!(h.s.stream_offset(), 15);
    // A retransmission from before the wrap is still recognised as old, not far ahead.
    h.push(0xFFFF_FFFA, NONE, b"11", 6);
    assert_eq!(h.s.stats().retransmitted_bytes, 2);
    assert_eq!(h.trace(), Vec::<String>::new());
}

#[test]
fn out_of_order_segments_wait_for_the_hole() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(5, NONE, b"cc", 2);
    h.push(3, NONE, b"bb", 3);
    assert_eq!(h.trace(), Vec::<String>::new());
    assert_eq!(h.s.buffered_bytes(), 4);
    assert_eq!(h.s.buffered_segments(), 2);
    h.push(1, NONE, b"aa", 4);
    assert_eq!(h.trace(), ["\"aabbcc\""]);
    assert_eq!(h.s.buffered_bytes(), 0);
}

/// Most connections never reorder: their streams carry no out-of-order store, only a null
/// pointer (two per connection, 10000 connections in issue 17's memory target); the store
/// comes with the first piece held and stays.
#[test]
fn the_out_of_order_store_is_allocated_by_the_first_piece_held() {
    use super::buffer::OutOfOrder;
    assert_eq!(
        std::mem::size_of::<OutOfOrder>(),
        std::mem::size_of::<usize>()
    );
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(1, NONE, b"aa", 2);
    h.push(3, NONE, b"bb", 3);
    assert_eq!(h.trace(), ["\"aabb\""]);
    assert!(
        !h.s.out_of_order_allocated(),
        "in-order bytes need no store"
    );
    h.push(7, NONE, b"dd", 4);
    assert!(h.s.out_of_order_allocated());
    assert_eq!(h.s.buffered_bytes(), 2);
    h.push(5, NONE, b"cc", 5);
    assert_eq!(h.trace(), ["\"ccdd\""]);
    assert_eq!(h.s.buffered_bytes(), 0);
    assert!(h.s.out_of_order_allocated(), "kept for the stream's life");
}

#[test]
fn data_events_carry_the_time_of_their_first_copy() {
    let mut s = Stream::new(StreamConfig::default());
    let mut out = Vec::new();
    s.push(0, SYN, Bytes::new(), 1, &mut out);
    s.push(3, NONE, Bytes::from_static(b"bb"), 20, &mut out);
    s.push(1, NONE, Bytes::from_static(b"aabb"), 30, &mut out);
    let times: Vec<(usize, u64)> = out
        .iter()
        .map(|e| match e {
            StreamEvent::Data { bytes, ts_ns } => (bytes.len(), *ts_ns),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(times, [(2, 30), (2, 20)]);
}

#[test]
fn retransmissions_are_counted_and_dropped() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(1, NONE, b"hello", 2);
    h.push(1, NONE, b"hello", 3);
    h.push(3, NONE, b"XXXwo", 4); // 3 old (not comparable any more), 2 new
    assert_eq!(h.trace(), ["\"hellowo\""]);
    let st = h.s.stats();
    assert_eq!(st.retransmitted_bytes, 8);
    assert_eq!(
        st.overlap_conflict_bytes, 0,
        "delivered bytes are not retained to compare"
    );
}

#[test]
fn overlaps_keep_the_first_copy_and_count_conflicts() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(5, NONE, b"EFG", 2); // offsets 4..7
    h.push(9, NONE, b"IJ", 3); // offsets 8..10
    // offsets 2..10: covers both held pieces with different bytes, fills the hole at 7.
    h.push(3, NONE, b"cdXFxH!J", 4);
    assert_eq!(h.trace(), Vec::<String>::new());
    h.push(1, NONE, b"ab", 5);
    assert_eq!(h.trace(), ["\"abcdEFGHIJ\""]);
    let st = h.s.stats();
    assert_eq!(st.retransmitted_bytes, 5);
    assert_eq!(st.overlap_conflict_bytes, 3, "E/X, G/x and I/! differ");
}

#[test]
fn fin_ends_the_stream_once_everything_before_it_is_delivered() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(4, FIN, b"def", 2); // FIN at offset 6
    assert_eq!(h.trace(), Vec::<String>::new());
    h.push(1, NONE, b"abc", 3);
    assert_eq!(h.trace(), ["\"abcdef\"", "fin"]);
    assert!(h.s.is_ended());
    h.push(7, NONE, b"late", 4);
    h.push(1, NONE, b"abc", 5);
    assert_eq!(h.trace(), Vec::<String>::new());
    assert_eq!(h.s.stats().after_end_bytes, 7);
}

#[test]
fn bytes_beyond_the_fin_are_dropped_even_when_held_earlier() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(6, NONE, b"xyz", 2); // offsets 5..8, beyond the FIN that comes next
    h.push(3, FIN, b"cd", 3); // FIN at offset 4
    assert_eq!(h.s.buffered_bytes(), 2);
    assert_eq!(h.s.stats().after_end_bytes, 3);
    h.push(4, FIN, b"dEXTRA", 4); // a second FIN further on: the first one wins
    h.push(1, NONE, b"ab", 5);
    assert_eq!(h.trace(), ["\"abcd\"", "fin"]);
    assert_eq!(h.s.stats().after_end_bytes, 8);
}

#[test]
fn fin_behind_the_delivery_point_is_ignored() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(1, NONE, b"abcdef", 2);
    h.push(2, FIN, b"", 3);
    assert!(!h.s.is_ended());
    h.push(7, FIN, b"g", 4);
    assert_eq!(h.trace(), ["\"abcdefg\"", "fin"]);
}

#[test]
fn rst_ends_at_once_releasing_what_is_held() {
    let mut h = H::new();
    h.push(0, SYN, b"", 1);
    h.push(1, NONE, b"ab", 2);
    h.push(5, NONE, b"ef", 3); // hole at offsets 2..4
    h.push(7, RST, b"diag", 4);
    assert_eq!(h.trace(), ["\"ab\"", "gap 2", "\"ef\"", "rst"]);
    h.push(3, NONE, b"cd", 5);
    assert_eq!(h.trace(), Vec::<String>::new());
    let st = h.s.stats();
    assert_eq!(st.after_end_bytes, 6, "RST payload and data after it");
    assert_eq!((st.gaps, st.gaps_end), (1, 1));
}

#[test]
fn rst_before_anything_ends_the_stream() {
    let mut h = H::new();
    h.push(42, RST, b"", 1);
    assert_eq!(h.trace(), ["rst"]);
    h.push(43, NONE, b"x", 2);
    assert_eq!(h.s.stats().after_end_bytes, 1);
}

fn timeout_cfg(ns: u64) -> StreamConfig {
    StreamConfig {
        gap_timeout_ns: ns,
        ..StreamConfig::default()
    }
}

#[test]
fn hole_is_declared_lost_by_the_timestamp_of_a_later_segment() {
    let mut h = H::with(timeout_cfg(100));
    h.push(0, SYN, b"", 0);
    h.push(1, NONE, b"ab", 10);
    h.push(5, NONE, b"ef", 20); // hole 2..4 known since 20
    h.push(7, NONE, b"gh", 119);
    assert_eq!(h.trace(), ["\"ab\""]);
    h.push(9, NONE, b"ij", 120);
    assert_eq!(h.trace(), ["gap 2", "\"efghij\""]);
    h.push(3, NONE, b"cd", 121); // the lost bytes arrive too late
    assert_eq!(h.trace(), Vec::<String>::new());
    let st = h.s.stats();
    assert_eq!((st.gaps, st.gaps_timeout, st.gap_bytes), (1, 1, 2));
    assert_eq!(st.retransmitted_bytes, 2);
}

#[test]
fn hole_is_declared_lost_by_poll() {
    let mut h = H::with(timeout_cfg(100));
    h.push(0, SYN, b"", 0);
    h.push(5, NONE, b"ef", 20);
    h.push(9, NONE, b"ij", 30);
    h.s.poll(119, &mut h.out);
    assert_eq!(
        h.trace(),
        Vec::<String>::new(),
        "not yet: the hole waits up to the timeout"
    );
    h.s.poll(125, &mut h.out);
    // The first hole is known since 20; the second since 30, so it waits on.
    assert_eq!(h.trace(), ["gap 4", "\"ef\""]);
    h.s.poll(130, &mut h.out);
    assert_eq!(h.trace(), ["gap 2", "\"ij\""]);
    assert_accounting(&h.s);
}

#[test]
fn missing_tail_before_a_fin_times_out_then_ends() {
    let mut h = H::with(timeout_cfg(100));
    h.push(0, SYN, b"", 0);
    h.push(1, NONE, b"ab", 10);
    h.push(5, FIN, b"", 50); // bytes 2..4 missing, FIN at 4
    h.s.poll(149, &mut h.out);
    assert_eq!(h.trace(), ["\"ab\""]);
    h.s.poll(150, &mut h.out);
    assert_eq!(h.trace(), ["gap 2", "fin"]);
}

#[test]
fn full_byte_buffer_declares_the_oldest_hole_lost() {
    let mut h = H::with(StreamConfig {
        max_buffered_bytes: 6,
        ..StreamConfig::default()
    });
    h.push(0, SYN, b"", 0);
    h.push(3, NONE, b"cc", 1); // hole at 0..2
    h.push(7, NONE, b"ee", 2); // hole at 4..6
    h.push(11, NONE, b"gg", 3); // 6 bytes held: at the bound, fine
    assert_eq!(h.trace(), Vec::<String>::new());
    h.push(13, NONE, b"h", 4); // 7 > 6: the first hole goes
    assert_eq!(h.trace(), ["gap 2", "\"cc\""]);
    assert_eq!(h.s.stats().gaps_bound, 1);
    assert_eq!(h.s.buffered_bytes(), 5);
}

#[test]
fn too_many_pieces_declares_the_oldest_hole_lost() {
    let mut h = H::with(StreamConfig {
        max_segments: 2,
        ..StreamConfig::default()
    });
    h.push(0, SYN, b"", 0);
    h.push(3, NONE, b"c", 1);
    h.push(5, NONE, b"e", 2);
    h.push(7, NONE, b"g", 3);
    assert_eq!(h.trace(), ["gap 2", "\"c\""]);
    assert_eq!(h.s.buffered_segments(), 2);
}

#[test]
fn flush_declares_every_hole_and_releases_everything() {
    let mut h = H::new();
    h.push(0, SYN, b"", 0);
    h.push(1, NONE, b"a", 1);
    h.push(3, NONE, b"c", 2);
    h.push(6, NONE, b"f", 3);
    h.s.flush(&mut h.out);
    assert_eq!(h.trace(), ["\"a\"", "gap 1", "\"c\"", "gap 2", "\"f\""]);
    assert!(
        !h.s.is_ended(),
        "no FIN seen: the stream did not end, the input did"
    );
    assert_eq!(h.s.stats().gaps_end, 2);
    assert_accounting(&h.s);
}

#[test]
fn flush_runs_up_to_a_pending_fin_and_ends() {
    let mut h = H::new();
    h.push(0, SYN, b"", 0);
    h.push(3, FIN, b"c", 1);
    h.s.flush(&mut h.out);
    assert_eq!(h.trace(), ["gap 2", "\"c\"", "fin"]);
    h.s.flush(&mut h.out);
    assert_eq!(h.trace(), Vec::<String>::new());
}

#[test]
fn shed_releases_what_is_held_but_keeps_waiting_for_the_tail() {
    let mut h = H::new();
    h.push(0, SYN, b"", 0);
    h.push(3, NONE, b"c", 1);
    h.push(6, FIN, b"", 2); // FIN at offset 5: bytes 3..5 still to come
    h.s.shed(7, &mut h.out);
    assert_eq!(h.trace(), ["gap 2", "\"c\""]);
    assert_eq!(h.s.buffered_bytes(), 0);
    assert_eq!(h.s.stats().gaps_bound, 1);
    h.push(4, NONE, b"de", 8);
    assert_eq!(h.trace(), ["\"de\"", "fin"]);
    assert_accounting(&h.s);
}

#[test]
fn segment_beyond_any_window_is_dropped_as_overflow() {
    let mut h = H::new();
    h.push(0, SYN, b"", 0);
    h.push(1 + (1 << 30), NONE, b"far", 1);
    h.push(1 << 31, FIN, b"far", 2);
    assert_eq!(h.s.stats().overflow_bytes, 6);
    assert_eq!(h.s.buffered_bytes(), 0);
    h.push(1, NONE, b"ok", 3);
    assert_eq!(h.trace(), ["\"ok\""]);
    assert!(!h.s.is_ended(), "a FIN beyond the window is ignored");
}

#[test]
fn gap_timestamps_are_the_time_of_the_declaration() {
    let mut s = Stream::new(timeout_cfg(10));
    let mut out = Vec::new();
    s.push(0, SYN, Bytes::new(), 0, &mut out);
    s.push(3, NONE, Bytes::from_static(b"c"), 5, &mut out);
    s.push(4, NONE, Bytes::from_static(b"d"), 40, &mut out);
    assert_eq!(out[0], StreamEvent::Gap { len: 2, ts_ns: 40 });
}

/// A flood of tiny segments, each leaving a hole, in the worst orders: memory stays within the
/// bounds after every push and every byte is accounted for.
#[test]
fn memory_stays_bounded_under_a_flood_of_tiny_out_of_order_segments() {
    let cfg = StreamConfig {
        max_buffered_bytes: 4096,
        max_segments: 64,
        gap_timeout_ns: u64::MAX,
    };
    for order in ["ascending", "descending"] {
        let mut s = Stream::new(cfg.clone());
        let mut out = Vec::new();
        s.push(0, SYN, Bytes::new(), 0, &mut out);
        let payload = Bytes::from_static(b"xy");
        let n: u32 = 100_000;
        for i in 0..n {
            // Two bytes every three: each segment leaves a one-byte hole before it.
            let k = if order == "ascending" { i } else { n - 1 - i };
            s.push(2 + 3 * k, NONE, payload.clone(), u64::from(i), &mut out);
            assert!(s.buffered_segments() <= cfg.max_segments, "{order}: pieces");
            assert!(
                s.buffered_bytes() <= cfg.max_buffered_bytes,
                "{order}: bytes"
            );
            out.clear();
        }
        assert_accounting(&s);
        let st = s.stats().clone();
        assert!(st.gaps_bound > 0, "{order}: the bound must have been hit");
        s.flush(&mut out);
        assert_eq!(s.buffered_bytes(), 0);
        assert_accounting(&s);
    }
}

/// One stream that drops bytes for every reason there is: each counter moves, and the
/// identity `offered = delivered + discarded + held` holds at every step (checked in `H::push`).
#[test]
fn accounting_identity_holds_with_every_kind_of_drop() {
    let mut h = H::with(timeout_cfg(100));
    h.push(1000, SYN, b"", 0);
    h.push(996, NONE, b"xxxxxa", 1); // offsets -5..1: 5 before the start, "a" new
    h.push(1001, NONE, b"abc", 2); // "a" again (retransmitted), "bc" new
    h.push(1006, NONE, b"fg", 3); // held: hole at offsets 3..5
    h.push(1005, NONE, b"eXgh", 4); // "X" conflicts with the held "f", "g" is a duplicate
    assert_eq!(h.s.buffered_bytes(), 4);
    h.push(1004 + (1 << 30), NONE, b"far", 5); // 2^30 past the delivery point (offset 3)
    h.push(1009, FIN, b"ij", 200); // the hole at offset 3 times out first
    h.push(1011, NONE, b"after", 201);
    assert_eq!(h.trace(), ["\"abc\"", "gap 1", "\"efghij\"", "fin"]);
    let st = h.s.stats();
    assert_eq!(st.bytes_offered, 6 + 3 + 2 + 4 + 3 + 2 + 5);
    assert_eq!(st.bytes_delivered, 9);
    assert_eq!(st.before_start_bytes, 5);
    assert_eq!(st.retransmitted_bytes, 3);
    assert_eq!(st.overlap_conflict_bytes, 1);
    assert_eq!(st.overflow_bytes, 3);
    assert_eq!(st.after_end_bytes, 5);
    assert_eq!((st.gaps, st.gap_bytes, st.gaps_timeout), (1, 1, 1));
    assert_eq!(h.s.buffered_bytes(), 0);
}
