//! HTTP/2 connections picked up after their start (opened before the agent, or before a
//! capture file begins): recognised, counted, never decoded.
//!
//! Their header blocks refer to an HPACK dynamic table built from bytes that were never seen,
//! so no method, path or field can be recovered, and guessing would send mirrors requests
//! nobody made. What can be known without the table is the frame layout: a client writes
//! whole frames, so a segment picked up mid-connection usually starts at a frame header, and
//! from there each header gives the next one's place. [`looks_like_frames`] recognises such a
//! start; [`Midstream`] then walks the frames, counting the streams the client opens (HEADERS
//! on a new stream id: requests that cannot be mirrored) and every byte. If the walk loses the
//! frame layout (a header that cannot be one), streams are no longer counted; bytes still are.

use super::frame::{HEADER_LEN, MAX_PAYLOAD, flag, kind};

/// SETTINGS and PING acknowledgement flag.
const ACK: u8 = 0x1;

/// Largest frame a detection accepts: the default SETTINGS_MAX_FRAME_SIZE (RFC 9113 4.2).
/// A larger first frame is possible but rare, and a tighter bound keeps binary HTTP/1 bodies
/// from passing for frames.
const DETECT_MAX_LEN: usize = 1 << 14;
/// Largest frame the walk accepts (the protocol's maximum).
const WALK_MAX_LEN: usize = MAX_PAYLOAD;

/// A frame header as the client direction may send it (type, flags, length and stream rules
/// of RFC 9113 section 6), with a length of at most `max_len`.
fn plausible(h: &[u8], max_len: usize) -> Option<(usize, u8, u32)> {
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let (ty, flags) = (h[3], h[4]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    if len > max_len || stream & 0x8000_0000 != 0 {
        return None;
    }
    let client_stream = stream % 2 == 1;
    let ok = match ty {
        kind::DATA => client_stream && flags & !(flag::END_STREAM | flag::PADDED) == 0,
        kind::HEADERS => {
            client_stream
                && flags & !(flag::END_STREAM | flag::END_HEADERS | flag::PADDED | flag::PRIORITY)
                    == 0
        }
        kind::PRIORITY => stream != 0 && len == 5 && flags == 0,
        kind::RST_STREAM => stream != 0 && len == 4 && flags == 0,
        kind::SETTINGS => stream == 0 && len % 6 == 0 && flags & !ACK == 0,
        kind::PING => stream == 0 && len == 8 && flags & !ACK == 0,
        kind::GOAWAY => stream == 0 && len >= 8 && flags == 0,
        kind::WINDOW_UPDATE => len == 4 && flags == 0,
        kind::CONTINUATION => client_stream && flags & !flag::END_HEADERS == 0,
        // PUSH_PROMISE is the server's; unknown types are possible but no evidence.
        _ => false,
    };
    ok.then_some((len, ty, stream))
}

/// Whether the first bytes a mid-connection capture delivers are HTTP/2 client frames: a
/// plausible frame header that ends exactly where the bytes end, or is followed by another
/// plausible header (when 9 more bytes are there to check). A text request line never passes
/// (its first bytes make a length far over 16 KiB).
pub fn looks_like_frames(b: &[u8]) -> bool {
    let Some((len, _, _)) = b
        .get(..HEADER_LEN)
        .and_then(|h| plausible(h, DETECT_MAX_LEN))
    else {
        return false;
    };
    let next = HEADER_LEN + len;
    match b.len().cmp(&next) {
        std::cmp::Ordering::Equal => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => b
            .get(next..next + HEADER_LEN)
            .is_some_and(|h| plausible(h, DETECT_MAX_LEN).is_some()),
    }
}

/// The frame walk of one connection picked up mid-way (see the module doc).
#[derive(Debug, Default)]
pub struct Midstream {
    header: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// The walk lost the frame layout: only bytes are counted from there.
    lost: bool,
    last_stream: u32,
    /// Streams the client opened (HEADERS on a new stream id).
    pub streams: u64,
    pub bytes: u64,
}

impl Midstream {
    /// In-order client bytes.
    pub fn push(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !self.lost && !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < HEADER_LEN {
                return;
            }
            self.have = 0;
            match plausible(&self.header, WALK_MAX_LEN) {
                Some((len, ty, stream)) => {
                    if ty == kind::HEADERS && stream > self.last_stream {
                        self.streams += 1;
                        self.last_stream = stream;
                    }
                    self.skip = len;
                }
                None => self.lost = true,
            }
        }
    }

    /// A gap: the frame layout is gone with the missing bytes.
    pub fn gap(&mut self) {
        self.lost = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::frame::header;

    fn frame(ty: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut f = header(len, ty, flags, stream).to_vec();
        f.resize(HEADER_LEN + len, 0xab);
        f
    }

    #[test]
    fn frames_are_recognised_and_text_is_not() {
        let headers = frame(kind::HEADERS, flag::END_HEADERS, 7, 40);
        let data = frame(kind::DATA, flag::END_STREAM, 7, 100);
        assert!(looks_like_frames(&headers), "one whole frame");
        assert!(looks_like_frames(&[headers.clone(), data.clone()].concat()));
        assert!(looks_like_frames(
            &[headers.clone(), data[..12].to_vec()].concat()
        ));
        assert!(
            !looks_like_frames(&headers[..20]),
            "a frame that does not end here"
        );
        assert!(!looks_like_frames(
            &[headers.clone(), b"GET / HTTP/1.1\r\n".to_vec()].concat()
        ));
        for text in [
            &b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x00\x00\x10\x01\x04\x00\x00\x00\x02 even stream id",
            b"short",
        ] {
            assert!(!looks_like_frames(text), "{text:?}");
        }
    }

    #[test]
    fn the_walk_counts_new_streams_at_every_split_and_stops_counting_when_lost() {
        let mut bytes = frame(kind::WINDOW_UPDATE, 0, 0, 4);
        for s in [9u32, 11, 13] {
            bytes.extend(frame(kind::HEADERS, flag::END_HEADERS, s, 30));
            bytes.extend(frame(kind::DATA, flag::END_STREAM, s, 2000));
        }
        bytes.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            13,
            5,
        ));
        for split in [1, 5, 9, 10, 100, 2039, bytes.len()] {
            let mut m = Midstream::default();
            for chunk in bytes.chunks(split) {
                m.push(chunk);
            }
            assert_eq!(
                (m.streams, m.bytes),
                (3, bytes.len() as u64),
                "split {split}"
            );
        }
        let mut m = Midstream::default();
        m.push(&bytes[..100]);
        m.gap();
        m.push(&frame(kind::HEADERS, flag::END_HEADERS, 21, 3));
        assert_eq!(
            m.streams, 1,
            "after a gap nothing more is counted as a stream"
        );
        let mut m = Midstream::default();
        m.push(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff");
        m.push(&frame(kind::HEADERS, flag::END_HEADERS, 21, 3));
        assert_eq!((m.streams, m.bytes), (0, 21));
    }
}
