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

/// The method of the HTTP/2 preface, followed by its space. `PRI` exists only for the preface
/// (RFC 9113 section 3.4), so a line that starts with it begins HTTP/2, not a request.
pub(crate) const H2_METHOD: &[u8] = b"PRI ";

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
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
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
    /// No Transfer-Encoding field.
    Absent,
    /// The final coding is `chunked`.
    Chunked,
    /// A field whose final coding is not `chunked`, or that names no coding at all (a field
    /// with only empty list elements: the list `1#transfer-coding` needs one).
    Other,
}

/// Combines every Transfer-Encoding field in order and looks at the final coding. Empty list
/// elements are ignored (RFC 9110 section 5.6.1), so `,\tchunked,` is chunked; a field with
/// nothing but empty elements is present without a coding: not chunked.
pub(crate) fn transfer_encoding(headers: &[httparse::Header<'_>]) -> TransferEncoding {
    let mut present = false;
    let mut last: Option<&[u8]> = None;
    for h in headers {
        if !h.name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        present = true;
        for element in h.value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            if !element.is_empty() {
                last = Some(element);
            }
        }
    }
    match last {
        None if !present => TransferEncoding::Absent,
        None => TransferEncoding::Other,
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

/// Body framing of a request (RFC 9112 section 6.3, items 3 to 6 for requests).
/// Returns the framing and whether Transfer-Encoding and Content-Length were both present.
/// `Err` when the body length cannot be determined: a final coding other than chunked (item 4:
/// the server answers 400 and closes), an invalid Content-Length (item 5), or any
/// Transfer-Encoding in an HTTP/1.0 request (section 6.1: treated as faulty framing).
pub(crate) fn request_framing(
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<(BodyFraming, bool), ()> {
    let cl = content_length(headers);
    match transfer_encoding(headers) {
        TransferEncoding::Chunked | TransferEncoding::Other if http10 => Err(()),
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

/// Whether `b` may appear in a token (RFC 9110 section 5.6.2).
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Length of the token at the start of `s` (0 if none).
fn token_len(s: &[u8]) -> usize {
    s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len())
}

/// Length of the quoted-string at the start of `s` (RFC 9110 section 5.6.4), quotes
/// included; `None` if it is not one or never closes.
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            // quoted-pair: HTAB, SP, VCHAR or obs-text after the backslash.
            b'\\'
                if s.get(i + 1)
                    .is_some_and(|&c| c == b'\t' || c >= b' ' && c != 0x7f) =>
            {
                i += 2
            }
            // qdtext: HTAB, SP, visible characters but `"` and `\`, obs-text.
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// `s` without leading BWS (spaces and tabs).
fn trim_bws_start(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[n..]
}

/// Whether `exts` is a valid chunk-ext (RFC 9112 section 7.1.1):
/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`. No whitespace after the
/// last one, no empty name, no unbalanced quote.
fn valid_chunk_extensions(mut exts: &[u8]) -> bool {
    while !exts.is_empty() {
        let Some(rest) = trim_bws_start(exts).strip_prefix(b";") else {
            return false;
        };
        let rest = trim_bws_start(rest);
        let name = token_len(rest);
        if name == 0 {
            return false;
        }
        exts = &rest[name..];
        if let Some(value) = trim_bws_start(exts).strip_prefix(b"=") {
            let value = trim_bws_start(value);
            let n = match quoted_string_len(value) {
                Some(n) => n,
                None => token_len(value),
            };
            if n == 0 {
                return false;
            }
            exts = &value[n..];
        }
    }
    true
}

/// Parses a complete chunk-size line (line end included): hex size, then chunk extensions.
///
/// `strict` (requests): exactly RFC 9112 section 7.1: the line ends in CRLF, extensions are
/// well formed, nothing else follows the size. A server that rejects anything else (as strict
/// ones do) closes the connection, so a lenient reading could replay what it never served.
/// Lenient (responses, which are only compared): a bare LF line end and whitespace after the
/// size are accepted, extensions are any bytes but CR and LF.
///
/// Hand-written because `httparse::parse_chunk_size` is neither: it accepts some malformed
/// extensions yet rejects a bare LF line end.
pub(crate) fn parse_chunk_size_line(line: &[u8], strict: bool) -> Option<u64> {
    let body = if strict {
        line.strip_suffix(b"\r\n")?
    } else {
        trim_line_end(line)
    };
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
    let exts = &body[digits..];
    if strict {
        return valid_chunk_extensions(exts).then_some(size);
    }
    let rest = exts.trim_ascii_start();
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

/// Whether a head (or trailer section) holds an LF not preceded by CR. RFC 9112 section 2.2
/// lets a recipient accept a bare LF as a line end, and parsers differ: a primary that does
/// not sees a different set of fields (or a different request) than one that does, so the
/// request framer treats a bare LF in a head as malformed.
pub(crate) fn has_bare_lf(head: &[u8]) -> bool {
    let Some((&first, rest)) = head.split_first() else {
        return false;
    };
    // Branch-free over the whole head, so the compiler vectorises it: this runs on every
    // request, and almost never finds one.
    let inner = rest.iter().zip(head).fold(false, |bad, (&b, &prev)| {
        bad | ((b == b'\n') & (prev != b'\r'))
    });
    first == b'\n' || inner
}

/// Whether `line` (line end included) is a well-formed field line of a trailer section:
/// `name ":" value CRLF`, a token name right before the colon, no control characters but HTAB
/// in the value, and no leading whitespace (obs-fold, which RFC 9112 section 5.2 has a server
/// reject).
pub(crate) fn is_strict_field_line(line: &[u8]) -> bool {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return false;
    };
    let name = token_len(line);
    if name == 0 || line.get(name) != Some(&b':') {
        return false;
    }
    line[name + 1..]
        .iter()
        .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr<'a>(name: &'a str, value: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header { name, value }
    }

    #[test]
    fn chunk_size_lines_lenient() {
        let lenient = |l: &[u8]| parse_chunk_size_line(l, false);
        assert_eq!(lenient(b"1a\r\n"), Some(26));
        assert_eq!(lenient(b"1A\n"), Some(26));
        assert_eq!(lenient(b"0\r\n"), Some(0));
        assert_eq!(lenient(b"5;name=\"v\"\r\n"), Some(5));
        assert_eq!(lenient(b"5 ; a=b;c\n"), Some(5));
        assert_eq!(lenient(b"8 \n"), Some(8));
        assert_eq!(lenient(b"\r\n"), None);
        assert_eq!(lenient(b"x\r\n"), None);
        assert_eq!(lenient(b"5 x\r\n"), None);
        assert_eq!(lenient(b"5;a\rb\r\n"), None);
        assert_eq!(lenient(b"ffffffffffffffff\r\n"), Some(u64::MAX));
        assert_eq!(lenient(b"10000000000000000\r\n"), None);
    }

    #[test]
    fn chunk_size_lines_strict() {
        let strict = |l: &[u8]| parse_chunk_size_line(l, true);
        assert_eq!(strict(b"1a\r\n"), Some(26));
        assert_eq!(strict(b"0\r\n"), Some(0));
        assert_eq!(strict(b"5;name=\"v\"\r\n"), Some(5));
        assert_eq!(strict(b"5 ; a=b;c\r\n"), Some(5));
        assert_eq!(strict(b"5;a = \"q\\\"x;y\"\t;b\r\n"), Some(5));
        assert_eq!(strict(b"ffffffffffffffff\r\n"), Some(u64::MAX));
        // Each of these is rejected by RFC 9112 7.1's grammar.
        for bad in [
            &b"1A\n"[..],
            b"5\r\r;ABCD\r\n",
            b"5 \r\n",
            b"5\t\r\n",
            b"5;\r\n",
            b"5;a=\r\n",
            b"5;a \r\n",
            b"5;a=\"open\r\n",
            b"5;=b\r\n",
            b"5 x\r\n",
            b"\r\n",
            b"-5\r\n",
            b"10000000000000000\r\n",
        ] {
            assert_eq!(strict(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bare_line_feeds_and_trailer_lines() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(
            b"GET / HTTP/1.1\r\nDummy: x\nContent-Length: 2\r\n\r\n"
        ));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(has_bare_lf(b"\n"));
        assert!(is_strict_field_line(b"Expires: never\r\n"));
        assert!(is_strict_field_line(b"X:\r\n"));
        assert!(!is_strict_field_line(b" folded: x\r\n"));
        assert!(!is_strict_field_line(b"Name : x\r\n"));
        assert!(!is_strict_field_line(b"Name: x\n"));
        assert!(!is_strict_field_line(b"Name: a\rb\r\n"));
        assert!(!is_strict_field_line(b"no colon\r\n"));
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
            TransferEncoding::Other
        );
        assert_eq!(
            transfer_encoding(&[hdr("Transfer-Encoding", b"")]),
            TransferEncoding::Other
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
