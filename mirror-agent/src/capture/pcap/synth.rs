//! Synthesized captures for tests and benchmarks.
//!
//! Owns building TCP conversations as [`Segment`]s and writing them as pcap or pcapng files with
//! any supported link layer (etherparse builds the IP and TCP headers, pcap-file the container).
//! Nothing here runs in production: it is compiled for the crate's unit tests and with feature
//! `synth` (the integration tests, the tests crate and the pipeline benchmark enable it), so
//! they can make the inputs they need without committing binary files.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::{DataLink, TsResolution};

use crate::capture::{Segment, TcpFlags};

/// Builds the segments of one TCP connection, both directions, sequence numbers tracked.
pub struct Conversation {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Next sequence number of each side: [client, server].
    pub next_seq: [u32; 2],
    pub ts_ns: u64,
    /// Time added per segment.
    pub step_ns: u64,
    pub segments: Vec<Segment>,
}

impl Conversation {
    pub fn new(client: SocketAddr, server: SocketAddr, isn: [u32; 2]) -> Self {
        Self {
            client,
            server,
            next_seq: isn,
            ts_ns: 1_700_000_000_000_000_000,
            step_ns: 1_000,
            segments: Vec::new(),
        }
    }

    fn seg(&mut self, from_client: bool, flags: u8, payload: &[u8]) -> &mut Self {
        let side = usize::from(!from_client);
        let (src, dst) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let seq = self.next_seq[side];
        // Without the ACK flag the acknowledgment field is zero on the wire.
        let ack = if flags & TcpFlags::ACK != 0 {
            self.next_seq[1 - side]
        } else {
            0
        };
        let mut adv = payload.len() as u32;
        if flags & (TcpFlags::SYN | TcpFlags::FIN) != 0 {
            adv += 1;
        }
        self.next_seq[side] = seq.wrapping_add(adv);
        self.ts_ns += self.step_ns;
        self.segments.push(Segment {
            src,
            dst,
            seq,
            ack,
            flags: TcpFlags(flags),
            direction: None,
            ts_ns: self.ts_ns,
            payload: Bytes::copy_from_slice(payload),
        });
        self
    }

    /// SYN, SYN+ACK, ACK.
    pub fn handshake(&mut self) -> &mut Self {
        self.seg(true, TcpFlags::SYN, b"");
        self.seg(false, TcpFlags::SYN | TcpFlags::ACK, b"");
        self.seg(true, TcpFlags::ACK, b"")
    }

    /// Client data in segments of at most `mss` bytes.
    pub fn client_sends(&mut self, data: &[u8], mss: usize) -> &mut Self {
        for c in data.chunks(mss.max(1)) {
            self.seg(true, TcpFlags::ACK | TcpFlags::PSH, c);
        }
        self
    }

    /// Server data in segments of at most `mss` bytes.
    pub fn server_sends(&mut self, data: &[u8], mss: usize) -> &mut Self {
        for c in data.chunks(mss.max(1)) {
            self.seg(false, TcpFlags::ACK | TcpFlags::PSH, c);
        }
        self
    }

    /// FIN from both sides.
    pub fn close(&mut self) -> &mut Self {
        self.seg(true, TcpFlags::FIN | TcpFlags::ACK, b"");
        self.seg(false, TcpFlags::FIN | TcpFlags::ACK, b"")
    }
}

/// IP packet (v4 or v6 by the addresses) carrying `seg`.
pub fn ip_packet(seg: &Segment) -> Vec<u8> {
    let b = match (seg.src.ip(), seg.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    };
    let mut t = b.tcp(seg.src.port(), seg.dst.port(), seg.seq, 65535);
    let f = seg.flags;
    if f.syn() {
        t = t.syn();
    }
    if f.ack() {
        t = t.ack(seg.ack);
    }
    if f.fin() {
        t = t.fin();
    }
    if f.rst() {
        t = t.rst();
    }
    if f.0 & TcpFlags::PSH != 0 {
        t = t.psh();
    }
    let mut out = Vec::with_capacity(seg.payload.len() + 60);
    t.write(&mut out, &seg.payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Link layer to wrap IP packets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthLink {
    /// Ethernet with 0, 1 (802.1Q) or 2 (802.1ad + 802.1Q, QinQ) VLAN tags.
    Ethernet {
        vlans: u8,
    },
    /// BSD loopback, family in little-endian host order (LINKTYPE_NULL).
    Null,
    /// LINKTYPE_RAW.
    Raw,
    LinuxSll,
    LinuxSll2,
}

impl SynthLink {
    pub fn linktype(self) -> u32 {
        match self {
            SynthLink::Ethernet { .. } => 1,
            SynthLink::Null => 0,
            SynthLink::Raw => 101,
            SynthLink::LinuxSll => 113,
            SynthLink::LinuxSll2 => 276,
        }
    }
}

/// `ip` wrapped in the link header of `link`.
pub fn frame(link: SynthLink, ip: &[u8]) -> Vec<u8> {
    let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
    let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    let mut f = Vec::with_capacity(ip.len() + 24);
    match link {
        SynthLink::Ethernet { vlans } => {
            f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            if vlans >= 2 {
                f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64]);
            }
            if vlans >= 1 {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
            }
            f.extend_from_slice(&ethertype);
        }
        SynthLink::Null => f.extend_from_slice(&(if v6 { 30u32 } else { 2u32 }).to_le_bytes()),
        SynthLink::Raw => {}
        SynthLink::LinuxSll => {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            f.extend_from_slice(&ethertype);
        }
        SynthLink::LinuxSll2 => {
            f.extend_from_slice(&ethertype);
            f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        }
    }
    f.extend_from_slice(ip);
    f
}

