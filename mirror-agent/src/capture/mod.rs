//! Capture sources: where TCP segments come from.
//!
//! Owns [`Segment`], the unit every source produces and the pipeline consumes, and
//! [`SegmentRef`], the same with its payload borrowed (the live source reads the ring in place).
//! Sources: pcap files ([`pcap`]) and the live eBPF ring buffer ([`ebpf`]). Every source stamps its segments in Unix
//! time ([`clock`]). A source never interprets TCP or HTTP.

pub mod clock;
pub mod ebpf;
pub mod pcap;
pub mod tls_stream;

use std::net::SocketAddr;

use bytes::Bytes;

/// TCP header flags, as on the wire (low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
}

/// Which end of the connection sent a segment, as the capture source knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentDirection {
    /// Sent by the client: the live ingress classifier, which matched the destination port.
    FromClient,
    /// Sent by the server: the live egress classifier (`--compare`), which matched the source
    /// port.
    FromServer,
}

/// One TCP segment as seen by a capture source.
///
/// `payload` is the TCP payload only. A live GRO/TSO skb may be split by the kernel into several
/// chunks; each chunk becomes a `Segment` whose `seq` is already advanced by the chunk's offset, so
/// consumers never see chunking. SYN is set only on the first chunk, FIN/RST only on the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// Who sent it, when the source knows: the live source from the classifier hook that saw it;
    /// `None` for pcap files, where the pipeline infers it from ports, SYN and payload.
    pub direction: Option<SegmentDirection>,
    /// Capture time in nanoseconds since the Unix epoch, whatever the source: pcap files carry it,
    /// the live source converts the kernel's monotonic stamps once, on decoding ([`clock`]).
    pub ts_ns: u64,
    pub payload: Bytes,
}

/// A [`Segment`] whose payload is borrowed from the capture buffer: live capture hands these
/// out while the ring-buffer record is held, so the pipeline copies only what it must keep
/// (see [`crate::pipeline::Pipeline::on_segment_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRef<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub direction: Option<SegmentDirection>,
    pub ts_ns: u64,
    pub payload: &'a [u8],
}

impl SegmentRef<'_> {
    /// The segment with its payload copied out.
    pub fn to_owned(&self) -> Segment {
        Segment {
            src: self.src,
            dst: self.dst,
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            direction: self.direction,
            ts_ns: self.ts_ns,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

impl Segment {
    /// A borrowed view of this segment.
    pub fn as_ref(&self) -> SegmentRef<'_> {
        SegmentRef {
            src: self.src,
            dst: self.dst,
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            direction: self.direction,
            ts_ns: self.ts_ns,
            payload: &self.payload,
        }
    }
}
