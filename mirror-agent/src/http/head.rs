//! Head-level helpers shared by the request and response framers: header slots for httparse,
//! line scanning, the request-line plausibility check used to resync, body-framing decisions
//! (RFC 9112 section 6) and chunk-size lines.
//!
//! httparse parses complete heads; what is here is what httparse does not do: deciding where a
//! head ends in a stream that arrives in pieces (so a head is parsed once, not once per piece),
//! recognising a request line without a version (HTTP/0.9 style), judging whether a line can
//! start a request when resyncing after a gap, and message-body length rules.

use std::mem::MaybeUninit;

use super::BodyFraming;

/// Methods accepted when resyncing (a line must start with one of these to be taken as a request
/// line). In sync, unknown methods are still framed: httparse accepts any token.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
    b"MKCALENDAR",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"ACL",
    b"BIND",
    b"LINK",
    b"UNLINK",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"M-SEARCH",
    b"PRI",
];

/// Longest entry of [`KNOWN_METHODS`].
const MAX_METHOD_LEN: usize = 11;

/// The first line of the HTTP/2 prior-knowledge preface (RFC 9113 section 3.4).
pub(crate) const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Longest chunk-size line (size, extensions, line end) accepted. RFC 9112 sets no limit;
/// extensions are rare and short, and an unbounded line would be unbounded memory.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// Header slots kept on the stack when parsing a head (the default `max_headers`).
const STACK_HEADERS: usize = 128;

/// Runs `parse` with `max` uninitialised httparse header slots: on the stack up to the usual
/// limit, so parsing a head allocates nothing (a heap vector per message, 4 KiB for 128
/// filled slots, was a visible share of the replay client's cost); on the heap above it.
#[inline]
pub(crate) fn with_header_slots<'b, T>(
    max: usize,
    parse: impl FnOnce(&mut [MaybeUninit<httparse::Header<'b>>]) -> T,
) -> T {
    if max <= STACK_HEADERS {
        let mut stack = [const { MaybeUninit::<httparse::Header<'b>>::uninit() }; STACK_HEADERS];
        parse(&mut stack[..max])
    } else {
        let mut heap = Vec::new();
        heap.resize_with(max, MaybeUninit::uninit);
        parse(&mut heap)
    }
}

/// Answer of an incremental check on bytes that may not all have arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plausible {
    Yes,
    No,
    NeedMore,
}

/// Position just past the first LF in `buf`, if any.
#[inline]
pub(crate) fn find_line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
}

/// An empty line: CRLF, or a bare LF (tolerated, RFC 9112 section 2.2).
#[inline]
pub(crate) fn is_blank_line(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// `line` without its line end (LF or CRLF).
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether the method part of `prefix` (bytes from a line start, possibly incomplete) can begin
/// a request line. Cheap (looks at most `MAX_METHOD_LEN + 1` bytes), so it can run on every push.
pub(crate) fn method_prefix(prefix: &[u8]) -> Plausible {
    let look = &prefix[..prefix.len().min(MAX_METHOD_LEN + 1)];
    match look.iter().position(|&b| b == b' ') {
        Some(i) if KNOWN_METHODS.contains(&&look[..i]) => Plausible::Yes,
        Some(_) => Plausible::No,
        None if look.len() > MAX_METHOD_LEN => Plausible::No,
        None if KNOWN_METHODS.iter().any(|m| m.starts_with(look)) => Plausible::NeedMore,
        None => Plausible::No,
    }
}

/// Whether a complete line (LF included) is a plausible request line: known method, SP, a
/// target without controls or spaces, then SP and `HTTP/1.x`, or the line end (HTTP/0.9 style),
/// or the HTTP/2 preface line.
pub(crate) fn plausible_request_line(line: &[u8]) -> bool {
    if line == H2_PREFACE_LINE {
        return true;
    }
    if method_prefix(line) != Plausible::Yes {
        return false;
    }
    let line = trim_line_end(line);
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &line[sp + 1..];
    let (target, version) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return false;
    }
    match version {
        None => true,
        Some(v) => v.len() == 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit(),
    }
}

/// A request line without a version: `method SP target` (HTTP/0.9 style). Returns the method
/// and target. The method must be a token; the target must hold no spaces or controls.
pub(crate) fn versionless_request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = trim_line_end(line);
    let sp = line.iter().position(|&b| b == b' ')?;
    let (method, target) = (&line[..sp], &line[sp + 1..]);
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if method.is_empty() || !method.iter().all(token) {
        return None;
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return None;
    }
    Some((method, target))
}