/// Splits an IPv4 packet into fragments carrying at most `max_payload` (rounded down to a
/// multiple of 8) bytes of its payload each.
pub fn fragment_ipv4(ip: &[u8], max_payload: usize) -> Vec<Vec<u8>> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let (head, payload) = ip.split_at(ihl);
    let step = (max_payload / 8).max(1) * 8;
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = head.to_vec();
            let total = (ihl + c.len()) as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            let off = ((i * step) / 8) as u16;
            let mf = if i + 1 < n { 0x2000 } else { 0 };
            p[6..8].copy_from_slice(&(off | mf).to_be_bytes());
            // The header checksum is left stale on purpose: the decoder must not check it.
            p.extend_from_slice(c);
            p
        })
        .collect()
}

/// Splits an IPv6 packet (no extension headers) into fragments with a Fragment header
/// (RFC 8200 4.5), each carrying at most `max_payload` (rounded down to 8) payload bytes.
pub fn fragment_ipv6(ip: &[u8], max_payload: usize, id: u32) -> Vec<Vec<u8>> {
    let (head, payload) = ip.split_at(40);
    let next = head[6];
    let step = (max_payload / 8).max(1) * 8;
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = head.to_vec();
            p[4..6].copy_from_slice(&((8 + c.len()) as u16).to_be_bytes());
            p[6] = 44; // Fragment header
            let off_m = (((i * step) / 8) as u16) << 3 | u16::from(i + 1 < n);
            p.extend_from_slice(&[next, 0]);
            p.extend_from_slice(&off_m.to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(c);
            p
        })
        .collect()
}

/// `inner` (an IP packet) inside IPv4 + GRE (RFC 2784, with the key option of RFC 2890).
pub fn gre_ipv4(inner: &[u8]) -> Vec<u8> {
    let v6 = inner.first().is_some_and(|b| b >> 4 == 6);
    let mut gre = vec![0x20, 0x00]; // K bit: a 4-byte key follows the protocol type
    gre.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    gre.extend_from_slice(&[0, 0, 0, 42]);
    gre.extend_from_slice(inner);
    let total = (20 + gre.len()) as u16;
    let mut p = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 47, 0, 0, 192, 168, 0, 1, 192, 168, 0, 2,
    ];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&gre);
    p
}

/// A pcap file (nanosecond timestamps, little endian) of `frames` (capture time, bytes).
pub fn pcap_file(linktype: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let header = PcapHeader {
        snaplen: 262_144,
        datalink: DataLink::from(linktype),
        ts_resolution: TsResolution::NanoSecond,
        endianness: pcap_file::Endianness::Little,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).expect("header to a Vec");
    for (ts, data) in frames {
        let p = PcapPacket::new(Duration::from_nanos(*ts), data.len() as u32, data);
        w.write_packet(&p).expect("packet to a Vec");
    }
    w.into_writer()
}

/// A pcapng file with one interface (`if_tsresol` = 9: nanoseconds).
pub fn pcapng_file(linktype: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut w = PcapNgWriter::new(Vec::new()).expect("section header to a Vec");
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::from(linktype),
        snaplen: 262_144,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    w.write_pcapng_block(idb).expect("block to a Vec");
    for (ts, data) in frames {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(*ts),
            original_len: data.len() as u32,
            data: std::borrow::Cow::Borrowed(data),
            options: vec![],
        };
        w.write_pcapng_block(epb).expect("block to a Vec");
    }
    w.into_inner()
}

/// Frames for `segments` over `link`, with their capture times.
pub fn frames(link: SynthLink, segments: &[Segment]) -> Vec<(u64, Vec<u8>)> {
    segments
        .iter()
        .map(|s| (s.ts_ns, frame(link, &ip_packet(s))))
        .collect()
}
