//! Parsing a complete request head with httparse (or a versionless request line plus header
//! fields) into the fields of a [`Request`](crate::http::Request), and deciding its framing.

use bytes::Bytes;

use super::super::head;
use super::super::{BodyFraming, Header, Version};
use super::RequestDropReason;

/// The parsed head of the request in progress. Header values are offsets into `raw`, so they
/// become slices of it without a copy.
#[derive(Debug)]
pub(super) struct ParsedHead {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) version: Version,
    /// Names in wire order; values are filled in from `value_at` once `raw` exists.
    pub(super) headers: Vec<Header>,
    /// Offset range of each header value in `raw`.
    pub(super) value_at: Vec<(usize, usize)>,
    pub(super) framing: BodyFraming,
    /// False when the body length cannot be determined (RFC 9112 6.3 items 4 and 5).
    pub(super) framing_ok: bool,
    pub(super) te_and_cl: bool,
    /// Upgrade: the stream may be a tunnel after this request (the next bytes decide).
    pub(super) tunnel: bool,
    /// CONNECT: the stream is a tunnel right after this request's head (RFC 9110 9.3.6: it
    /// has no content; what follows is tunnel data whatever it looks like).
    pub(super) connect: bool,
    /// The connection stays open after this request (RFC 9112 section 9.3).
    pub(super) keep_alive: bool,
}

/// Parses a head at the start of `view` (request line or, with `v09_line`, a versionless line,
/// then header fields). `exact`: `view` is exactly the head; otherwise more bytes may follow
/// it and the head's length is returned. `Err(None)`: incomplete (only when not `exact`).
/// `value_at` is a reused buffer (no allocation per request); it comes back in the result.
pub(super) fn parse_head(
    view: &[u8],
    v09_line: Option<usize>,
    max: usize,
    exact: bool,
    value_at: Vec<(usize, usize)>,
) -> Result<(usize, ParsedHead), Option<RequestDropReason>> {
    use RequestDropReason::{Malformed, TooManyHeaders};
    if let Some(first) = v09_line {
        let (method, target) = head::versionless_request_line(&view[..first]).ok_or(Malformed)?;
        // Rare path (no request line for httparse): initialised slots on the heap.
        let mut storage = Vec::new();
        storage.resize(max, httparse::EMPTY_HEADER);
        return match httparse::parse_headers(&view[first..], &mut storage) {
            Ok(httparse::Status::Complete((n, headers)))
                if first + n == view.len() && !head::has_bare_lf(view) =>
            {
                let parsed = parsed_head(view, method, target, Version::Http09, headers, value_at);
                Ok((view.len(), parsed))
            }
            Err(httparse::Error::TooManyHeaders) => Err(Some(TooManyHeaders)),
            _ => Err(Some(Malformed)),
        };
    }
    head::with_header_slots(max, |slots| {
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(view, slots) {
            // httparse accepts a bare LF as a line end; the framer does not (see has_bare_lf).
            Ok(httparse::Status::Complete(n)) if head::has_bare_lf(&view[..n]) => {
                return Err(Some(Malformed));
            }
            Ok(httparse::Status::Complete(n)) if !exact || n == view.len() => n,
            Ok(httparse::Status::Partial) if !exact => return Err(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Some(TooManyHeaders)),
            _ => return Err(Some(Malformed)),
        };
        let version = match req.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(Some(Malformed)),
        };
        let method = req.method.ok_or(Malformed)?.as_bytes();
        let target = req.path.ok_or(Malformed)?.as_bytes();
        let parsed = parsed_head(view, method, target, version, req.headers, value_at);
        Ok((len, parsed))
    })
}

/// The [`ParsedHead`] of a head parsed from `view`: framing decided, header values recorded
/// as offsets into `view` (in the reused `value_at`).
fn parsed_head(
    view: &[u8],
    method: &[u8],
    target: &[u8],
    version: Version,
    headers: &[httparse::Header<'_>],
    mut value_at: Vec<(usize, usize)>,
) -> ParsedHead {
    let connect = method == b"CONNECT";
    let (framing_ok, (framing, te_and_cl)) = if connect {
        // No content whatever the fields say: the tunnel starts after the head.
        (true, (BodyFraming::None, false))
    } else {
        match head::request_framing(headers, version == Version::Http10) {
            Ok(f) => (true, f),
            Err(()) => (false, (BodyFraming::None, false)),
        }
    };
    let base = view.as_ptr() as usize;
    let tunnel = !connect
        && headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
        && head::has_connection_token(headers, b"upgrade");
    value_at.clear();
    value_at.extend(headers.iter().map(|h| {
        let at = h.value.as_ptr() as usize - base;
        (at, at + h.value.len())
    }));
    ParsedHead {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version,
        headers: headers
            .iter()
            .map(|h| Header {
                name: h.name.to_owned(),
                value: Bytes::new(),
            })
            .collect(),
        value_at,
        framing,
        framing_ok,
        te_and_cl,
        tunnel,
        connect,
        keep_alive: super::super::persists(version, |t| head::has_connection_token(headers, t)),
    }
}