/// What the Transfer-Encoding fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferEncoding {
    /// No field, or only empty list elements.
    Absent,
    /// The final coding is `chunked`.
    Chunked,
    /// A coding list whose final coding is not `chunked`.
    Other,
}

/// Combines every Transfer-Encoding field in order and looks at the final coding. Empty list
/// elements are ignored (RFC 9110 section 5.6.1), so `,\tchunked,` is chunked.
pub(crate) fn transfer_encoding(headers: &[httparse::Header<'_>]) -> TransferEncoding {
    let mut last: Option<&[u8]> = None;
    for h in headers {
        if !h.name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        for element in h.value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            if !element.is_empty() {
                last = Some(element);
            }
        }
    }
    match last {
        None => TransferEncoding::Absent,
        Some(c) if c.eq_ignore_ascii_case(b"chunked") => TransferEncoding::Chunked,
        Some(_) => TransferEncoding::Other,
    }
}

/// Whether a `Connection` header lists `token` (RFC 9110 7.6.1: a comma-separated list of
/// case-insensitive tokens, possibly over several fields).
pub(crate) fn has_connection_token(headers: &[httparse::Header<'_>], token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The Content-Length, from every Content-Length field and list element.
///
/// RFC 9112 section 6.3 says a message with an invalid Content-Length is unrecoverable. Decision:
/// identical values (`5, 5`, or two fields saying 5) are one value, as RFC 9110 section 8.6
/// allows; differing values, an empty value, or anything but digits is `Err` (the framers drop
/// the message as malformed and resync).
pub(crate) fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for h in headers {
        if !h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for element in h.value.split(|&b| b == b',') {
            let n = parse_decimal(element.trim_ascii()).ok_or(())?;
            match found {
                Some(prev) if prev != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Whether a comma-separated header (e.g. Connection) holds `token`, case-insensitively.
pub(crate) fn header_has_token(headers: &[httparse::Header<'_>], name: &str, token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|e| e.trim_ascii().eq_ignore_ascii_case(token))
}

/// Body framing of a request (RFC 9112 section 6.3, items 3 to 6 for requests).
/// Returns the framing and whether Transfer-Encoding and Content-Length were both present.
/// `Err` when the body length cannot be determined: a final coding other than chunked (item 4:
/// the server answers 400 and closes) or an invalid Content-Length (item 5).
pub(crate) fn request_framing(headers: &[httparse::Header<'_>]) -> Result<(BodyFraming, bool), ()> {
    let cl = content_length(headers);
    match transfer_encoding(headers) {
        TransferEncoding::Chunked => {
            // Item 3: Transfer-Encoding overrides Content-Length, even an invalid one.
            let has_cl = headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"));
            Ok((BodyFraming::Chunked, has_cl))
        }
        TransferEncoding::Other => Err(()),
        TransferEncoding::Absent => match cl? {
            Some(0) | None => Ok((BodyFraming::None, false)),
            Some(n) => Ok((BodyFraming::ContentLength(n), false)),
        },
    }
}

/// Parses a complete chunk-size line (line end included): hex size, optional whitespace, and
/// optional `;` extensions, ended by CRLF or a bare LF.
///
/// Hand-written because `httparse::parse_chunk_size` rejects a bare LF line end (which many
/// servers accept, so clients that send it are served) and treats an LF inside an extension as
/// extension bytes.
pub(crate) fn parse_chunk_size_line(line: &[u8]) -> Option<u64> {
    let body = trim_line_end(line);
    let digits = body
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(body.len());
    // 16 hex digits fill a u64; leading zeros beyond that are still fine if the value fits.
    if digits == 0 {
        return None;
    }
    let mut size: u64 = 0;
    for &b in &body[..digits] {
        let d = (b as char).to_digit(16)? as u64;
        size = size.checked_mul(16)?.checked_add(d)?;
    }
    let rest = body[digits..].trim_ascii_start();
    if rest.is_empty() || rest[0] == b';' {
        // Extensions: any bytes except a stray CR or LF (the line end was removed above).
        if rest.iter().any(|&b| b == b'\r' || b == b'\n') {
            return None;
        }
        Some(size)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(parse_chunk_size_line(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size_line(b"1A\n"), Some(26));
        assert_eq!(parse_chunk_size_line(b"0\r\n"), Some(0));
        assert_eq!(parse_chunk_size_line(b"5;name=\"v\"\r\n"), Some(5));
        assert_eq!(parse_chunk_size_line(b"5 ; a=b;c\n"), Some(5));
        assert_eq!(parse_chunk_size_line(b"\r\n"), None);
        assert_eq!(parse_chunk_size_line(b"x\r\n"), None);
        assert_eq!(parse_chunk_size_line(b"5 x\r\n"), None);
        assert_eq!(parse_chunk_size_line(b"5;a\rb\r\n"), None);
        assert_eq!(
            parse_chunk_size_line(b"ffffffffffffffff\r\n"),
            Some(u64::MAX)
        );
        assert_eq!(parse_chunk_size_line(b"10000000000000000\r\n"), None);
    }

    #[test]
    fn transfer_encoding_odd_lists() {
        assert_eq!(
            transfer_encoding(&[hdr("Transfer-Encoding", b",\tchunked,")]),
            TransferEncoding::Chunked
        );
        assert_eq!(
            transfer_encoding(&[hdr("transfer-encoding", b"gzip, CHUNKED")]),
            TransferEncoding::Chunked
        );
        assert_eq!(
            transfer_encoding(&[hdr("TE", b"chunked")]),
            TransferEncoding::Absent
        );
        assert_eq!(
            transfer_encoding(&[
                hdr("Transfer-Encoding", b"chunked"),
                hdr("Transfer-Encoding", b"gzip")
            ]),
            TransferEncoding::Other
        );
        assert_eq!(
            transfer_encoding(&[hdr("Transfer-Encoding", b" , ")]),
            TransferEncoding::Absent
        );
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(content_length(&[hdr("Content-Length", b"5")]), Ok(Some(5)));
        assert_eq!(
            content_length(&[hdr("Content-Length", b"5, 5")]),
            Ok(Some(5))
        );
        assert_eq!(
            content_length(&[hdr("content-length", b"5"), hdr("Content-Length", b" 5 ")]),
            Ok(Some(5))
        );
        assert_eq!(content_length(&[hdr("Content-Length", b"5, 6")]), Err(()));
        assert_eq!(content_length(&[hdr("Content-Length", b"+5")]), Err(()));
        assert_eq!(content_length(&[hdr("Content-Length", b"")]), Err(()));
        assert_eq!(
            content_length(&[hdr("Content-Length", b"99999999999999999999")]),
            Err(())
        );
        assert_eq!(content_length(&[]), Ok(None));
    }

    #[test]
    fn request_line_plausibility() {
        assert!(plausible_request_line(b"GET / HTTP/1.1\r\n"));
        assert!(plausible_request_line(b"POST /a?b=c HTTP/1.0\n"));
        assert!(plausible_request_line(b"GET /gen.php?x=1\r\n"));
        assert!(plausible_request_line(H2_PREFACE_LINE));
        assert!(!plausible_request_line(b"GET  / HTTP/1.1\r\n"));
        assert!(!plausible_request_line(b"FOO / HTTP/1.1\r\n"));
        assert!(!plausible_request_line(b"GET / HTTP/2.0\r\n"));
        assert!(!plausible_request_line(b"GET /\x01 HTTP/1.1\r\n"));
        assert!(!plausible_request_line(b"Host: x\r\n"));
        assert_eq!(method_prefix(b"GE"), Plausible::NeedMore);
        assert_eq!(method_prefix(b"GET "), Plausible::Yes);
        assert_eq!(method_prefix(b"GEX"), Plausible::No);
        assert_eq!(method_prefix(b"\x16\x03\x01"), Plausible::No);
    }

    #[test]
    fn versionless_lines() {
        assert_eq!(
            versionless_request_line(b"GET /x\r\n"),
            Some((&b"GET"[..], &b"/x"[..]))
        );
        assert_eq!(versionless_request_line(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(versionless_request_line(b"GET\r\n"), None);
    }
}
