//! Optional capture of a response's head and a bounded prefix of its decoded body, for the
//! primary/mirror comparison (`--compare`).
//!
//! Owns only the copy: the framer decides what is body (RFC 9112 6.3, chunk framing removed)
//! and calls [`ResponseFramer::capture_body`]; with capture off (the default) the framer keeps
//! nothing and the hot path pays one `Option` check per body step. A body longer than the limit
//! keeps its first `limit` bytes and is marked `truncated`: memory per response in progress is
//! bounded by `max_head_bytes + limit`, and it counts in [`ResponseFramer::buffered_bytes`] so
//! the pipeline's memory budget covers it.

use super::ResponseFramer;

/// The head and body prefix of one final response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseSample {
    /// The head as received: status line and header fields through the blank line.
    pub head: Vec<u8>,
    /// The decoded body (no chunk framing), at most the capture limit.
    pub body: Vec<u8>,
    /// Decoded body length on the wire (Content-Length or the sum of chunk sizes).
    pub body_len: u64,
    /// The body was longer than the limit: `body` is its prefix.
    pub truncated: bool,
}

impl ResponseSample {
    /// A complete `200 OK` capture with `fields` (each ending in CRLF) and `body`: the
    /// comparison tests' building block.
    #[cfg(test)]
    pub(crate) fn ok_200(fields: &str, body: &str) -> Self {
        Self {
            head: format!("HTTP/1.1 200 OK\r\n{fields}\r\n").into_bytes(),
            body: body.as_bytes().to_vec(),
            body_len: body.len() as u64,
            truncated: false,
        }
    }

    /// Header fields in wire order, names as sent. A head that does not parse (it parsed once
    /// in the framer, so only with a different `max_headers`) gives what parsed.
    pub fn headers(&self) -> Vec<(&str, &[u8])> {
        let mut storage = vec![httparse::EMPTY_HEADER; 256];
        let mut resp = httparse::Response::new(&mut storage);
        let _ = resp.parse(&self.head);
        // The names and values borrow `self.head`; copy the slices out of `storage`.
        resp.headers
            .iter()
            .take_while(|h| !h.name.is_empty())
            .map(|h| (h.name, h.value))
            .collect()
    }

    /// Bytes held (head and body prefix).
    pub fn held_bytes(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

impl ResponseFramer {
    /// Keeps the head and the first `body_limit` decoded body bytes of every final response,
    /// attached to it as [`super::Response::capture`] (`None`: keep nothing, the default).
    pub fn with_capture(mut self, body_limit: Option<usize>) -> Self {
        self.capture_limit = body_limit;
        self
    }

    /// Starts the capture of a response whose head is `head` (capture on only).
    pub(super) fn capture_head(&mut self, head: Vec<u8>) {
        if self.capture_limit.is_some() {
            self.capture = Some(Box::new(ResponseSample {
                head,
                ..ResponseSample::default()
            }));
        }
    }

    /// Body bytes of the response in progress, decoded.
    #[inline]
    pub(super) fn capture_body(&mut self, data: &[u8]) {
        if let Some(c) = self.capture.as_deref_mut() {
            let room = self.capture_limit.unwrap_or(0).saturating_sub(c.body.len());
            let take = room.min(data.len());
            c.body.extend_from_slice(&data[..take]);
            if take < data.len() {
                c.truncated = true;
            }
        }
    }

    /// Bytes the capture of the response in progress holds.
    pub(super) fn capture_held(&self) -> usize {
        self.capture.as_ref().map_or(0, |c| c.held_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ResponseEvent, ResponseFramer};
    use crate::http::request::HttpLimits;

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
        5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n";

    fn finals(f: &mut ResponseFramer, parts: &[&[u8]]) -> Vec<super::super::Response> {
        let mut ev = Vec::new();
        for p in parts {
            f.push(p, 1, &mut ev);
        }
        ev.into_iter()
            .filter_map(|e| match e {
                ResponseEvent::Final(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chunked_body_is_decoded_at_every_split() {
        for split in 0..CHUNKED.len() {
            let mut f = ResponseFramer::new(HttpLimits::default()).with_capture(Some(1024));
            let r = finals(&mut f, &[&CHUNKED[..split], &CHUNKED[split..]]);
            assert_eq!(r.len(), 2, "split {split}");
            let c = r[0].capture.as_deref().expect("captured");
            assert_eq!(c.body, b"hello, world", "split {split}");
            assert_eq!((c.body_len, c.truncated), (12, false));
            assert!(c.head.starts_with(b"HTTP/1.1 200 OK\r\n") && c.head.ends_with(b"\r\n\r\n"));
            assert_eq!(c.headers()[1], ("X-A", &b"1"[..]));
            let c2 = r[1].capture.as_deref().expect("204 captured");
            assert!(c2.body.is_empty());
            assert_eq!(f.buffered_bytes(), 0, "nothing held between responses");
        }
    }

    #[test]
    fn long_body_keeps_a_prefix_and_is_marked_truncated() {
        let mut f = ResponseFramer::new(HttpLimits::default()).with_capture(Some(4));
        let r = finals(
            &mut f,
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n012",
                b"3456789",
            ],
        );
        let c = r[0].capture.as_deref().unwrap();
        assert_eq!(
            (&c.body[..], c.body_len, c.truncated),
            (&b"0123"[..], 10, true)
        );
        // Close-delimited, held while in progress (counted for the memory budget).
        let mut ev = Vec::new();
        f.push(b"HTTP/1.0 200 OK\r\n\r\nabcdef", 1, &mut ev);
        assert!(f.buffered_bytes() >= 4 + 19, "{}", f.buffered_bytes());
        f.finish(2, &mut ev);
        let ResponseEvent::Final(r) = &ev[0] else {
            panic!("{ev:?}")
        };
        let c = r.capture.as_deref().unwrap();
        assert_eq!(
            (&c.body[..], c.body_len, c.truncated),
            (&b"abcd"[..], 6, true)
        );
    }

    #[test]
    fn capture_off_keeps_nothing() {
        let mut f = ResponseFramer::new(HttpLimits::default());
        let r = finals(&mut f, &[CHUNKED]);
        assert!(r.iter().all(|r| r.capture.is_none()));
        // Head only (--compare-body off).
        let mut f = ResponseFramer::new(HttpLimits::default()).with_capture(Some(0));
        let r = finals(&mut f, &[CHUNKED]);
        let c = r[0].capture.as_deref().unwrap();
        assert!(c.body.is_empty() && c.truncated && !c.head.is_empty());
    }
}
