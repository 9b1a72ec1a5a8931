//! pcap and pcapng file source.
//!
//! Owns reading capture files (the container formats are pcap-file's job) and turning each frame
//! into a [`Segment`] ([`link`] for link layers and IP, [`frag`] for IP fragments). It knows
//! nothing about flows or HTTP. Bad frames are counted drops; a file that cannot be read on
//! (truncated, corrupt block) ends the source with one [`PcapError`] after every good frame
//! before it has been delivered.

pub mod frag;
pub mod link;
/// Test and benchmark inputs only: built for the crate's own tests and with feature `synth`.
#[cfg(any(test, feature = "synth"))]
pub mod synth;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{PcapError as FileError, TsResolution};

pub use frag::FragStats;
pub use link::{DecodeStats, LinkType, PacketDecoder};

use super::Segment;

/// Why a capture file could not be read (to the end).
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Neither the pcap nor the pcapng magic number.
    #[error("not a pcap or pcapng file (magic {magic:02x?})")]
    NotPcap { magic: [u8; 4] },
    /// The file ends in the middle of a header or a packet.
    #[error("capture file truncated after {packets} packets")]
    Truncated { packets: u64 },
    /// A header or block has an impossible value.
    #[error("corrupt capture file after {packets} packets: {detail}")]
    Corrupt { packets: u64, detail: String },
}

/// The input with its already-read magic number put back in front.
type Input<R> = std::io::Chain<std::io::Cursor<[u8; 4]>, EofWatch<R>>;

/// pcap-file reads through a fixed 8 MB buffer and reports a record larger than that as an
/// unexpected end of file. Watching whether the input really ended tells the two apart, so an
/// oversized record is reported as such, not as a truncated file.
const READ_BUFFER_BYTES: usize = 8_000_000;

