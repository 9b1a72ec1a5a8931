//! Link layers and IP: one captured frame in, at most one TCP [`Segment`] out.
//!
//! Owns the mapping from pcap link types to etherparse entry points and the packet-level drop
//! counters. Headers are parsed with etherparse in its "lax" mode, so a frame cut short by the
//! capture's snap length still yields the bytes it has (the missing tail then shows up as a
//! counted reassembly gap). Checksums are never verified: with checksum offload the captured
//! copy of an outgoing packet carries a checksum the NIC fills in later, and dropping it would
//! invent a loss.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use etherparse::{EtherType, IpFragOffset, IpNumber, LaxNetSlice, LaxSlicedPacket, TcpSlice};

use super::frag::{Defragmenter, FragKey};
use crate::capture::{Segment, TcpFlags};

/// Link types this source understands (values from the tcpdump.org LINKTYPE registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1), with 802.1Q / 802.1ad / QinQ tags.
    Ethernet,
    /// LINKTYPE_NULL (0) and LINKTYPE_LOOP (108): a 4-byte address family, then IP.
    Loopback,
    /// LINKTYPE_RAW (101), its historical DLT values 12 and 14, LINKTYPE_IPV4 (228), LINKTYPE_IPV6 (229).
    RawIp,
    /// LINKTYPE_LINUX_SLL (113): 16-byte cooked header.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): 20-byte cooked header.
    LinuxSll2,
}

impl LinkType {
    pub fn from_linktype(n: u32) -> Option<Self> {
        Some(match n {
            1 => Self::Ethernet,
            0 | 108 => Self::Loopback,
            12 | 14 | 101 | 228 | 229 => Self::RawIp,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            _ => return None,
        })
    }
}

/// Per-packet counters. `packets` = `tcp_packets` + `fragments` + `non_ip` + `non_tcp` +
/// `malformed` + `unsupported_link` (checked by [`DecodeStats::balanced`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Frames read from the file.
    pub packets: u64,
    /// Unfragmented TCP packets turned into segments.
    pub tcp_packets: u64,
    /// IP fragments (accounted in [`super::frag::FragStats`]).
    pub fragments: u64,
    /// Frames that carry no IP (ARP, LLDP, ...).
    pub non_ip: u64,
    /// IP packets that are not TCP (UDP, ICMP, ...).
    pub non_tcp: u64,
    /// Frames whose link, IP or TCP header could not be parsed.
    pub malformed: u64,
    /// Frames of a link type this source does not decode.
    pub unsupported_link: u64,
    /// Segments whose payload was cut by the capture's snap length (delivered as far as captured).
    pub snaplen_truncated: u64,
    /// Reassembled datagrams whose TCP header was bad.
    pub malformed_reassembled: u64,
    /// GRE headers removed (the inner packet is then counted like any other).
    pub gre_decapsulated: u64,
    /// Segments produced (`tcp_packets` + good reassembled datagrams).
    pub segments: u64,
}

impl DecodeStats {
    pub fn balanced(&self) -> bool {
        self.packets
            == self.tcp_packets
                + self.fragments
                + self.non_ip
                + self.non_tcp
                + self.malformed
                + self.unsupported_link
    }
}

/// Turns frames into segments; holds the IP fragment buffers.
pub struct PacketDecoder {
    pub defrag: Defragmenter,
    pub stats: DecodeStats,
}

impl Default for PacketDecoder {
    fn default() -> Self {
        // 1024 datagrams of at most 64 KiB each bounds fragment memory at 64 MiB; 30 s is Linux's
        // default `ipfrag_time`.
        Self::new(1024, 30_000_000_000)
    }
}

impl PacketDecoder {
    pub fn new(max_datagrams: usize, frag_timeout_ns: u64) -> Self {
        Self {
            defrag: Defragmenter::new(max_datagrams, frag_timeout_ns),
            stats: DecodeStats::default(),
        }
    }

