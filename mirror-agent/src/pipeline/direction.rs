//! Which side of a connection is the client.
//!
//! Owns the rules, in order: a configured port (the server's); the SYN without ACK (its sender
//! is the client; a SYN+ACK's receiver is); the first payload (a request line is the client's, a
//! status line the server's). Captures that start mid-connection, even with the server's
//! response (suricata-verify `tcp-stream-after-swap`), need the last rule.

use crate::capture::Segment;

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

/// Direction evidence from one segment, ports first.
pub fn hint(seg: &Segment, ports: &[u16]) -> Hint {
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
    if starts_like_request(&seg.payload) {
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
    use super::*;

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
