//! Which side of a connection is the client.
//!
//! Owns the rules, in order: the capture source's direction (the live classifier knows which hook
//! saw the packet); a configured port (the server's); the SYN without ACK (its sender is the
//! client; a SYN+ACK's receiver is); the first payload (a request line is the client's, a status
//! line the server's). Captures that start mid-connection, even with the server's response
//! (suricata-verify `tcp-stream-after-swap`), need the last rule.

use crate::capture::{SegmentDirection, SegmentRef};

/// What one segment says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// The sender is the client.
    SenderIsClient,
    /// The sender is the server.
    SenderIsServer,
    /// No evidence.
    Unknown,
}

/// Direction evidence from one segment: the source's direction first, then ports.
pub fn hint(seg: &SegmentRef<'_>, ports: &[u16]) -> Hint {
    match seg.direction {
        Some(SegmentDirection::FromClient) => return Hint::SenderIsClient,
        Some(SegmentDirection::FromServer) => return Hint::SenderIsServer,
        None => {}
    }
    if !ports.is_empty() {
        if ports.contains(&seg.dst.port()) {
            return Hint::SenderIsClient;
        }
        if ports.contains(&seg.src.port()) {
            return Hint::SenderIsServer;
        }
    }
    if seg.flags.syn() {
        return if seg.flags.ack() {
            Hint::SenderIsServer
        } else {
            Hint::SenderIsClient
        };
    }
    if starts_like_request(seg.payload) {
        Hint::SenderIsClient
    } else if seg.payload.starts_with(b"HTTP/") {
        Hint::SenderIsServer
    } else {
        Hint::Unknown
    }
}

/// True when `data` begins with what can only be an HTTP request line: a method token of
/// upper-case letters (RFC 9110 section 9: methods are case-sensitive tokens, and every
/// registered one is upper case) followed by a space. Narrower than the RFC `token` on purpose:
/// it runs on arbitrary first payloads (TLS, SSH, binary) and must not take them for HTTP.
pub fn starts_like_request(data: &[u8]) -> bool {
    let n = data
        .iter()
        .take(24)
        .take_while(|b| is_method_byte(**b))
        .count();
    n > 0 && data.get(n) == Some(&b' ')
}

fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::capture::{Segment, TcpFlags};

    /// A segment from 10.0.0.1:40000 to 10.0.0.2:8080.
    fn seg(direction: Option<SegmentDirection>, flags: u8, payload: &'static [u8]) -> Segment {
        Segment {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:8080".parse().unwrap(),
            seq: 1,
            ack: 1,
            flags: TcpFlags(flags),
            direction,
            ts_ns: 0,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn the_source_direction_decides_when_nothing_else_does() {
        // Ports that match neither end, a bare ACK, a payload that is neither line.
        let ports = [9999];
        let from_client = seg(
            Some(SegmentDirection::FromClient),
            TcpFlags::ACK,
            b"\x16\x03",
        );
        assert_eq!(hint(&from_client.as_ref(), &ports), Hint::SenderIsClient);
        let from_server = seg(Some(SegmentDirection::FromServer), TcpFlags::ACK, b"body");
        assert_eq!(hint(&from_server.as_ref(), &ports), Hint::SenderIsServer);
        assert_eq!(hint(&from_server.as_ref(), &[]), Hint::SenderIsServer);
    }

    #[test]
    fn the_source_direction_comes_first() {
        // The egress hook saw it, though it is addressed to a server port and looks like a request.
        let s = seg(
            Some(SegmentDirection::FromServer),
            TcpFlags::SYN,
            b"GET / HTTP/1.1\r\n",
        );
        assert_eq!(hint(&s.as_ref(), &[8080]), Hint::SenderIsServer);
    }

    #[test]
    fn without_a_source_direction_the_rules_are_unchanged() {
        let ack = TcpFlags::ACK;
        assert_eq!(
            hint(&seg(None, ack, b"").as_ref(), &[8080]),
            Hint::SenderIsClient
        );
        assert_eq!(
            hint(&seg(None, ack, b"").as_ref(), &[40000]),
            Hint::SenderIsServer
        );
        assert_eq!(
            hint(&seg(None, TcpFlags::SYN, b"").as_ref(), &[]),
            Hint::SenderIsClient
        );
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        assert_eq!(
            hint(&seg(None, syn_ack, b"").as_ref(), &[]),
            Hint::SenderIsServer
        );
        assert_eq!(
            hint(&seg(None, ack, b"GET / HTTP/1.1\r\n").as_ref(), &[]),
            Hint::SenderIsClient
        );
        assert_eq!(
            hint(&seg(None, ack, b"HTTP/1.1 200 OK\r\n").as_ref(), &[]),
            Hint::SenderIsServer
        );
        assert_eq!(
            hint(&seg(None, ack, b"\x16\x03").as_ref(), &[9999]),
            Hint::Unknown
        );
    }

    #[test]
    fn request_lines() {
        assert!(starts_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(starts_like_request(b"M-SEARCH * HTTP/1.1\r\n"));
        assert!(starts_like_request(b"PRI * HTTP/2.0\r\n"));
        assert!(!starts_like_request(b"HTTP/1.1 200 OK\r\n"));
        assert!(!starts_like_request(b"\x16\x03\x01\x02\x00"));
        assert!(!starts_like_request(b"GET"));
        assert!(!starts_like_request(b" GET /"));
        assert!(!starts_like_request(b"get / HTTP/1.1"));
        assert!(!starts_like_request(b""));
    }
}