    /// Decodes one frame of link type `link` (None: unsupported) captured at `ts_ns`.
    pub fn decode(&mut self, link: Option<LinkType>, ts_ns: u64, data: &[u8]) -> Option<Segment> {
        self.stats.packets += 1;
        let Some(link) = link else {
            self.stats.unsupported_link += 1;
            return None;
        };
        let sliced = match link {
            LinkType::Ethernet => LaxSlicedPacket::from_ethernet(data).ok(),
            // The family word is in the writer's byte order (NULL) or big endian (LOOP), and its
            // IPv6 value differs between BSDs; the IP version nibble is unambiguous, so use that.
            LinkType::Loopback => data.get(4..).and_then(|d| LaxSlicedPacket::from_ip(d).ok()),
            LinkType::RawIp => LaxSlicedPacket::from_ip(data).ok(),
            LinkType::LinuxSll => cooked(data, 16, 14),
            LinkType::LinuxSll2 => cooked(data, 20, 0),
        };
        let Some(sliced) = sliced else {
            self.stats.malformed += 1;
            return None;
        };
        self.net(&sliced, ts_ns, 0)
    }

    /// IP layer of a sliced frame; `depth` counts GRE encapsulations already removed.
    fn net(&mut self, sliced: &LaxSlicedPacket<'_>, ts_ns: u64, depth: u8) -> Option<Segment> {
        let (src, dst, p, fragmented) = match &sliced.net {
            Some(LaxNetSlice::Ipv4(v4)) => {
                let h = v4.header();
                let p = v4.payload();
                let (src, dst) = (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                );
                if p.fragmented && p.ip_number == IpNumber::TCP {
                    self.stats.fragments += 1;
                    let key = FragKey {
                        src,
                        dst,
                        id: h.identification().into(),
                        proto: 6,
                    };
                    let whole = self.defrag.add(
                        key,
                        h.fragments_offset(),
                        h.more_fragments(),
                        p.payload,
                        ts_ns,
                    )?;
                    return self.reassembled(src, dst, &whole, ts_ns);
                }
                (src, dst, p, p.fragmented)
            }
            Some(LaxNetSlice::Ipv6(v6)) => {
                let h = v6.header();
                let p = v6.payload();
                let (src, dst) = (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                );
                let frag = ipv6_fragment(h.next_header().0, v6.extensions().slice());
                let fragmenting = frag.is_some_and(|(off, more, _)| off != 0 || more);
                if let Some((off, more, id)) = frag.filter(|_| fragmenting)
                    && p.ip_number == IpNumber::TCP
                {
                    self.stats.fragments += 1;
                    let offset = IpFragOffset::try_new(off).ok()?;
                    let key = FragKey {
                        src,
                        dst,
                        id,
                        proto: 6,
                    };
                    let whole = self.defrag.add(key, offset, more, p.payload, ts_ns)?;
                    return self.reassembled(src, dst, &whole, ts_ns);
                }
                (src, dst, p, fragmenting)
            }
            Some(LaxNetSlice::Arp(_)) => {
                self.stats.non_ip += 1;
                return None;
            }
            None => {
                if sliced.stop_err.is_some() {
                    self.stats.malformed += 1;
                } else {
                    self.stats.non_ip += 1;
                }
                return None;
            }
        };
        if p.ip_number == IpNumber::GRE && !fragmented && depth < MAX_GRE_DEPTH {
            // GRE (RFC 2784/2890), e.g. ERSPAN-less port mirroring through a tunnel: decode the
            // inner packet. Fragmented GRE datagrams are not reassembled (counted as non-TCP).
            return match gre_inner(p.payload) {
                Some(inner) => {
                    self.stats.gre_decapsulated += 1;
                    self.net(&inner, ts_ns, depth + 1)
                }
                None => {
                    self.stats.malformed += 1;
                    None
                }
            };
        }
        if p.ip_number != IpNumber::TCP || fragmented {
            self.stats.non_tcp += 1;
            return None;
        }
        if p.incomplete {
            self.stats.snaplen_truncated += 1;
        }
        match tcp_segment(src, dst, p.payload, ts_ns) {
            Some(seg) => {
                self.stats.tcp_packets += 1;
                self.stats.segments += 1;
                Some(seg)
            }
            None => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    /// End of input: fragments still waiting are lost (counted).
    pub fn finish(&mut self) {
        self.defrag.finish();
    }

    fn reassembled(&mut self, src: IpAddr, dst: IpAddr, tcp: &[u8], ts_ns: u64) -> Option<Segment> {
        let seg = tcp_segment(src, dst, tcp, ts_ns);
        match seg {
            Some(_) => self.stats.segments += 1,
            None => self.stats.malformed_reassembled += 1,
        }
        seg
    }
}

/// The Fragment header of an IPv6 packet, if its extension chain has one: (offset in 8-byte
/// units, more fragments, identification).
///
/// Hand-written, bounds-checked walk over the chain instead of etherparse's iterator: in 0.19
/// that iterator reads out of bounds (unchecked slicing, found by the `pcap_pipeline` fuzz
/// target) on a lax-parsed packet whose payload length is 0 and whose hop-by-hop header
/// claims more bytes than there are; and 0.19 decodes the Fragment header's offset and M flag
/// from the wrong bits (fixed in 0.21). RFC 8200 4.5: 13-bit offset, 2 reserved bits, M last.
fn ipv6_fragment(first: u8, exts: &[u8]) -> Option<(u16, bool, u32)> {
    let (mut next, mut pos) = (first, 0usize);
    // At most a handful of extension headers precede a fragment header (RFC 8200 4.1).
    for _ in 0..8 {
        let h = exts.get(pos..)?;
        match next {
            44 => {
                let word = u16::from_be_bytes([*h.get(2)?, *h.get(3)?]);
                let id = u32::from_be_bytes(h.get(4..8)?.try_into().ok()?);
                return Some((word >> 3, word & 1 == 1, id));
            }
            // Hop-by-hop, routing, destination options: length in 8-byte units, not counting
            // the first 8 bytes.
            0 | 43 | 60 => {
                next = *h.first()?;
                pos += (usize::from(*h.get(1)?) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, not counting the first 2.
            51 => {
                next = *h.first()?;
                pos += (usize::from(*h.get(1)?) + 2) * 4;
            }
            _ => return None,
        }
    }
    None
}

/// GRE in GRE in GRE is where decoding stops (bounded recursion).
const MAX_GRE_DEPTH: u8 = 3;

/// The packet inside a GRE header: flags (C: checksum, K: key, S: sequence, 4 bytes each),
/// then the protocol type (an EtherType; 0x6558 is a whole Ethernet frame).
fn gre_inner(gre: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    let flags = u16::from_be_bytes([*gre.first()?, *gre.get(1)?]);
    let proto = u16::from_be_bytes([*gre.get(2)?, *gre.get(3)?]);
    let opt = [0x8000u16, 0x2000, 0x1000]
        .iter()
        .filter(|f| flags & **f != 0)
        .count()
        * 4;
    let inner = gre.get(4 + opt..)?;
    if proto == 0x6558 {
        LaxSlicedPacket::from_ethernet(inner).ok()
    } else {
        Some(LaxSlicedPacket::from_ether_type(EtherType(proto), inner))
    }
}

/// Linux cooked capture: skip `hdr` bytes, the EtherType is at `proto_at`.
fn cooked(data: &[u8], hdr: usize, proto_at: usize) -> Option<LaxSlicedPacket<'_>> {
    if data.len() < hdr {
        return None;
    }
    let proto = u16::from_be_bytes([data[proto_at], data[proto_at + 1]]);
    Some(LaxSlicedPacket::from_ether_type(
        EtherType(proto),
        &data[hdr..],
    ))
}

fn tcp_segment(src: IpAddr, dst: IpAddr, tcp: &[u8], ts_ns: u64) -> Option<Segment> {
    let t = TcpSlice::from_slice(tcp).ok()?;
    Some(Segment {
        src: SocketAddr::new(src, t.source_port()),
        dst: SocketAddr::new(dst, t.destination_port()),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        flags: TcpFlags(t.header_slice()[13]),
        direction: None,
        ts_ns,
        payload: Bytes::copy_from_slice(t.payload()),
    })
}
