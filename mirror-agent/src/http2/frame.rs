//! HTTP/2 frame layout (RFC 9113 section 4.1 and 6): the 9-octet header, the frame types and
//! flags this decoder acts on, and padding/priority fields removed from DATA and HEADERS.
//!
//! Hand-written: the `h2` crate keeps its codec private, and the layout is nine octets and a
//! few flags; what needs a well-kept crate (HPACK) uses one ([`super::decoder`]).

/// The client connection preface (RFC 9113 3.4), before the client's SETTINGS frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header length.
pub const HEADER_LEN: usize = 9;

/// The protocol's largest frame payload (SETTINGS_MAX_FRAME_SIZE at most 2^24 - 1).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// The reserved bit cleared.
    pub stream: u32,
}

impl FrameHeader {
    /// The header at the start of `b` (at least [`HEADER_LEN`] octets).
    pub fn parse(b: &[u8]) -> Option<Self> {
        let h = b.get(..HEADER_LEN)?;
        Some(Self {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Why a frame's payload cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The pad length is not smaller than the payload (RFC 9113 6.1: PROTOCOL_ERROR).
    Padding,
    /// HEADERS with PRIORITY shorter than its 5 priority octets.
    Priority,
}

/// The data of a DATA payload, or the header block fragment of a HEADERS payload: without the
/// pad length, the padding and (HEADERS) the priority fields.
pub fn body<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], FrameError> {
    let mut p = payload;
    let mut pad = 0;
    if h.has(flag::PADDED) {
        let (&n, rest) = p.split_first().ok_or(FrameError::Padding)?;
        pad = usize::from(n);
        p = rest;
    }
    if h.kind == kind::HEADERS && h.has(flag::PRIORITY) {
        p = p.get(5..).ok_or(FrameError::Priority)?;
    }
    if pad > p.len() {
        return Err(FrameError::Padding);
    }
    Ok(&p[..p.len() - pad])
}

/// Writes a frame header (tests, fuzzing and the replay side build frames with it).
pub fn header(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEADER_LEN] {
    let l = (len as u32).to_be_bytes();
    let s = (stream & 0x7fff_ffff).to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_padding_is_removed() {
        let h = header(
            300,
            kind::HEADERS,
            flag::END_HEADERS | flag::PADDED,
            0x8000_0003,
        );
        let p = FrameHeader::parse(&h).unwrap();
        assert_eq!((p.len, p.kind, p.stream), (300, kind::HEADERS, 3));
        assert!(p.has(flag::END_HEADERS) && !p.has(flag::END_STREAM));
        // Pad length 2, priority 5 octets, fragment "ab", 2 octets of padding.
        let payload = [2, 0, 0, 0, 1, 16, b'a', b'b', 0, 0];
        let h = FrameHeader {
            len: payload.len(),
            kind: kind::HEADERS,
            flags: flag::PADDED | flag::PRIORITY,
            stream: 1,
        };
        assert_eq!(body(&h, &payload), Ok(&b"ab"[..]));
        let too_much = [9, b'x'];
        let d = FrameHeader {
            kind: kind::DATA,
            flags: flag::PADDED,
            ..h
        };
        assert_eq!(body(&d, &too_much), Err(FrameError::Padding));
        assert_eq!(body(&d, &[]), Err(FrameError::Padding));
        let short = FrameHeader {
            flags: flag::PRIORITY,
            ..h
        };
        assert_eq!(body(&short, &[0, 0]), Err(FrameError::Priority));
    }
}