/// A reader that notes when its input ends (a read returns 0 bytes).
struct EofWatch<R> {
    inner: R,
    ended: Arc<AtomicBool>,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

enum Format<R: Read> {
    Pcap {
        reader: PcapReader<Input<R>>,
        link: Option<LinkType>,
        nanos: bool,
    },
    PcapNg {
        reader: PcapNgReader<Input<R>>,
        /// Per interface of the current section: link type and timestamp unit.
        interfaces: Vec<(Option<LinkType>, TsUnit)>,
    },
}

/// pcapng `if_tsresol`: 10^-n (high bit clear) or 2^-n (high bit set) seconds; default 10^-6.
#[derive(Clone, Copy)]
struct TsUnit(u8);

impl TsUnit {
    fn to_ns(self, units: u64) -> u64 {
        let n = u32::from(self.0 & 0x7f);
        let ns = if self.0 & 0x80 != 0 {
            (u128::from(units) * 1_000_000_000) >> n.min(127)
        } else if n <= 9 {
            u128::from(units) * 10u128.pow(9 - n)
        } else {
            u128::from(units) / 10u128.pow((n - 9).min(38))
        };
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// Reads frames from a pcap or pcapng stream and decodes them into segments.
pub struct PcapSource<R: Read = File> {
    format: Format<R>,
    pub decoder: PacketDecoder,
    frames: u64,
    last_ts_ns: u64,
    done: bool,
    /// Set when the input has ended (see [`EofWatch`]).
    input_ended: Arc<AtomicBool>,
}

impl PcapSource<File> {
    pub fn open(path: &Path) -> Result<Self, PcapError> {
        let io = |source| PcapError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        Self::new(file)
    }
}

impl<R: Read> PcapSource<R> {
    /// Sniffs the magic number and reads the file header.
    pub fn new(mut input: R) -> Result<Self, PcapError> {
        let mut magic = [0u8; 4];
        read_magic(&mut input, &mut magic)?;
        let input_ended = Arc::new(AtomicBool::new(false));
        let watched = EofWatch {
            inner: input,
            ended: input_ended.clone(),
        };
        let input = std::io::Cursor::new(magic).chain(watched);
        let ended = || input_ended.load(Ordering::Relaxed);
        let format = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => Format::PcapNg {
                reader: PcapNgReader::new(input).map_err(|e| map_err(e, 0, ended()))?,
                interfaces: Vec::new(),
            },
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let reader = PcapReader::new(input).map_err(|e| map_err(e, 0, ended()))?;
                let h = reader.header();
                Format::Pcap {
                    link: LinkType::from_linktype(u32::from(h.datalink)),
                    nanos: h.ts_resolution == TsResolution::NanoSecond,
                    reader,
                }
            }
            _ => return Err(PcapError::NotPcap { magic }),
        };
        Ok(Self {
            format,
            decoder: PacketDecoder::default(),
            frames: 0,
            last_ts_ns: 0,
            done: false,
            input_ended,
        })
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Next TCP segment; `Ok(None)` at the end of the file. Frames that are not usable TCP are
    /// counted in [`PacketDecoder::stats`] and skipped. After an error the source is done.
    pub fn next_segment(&mut self) -> Result<Option<Segment>, PcapError> {
        while !self.done {
            match self.next_frame() {
                Ok(Some(seg)) => return Ok(Some(seg)),
                Ok(None) => {}
                Err(e) => {
                    self.finish();
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Reads one frame; `Ok(None)` when it was not a segment (or the file ended: `done` set).
    fn next_frame(&mut self) -> Result<Option<Segment>, PcapError> {
        let frames = self.frames;
        let ended = &self.input_ended;
        let map_err = |e| map_err(e, frames, ended.load(Ordering::Relaxed));
        match &mut self.format {
            Format::Pcap {
                reader,
                link,
                nanos,
            } => {
                let Some(pkt) = reader.next_raw_packet() else {
                    self.finish();
                    return Ok(None);
                };
                let pkt = pkt.map_err(map_err)?;
                let frac = if *nanos {
                    u64::from(pkt.ts_frac)
                } else {
                    u64::from(pkt.ts_frac) * 1000
                };
                let ts = u64::from(pkt.ts_sec) * 1_000_000_000 + frac;
                let link = *link;
                self.frames += 1;
                self.last_ts_ns = ts;
                Ok(self.decoder.decode(link, ts, &pkt.data))
            }
            Format::PcapNg { reader, interfaces } => {
                let Some(block) = reader.next_block() else {
                    self.finish();
                    return Ok(None);
                };
                let block = block.map_err(map_err)?;
                let (link, ts, data) = match block {
                    Block::SectionHeader(_) => {
                        interfaces.clear();
                        return Ok(None);
                    }
                    Block::InterfaceDescription(idb) => {
                        let unit = idb
                            .options
                            .iter()
                            .find_map(|o| match o {
                                InterfaceDescriptionOption::IfTsResol(r) => Some(TsUnit(*r)),
                                _ => None,
                            })
                            .unwrap_or(TsUnit(6));
                        interfaces.push((LinkType::from_linktype(u32::from(idb.linktype)), unit));
                        return Ok(None);
                    }
                    Block::EnhancedPacket(epb) => {
                        let (link, unit) = iface(interfaces, epb.interface_id);
                        // pcap-file hands the raw 64-bit timestamp over as nanoseconds.
                        let units = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                        (link, unit.to_ns(units), epb.data)
                    }
                    Block::SimplePacket(spb) => {
                        // No interface id and no timestamp: interface 0, time of the last frame.
                        let (link, _) = iface(interfaces, 0);
                        (link, self.last_ts_ns, spb.data)
                    }
                    Block::Packet(pb) => {
                        let (link, unit) = iface(interfaces, u32::from(pb.interface_id));
                        (link, unit.to_ns(pb.timestamp), pb.data)
                    }
                    _ => return Ok(None),
                };
                self.frames += 1;
                self.last_ts_ns = ts;
                Ok(self.decoder.decode(link, ts, &data))
            }
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.decoder.finish();
        }
    }
}

fn iface(interfaces: &[(Option<LinkType>, TsUnit)], id: u32) -> (Option<LinkType>, TsUnit) {
    interfaces
        .get(id as usize)
        .copied()
        .unwrap_or((None, TsUnit(6)))
}

fn read_magic<R: Read>(input: &mut R, magic: &mut [u8; 4]) -> Result<(), PcapError> {
    let mut got = 0;
    while got < 4 {
        match input.read(&mut magic[got..]) {
            Ok(0) => return Err(PcapError::Truncated { packets: 0 }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(PcapError::Io {
                    path: "input".into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// `input_ended`: the input has really ended, so an incomplete record is a truncated file;
/// otherwise the record did not fit pcap-file's read buffer.
fn map_err(e: FileError, packets: u64, input_ended: bool) -> PcapError {
    let incomplete = matches!(&e, FileError::IncompleteBuffer)
        || matches!(&e, FileError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    match e {
        _ if incomplete && !input_ended => PcapError::Corrupt {
            packets,
            detail: format!(
                "a record (or block) larger than {} MB, more than any capture holds per \
                 packet; the file is not truncated",
                READ_BUFFER_BYTES / 1_000_000
            ),
        },
        _ if incomplete => PcapError::Truncated { packets },
        FileError::IoError(source) => PcapError::Io {
            path: "input".into(),
            source,
        },
        other => PcapError::Corrupt {
            packets,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
