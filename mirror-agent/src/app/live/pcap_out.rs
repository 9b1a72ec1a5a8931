//! `--write-pcap`: captured segments as a pcap file, for operators and as a test oracle.
//!
//! The classifier keeps only the TCP payload and the header fields the pipeline needs, so frames
//! are synthesized (Ethernet + IPv4/IPv6 + TCP, via etherparse) from each segment. A segment
//! larger than [`MAX_FRAME_PAYLOAD`] is written as several frames with advancing sequence numbers,
//! because an IPv4 total length cannot exceed 65535. Checksums are valid; TTL and window are
//! placeholders, not what was on the wire.

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

use crate::capture::Segment;
use crate::output_queue::OutputWriter;

/// Payload bytes per synthesized frame.
pub const MAX_FRAME_PAYLOAD: usize = 60000;

/// Errors writing the pcap file.
#[derive(Debug, thiserror::Error)]
pub enum PcapOutError {
    /// The file could not be opened (see [`crate::output_file`]).
    #[error("--write-pcap {0}")]
    Create(crate::output_file::OutputFileError),
    #[error("writing pcap: {0}")]
    Write(#[from] pcap_file::PcapError),
    #[error("building a frame: {0}")]
    Build(String),
}

/// Writes segments as Ethernet frames.
pub struct PcapOut {
    writer: PcapWriter<BufWriter<File>>,
    pub frames: u64,
}

impl PcapOut {
    /// Opens `path` by the agent's output-file rules ([`crate::output_file`]): created 0600
    /// (the frames hold requests in clear), never through a symlink, an existing file only with
    /// `overwrite`.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self, PcapOutError> {
        let file = crate::output_file::create(path, overwrite).map_err(PcapOutError::Create)?;
        let header = PcapHeader {
            snaplen: 262_144,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::new(file), header)?;
        Ok(Self { writer, frames: 0 })
    }

    pub fn write(&mut self, seg: &Segment) -> Result<(), PcapOutError> {
        // Segments are already stamped in Unix time by the capture source.
        let ts = Duration::from_nanos(seg.ts_ns);
        let mut offset = 0usize;
        loop {
            let end = (offset + MAX_FRAME_PAYLOAD).min(seg.payload.len());
            let chunk = &seg.payload[offset..end];
            let first = offset == 0;
            let last = end == seg.payload.len();
            let frame = frame(seg, seg.seq.wrapping_add(offset as u32), chunk, first, last)?;
            self.writer
                .write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))?;
            self.frames += 1;
            if last {
                return Ok(());
            }
            offset = end;
        }
    }

    /// Flushes and closes the file; returns the number of frames written.
    pub fn finish(self) -> std::io::Result<u64> {
        use std::io::Write;
        self.writer.into_writer().flush()?;
        Ok(self.frames)
    }
}

/// `--write-pcap` runs on its own thread behind a bounded queue ([`crate::output_queue`]).
impl OutputWriter for PcapOut {
    type Item = Segment;

    fn write(&mut self, seg: Segment) -> std::io::Result<()> {
        PcapOut::write(self, &seg).map_err(std::io::Error::other)
    }

    /// Nothing between segments: `pcap_file`'s writer does not hand out its buffer, and a pcap
    /// file is read once the run is over.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        PcapOut::finish(self).map(|_| ())
    }
}

fn frame(
    seg: &Segment,
    seq: u32,
    payload: &[u8],
    first: bool,
    last: bool,
) -> Result<Vec<u8>, PcapOutError> {
    const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const MAC_SERVER: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    let eth = PacketBuilder::ethernet2(MAC_CLIENT, MAC_SERVER);
    let ip = match (seg.src, seg.dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => eth.ipv4(s.ip().octets(), d.ip().octets(), 64),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => eth.ipv6(s.ip().octets(), d.ip().octets(), 64),
        _ => return Err(PcapOutError::Build("mixed address families".into())),
    };
    let mut tcp = ip.tcp(seg.src.port(), seg.dst.port(), seq, 65535);
    let f = seg.flags;
    // SYN only on the first frame of a split segment, FIN/RST only on the last (see Segment).
    if f.syn() && first {
        tcp = tcp.syn();
    }
    if f.fin() && last {
        tcp = tcp.fin();
    }
    if f.rst() && last {
        tcp = tcp.rst();
    }
    if f.0 & crate::capture::TcpFlags::PSH != 0 && last {
        tcp = tcp.psh();
    }
    if f.ack() {
        tcp = tcp.ack(seg.ack);
    }
    let mut out = Vec::with_capacity(tcp.size(payload.len()));
    tcp.write(&mut out, payload)
        .map_err(|e| PcapOutError::Build(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::TcpFlags;
    use bytes::Bytes;

    #[test]
    fn big_segment_splits_into_frames_with_advancing_seq() {
        let dir = std::env::temp_dir().join(format!("mirror-pcap-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let _ = std::fs::remove_file(&path);
        let payload: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        let seg = Segment {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            seq: u32::MAX - 10,
            ack: 5,
            flags: TcpFlags(TcpFlags::ACK | TcpFlags::PSH),
            direction: None,
            ts_ns: 1,
            payload: Bytes::from(payload.clone()),
        };
        let mut out = PcapOut::create(&path, false).unwrap();
        out.write(&seg).unwrap();
        assert_eq!(out.finish().unwrap(), 3);
        // It holds requests in clear: private, like --record.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut reader = pcap_file::pcap::PcapReader::new(File::open(&path).unwrap()).unwrap();
        let mut got = Vec::new();
        let mut seqs = Vec::new();
        while let Some(pkt) = reader.next_packet() {
            let pkt = pkt.unwrap();
            let sliced = etherparse::SlicedPacket::from_ethernet(&pkt.data).unwrap();
            let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("not tcp")
            };
            seqs.push(tcp.sequence_number());
            got.extend_from_slice(tcp.payload());
        }
        assert_eq!(got, payload);
        assert_eq!(
            seqs,
            vec![
                u32::MAX - 10,
                (u32::MAX - 10).wrapping_add(60000),
                (u32::MAX - 10).wrapping_add(120000)
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
