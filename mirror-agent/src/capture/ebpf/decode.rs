//! Decoding of ring-buffer records into [`Segment`]s. Pure and unprivileged, so it is unit-tested.
//! (Not called `record`: [`crate::record`] is the `--record` output.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mirror_common::{HEADER_LEN, RecordHeader, direction, family, record_flags};

use crate::capture::{Segment, SegmentDirection, SegmentRef, TcpFlags};

/// Decodes ring records into segments and counts the ones it must refuse.
#[derive(Debug, Default)]
pub struct RingDecoder {
    wall_offset_ns: u64,
    malformed: u64,
}

impl RingDecoder {
    /// `wall_offset_ns` turns the kernel's stamps into Unix time (see [`decode`]).
    pub fn new(wall_offset_ns: u64) -> Self {
        Self {
            wall_offset_ns,
            malformed: 0,
        }
    }

    /// Hands the segment `record` holds to `f`, borrowed from the record, or counts the record
    /// as malformed.
    pub fn visit(&mut self, record: &[u8], f: impl FnOnce(SegmentRef<'_>)) {
        match decode_ref(record, self.wall_offset_ns) {
            Some(seg) => f(seg),
            None => {
                self.malformed += 1;
                // The kernel writes only well-formed records; a bad one means a version skew
                // between the agent and the object, so it repeats per packet: warned once,
                // counted always.
                if self.malformed == 1 {
                    tracing::warn!(len = record.len(), "malformed ring-buffer record (counted)");
                } else {
                    tracing::trace!(len = record.len(), "malformed ring-buffer record");
                }
            }
        }
    }

    /// Records refused so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// Reads the header at the start of a record.
pub fn header(record: &[u8]) -> Option<RecordHeader> {
    if record.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: RecordHeader is repr(C) plain integers (any bit pattern valid) and the slice holds
    // at least its size; read_unaligned because ring records are only 8-byte aligned by contract.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<RecordHeader>()) })
}

/// One record (header + payload) to a segment. `None` when the record is malformed.
///
/// A record holds one chunk of an skb (see [`RecordHeader`]): the segment's `seq` is the skb's
/// advanced by the chunk's offset (wrapping), SYN stays only on the first chunk (it takes the
/// sequence number before the payload), FIN, RST and PSH only on the last (they come after it).
/// A one-copy record may be longer than `captured_len` (its size class); the tail is ignored.
/// The payload is copied out because the ring slot is released right after. The kernel's
/// monotonic stamp plus `wall_offset_ns` ([`crate::capture::clock::wall_minus_monotonic_ns`])
/// becomes the segment's Unix time.
pub fn decode(record: &[u8], wall_offset_ns: u64) -> Option<Segment> {
    decode_ref(record, wall_offset_ns).map(|s| s.to_owned())
}

/// [`decode`] without copying: the segment borrows its payload from the record.
pub fn decode_ref(record: &[u8], wall_offset_ns: u64) -> Option<SegmentRef<'_>> {
    let h = header(record)?;
    let payload = if h.flags & record_flags::SKIPPED != 0 {
        // Bytes of a body nobody needs, not copied: zeros stand for them (the framer counts
        // and drops them), so reassembly and framing see the stream's real length.
        ZEROS.get(..h.payload_len as usize)?
    } else {
        record.get(HEADER_LEN..HEADER_LEN + h.captured_len as usize)?
    };
    let mut flags = h.tcp_flags;
    if h.chunk_offset != 0 {
        flags &= !TcpFlags::SYN;
    }
    if !h.is_last_chunk() {
        flags &= !(TcpFlags::FIN | TcpFlags::RST | TcpFlags::PSH);
    }
    Some(SegmentRef {
        src: addr(h.family, &h.saddr, h.sport)?,
        dst: addr(h.family, &h.daddr, h.dport)?,
        seq: h.seq.wrapping_add(h.chunk_offset),
        ack: h.ack,
        flags: TcpFlags(flags),
        direction: hook_direction(h.direction),
        ts_ns: h.ts_ns.wrapping_add(wall_offset_ns),
        payload,
    })
}

/// What a skipped record's payload reads as: more than any skb carries (the kernel's largest GSO
/// packet is 512 KiB); a longer one is refused as malformed. In `.bss`: zero pages until read.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The hook that wrote the record tells who sent the packet (see `mirror_common::direction`). An
/// unknown value (a newer kernel object) is no evidence rather than a malformed record.
fn hook_direction(hook: u8) -> Option<SegmentDirection> {
    match hook {
        direction::INGRESS => Some(SegmentDirection::FromClient),
        direction::EGRESS => Some(SegmentDirection::FromServer),
        _ => None,
    }
}

fn addr(fam: u8, bytes: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match fam {
        family::IPV4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        family::IPV6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Encodes a record as the kernel does; used by tests and by tools that synthesize records.
pub fn encode(h: &RecordHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    // SAFETY: RecordHeader is repr(C) without padding (size asserted in mirror-common).
    let raw =
        unsafe { std::slice::from_raw_parts((h as *const RecordHeader).cast::<u8>(), HEADER_LEN) };
    out.extend_from_slice(raw);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(fam: u8, len: u32) -> RecordHeader {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if fam == family::IPV4 {
            saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
            daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        } else {
            saddr = Ipv6Addr::LOCALHOST.octets();
            daddr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        }
        RecordHeader {
            ts_ns: 42,
            saddr,
            daddr,
            sport: 40000,
            dport: 8080,
            seq: 0xffff_fff0,
            ack: 7,
            payload_len: len,
            captured_len: len,
            chunk_offset: 0,
            payload_offset: 66,
            tcp_flags: TcpFlags::ACK | TcpFlags::PSH,
            family: fam,
            direction: 0,
            flags: 0,
            _pad: [0; 2],
        }
    }

    /// The records the kernel writes for an skb of `payload` starting at `seq` with `flags`,
    /// cut into chunks of `chunk` bytes.
    fn chunks(seq: u32, flags: u8, payload: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut h = hdr(family::IPV4, payload.len() as u32);
        h.seq = seq;
        h.tcp_flags = flags;
        payload
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                h.chunk_offset = (i * chunk) as u32;
                h.captured_len = part.len() as u32;
                encode(&h, part)
            })
            .collect()
    }

    #[test]
    fn chunks_advance_seq_by_their_offset() {
        let payload: Vec<u8> = (0..200u8).collect();
        let segs: Vec<Segment> = chunks(1000, TcpFlags::ACK, &payload, 64)
            .iter()
            .map(|r| decode(r, 0).expect("valid chunk"))
            .collect();
        assert_eq!(segs.len(), 4);
        let seqs: Vec<u32> = segs.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1000, 1064, 1128, 1192]);
        let joined: Vec<u8> = segs.iter().flat_map(|s| s.payload.to_vec()).collect();
        assert_eq!(joined, payload);
    }

    #[test]
    fn chunk_seq_wraps() {
        let payload = vec![7u8; 3 * 65536];
        let segs: Vec<Segment> = chunks(u32::MAX - 10, TcpFlags::ACK, &payload, 65536)
            .iter()
            .map(|r| decode(r, 0).expect("valid chunk"))
            .collect();
        let seqs: Vec<u32> = segs.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [u32::MAX - 10, 65525, 131_061]);
    }

    #[test]
    fn syn_only_on_the_first_chunk_fin_rst_psh_only_on_the_last() {
        let all = TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST | TcpFlags::PSH | TcpFlags::ACK;
        let payload = vec![1u8; 150];
        let flags: Vec<u8> = chunks(5, all, &payload, 64)
            .iter()
            .map(|r| decode(r, 0).expect("valid chunk").flags.0)
            .collect();
        assert_eq!(
            flags,
            [
                TcpFlags::SYN | TcpFlags::ACK,
                TcpFlags::ACK,
                TcpFlags::FIN | TcpFlags::RST | TcpFlags::PSH | TcpFlags::ACK
            ]
        );
        // One chunk is first and last: every flag stays.
        let one = chunks(5, all, &payload, 1024);
        assert_eq!(decode(&one[0], 0).unwrap().flags.0, all);
        // No payload (a bare FIN): first and last.
        let mut h = hdr(family::IPV4, 0);
        h.tcp_flags = TcpFlags::FIN | TcpFlags::ACK;
        assert_eq!(
            decode(&encode(&h, b""), 0).unwrap().flags.0,
            TcpFlags::FIN | TcpFlags::ACK
        );
    }

    #[test]
    fn a_truncated_skb_ends_with_its_last_written_chunk() {
        // 8 chunks of a 600 KiB skb were written; the last carries TRUNCATED and the FIN.
        let mut h = hdr(family::IPV4, 600 << 10);
        h.tcp_flags = TcpFlags::FIN | TcpFlags::ACK;
        h.chunk_offset = 7 << 16;
        h.captured_len = 4;
        let seg = decode(&encode(&h, b"abcd"), 0).unwrap();
        assert!(!seg.flags.fin(), "not the end of the skb without the flag");
        h.flags = mirror_common::record_flags::TRUNCATED;
        let seg = decode(&encode(&h, b"abcd"), 0).unwrap();
        assert!(seg.flags.fin());
        assert_eq!(seg.seq, 0xffff_fff0u32.wrapping_add(7 << 16));
    }

    #[test]
    fn a_size_class_tail_after_the_payload_is_ignored() {
        let mut rec = encode(&hdr(family::IPV4, 5), b"GET /");
        rec.resize(HEADER_LEN + 256, 0xaa);
        let seg = decode(&rec, 0).expect("valid record");
        assert_eq!(&seg.payload[..], b"GET /");
    }

    #[test]
    fn decodes_ipv4_record() {
        let rec = encode(&hdr(family::IPV4, 5), b"GET /");
        let seg = decode(&rec, 0).expect("valid record");
        assert_eq!(seg.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(seg.dst, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(seg.seq, 0xffff_fff0);
        assert_eq!(seg.ack, 7);
        assert!(seg.flags.ack() && !seg.flags.syn());
        assert_eq!(seg.ts_ns, 42);
        assert_eq!(seg.direction, Some(SegmentDirection::FromClient));
        assert_eq!(&seg.payload[..], b"GET /");
    }

    #[test]
    fn the_hook_gives_the_direction() {
        let mut h = hdr(family::IPV4, 0);
        h.direction = direction::EGRESS;
        let seg = decode(&encode(&h, b""), 0).expect("valid record");
        assert_eq!(seg.direction, Some(SegmentDirection::FromServer));
        h.direction = 7;
        let seg = decode(&encode(&h, b""), 0).expect("unknown hook is not malformed");
        assert_eq!(seg.direction, None);
    }

    #[test]
    fn monotonic_stamp_becomes_unix_time() {
        // 1.5 s after boot, booted at 2024-01-01T00:00:00Z.
        let mut h = hdr(family::IPV4, 0);
        h.ts_ns = 1_500_000_000;
        let boot = 1_704_067_200_000_000_000;
        let seg = decode(&encode(&h, b""), boot).expect("valid record");
        assert_eq!(seg.ts_ns, 1_704_067_201_500_000_000);
    }

    #[test]
    fn decodes_ipv6_record() {
        let rec = encode(&hdr(family::IPV6, 3), b"abc");
        let seg = decode(&rec, 0).expect("valid record");
        assert_eq!(seg.src, "[::1]:40000".parse().unwrap());
        assert_eq!(seg.dst, "[fd00::2]:8080".parse().unwrap());
    }

    #[test]
    fn the_ring_decoder_counts_what_it_refuses() {
        let mut d = RingDecoder::new(1000);
        let mut out = Vec::new();
        d.visit(&encode(&hdr(family::IPV4, 5), b"GET /"), |seg| {
            out.push(seg.to_owned())
        });
        d.visit(&[0u8; 10], |seg| out.push(seg.to_owned()));
        d.visit(&encode(&hdr(9, 0), b""), |seg| out.push(seg.to_owned()));
        d.visit(&encode(&hdr(family::IPV6, 3), b"abc"), |seg| {
            out.push(seg.to_owned())
        });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ts_ns, 1042);
        assert_eq!(d.malformed(), 2);
    }

    #[test]
    fn rejects_short_and_bad_records() {
        assert!(decode(&[0u8; 10], 0).is_none());
        // Header says 10 bytes follow, only 3 do.
        let mut h = hdr(family::IPV4, 10);
        h.captured_len = 10;
        assert!(decode(&encode(&h, b"abc"), 0).is_none());
        // Unknown family.
        assert!(decode(&encode(&hdr(9, 0), b""), 0).is_none());
    }

    #[test]
    fn a_skipped_record_reads_as_zeros_of_the_payload_length() {
        let mut h = hdr(family::IPV4, 0);
        h.payload_len = 70_000;
        h.captured_len = 0;
        h.flags = record_flags::SKIPPED;
        h.tcp_flags = TcpFlags::FIN | TcpFlags::ACK;
        let rec = encode(&h, &[]);
        let seg = decode_ref(&rec, 0).expect("decodes");
        assert_eq!(seg.payload.len(), 70_000);
        assert!(seg.payload.iter().all(|&b| b == 0));
        // The only record of its skb: the FIN stays.
        assert!(seg.flags.fin());
        h.payload_len = 2 << 20;
        assert!(
            decode_ref(&encode(&h, &[]), 0).is_none(),
            "longer than any skb"
        );
    }
}
