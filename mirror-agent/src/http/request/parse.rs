//! Parsing a complete request head with httparse (or a versionless request line plus header
//! fields) into the fields of a [`Request`](crate::http::Request), and deciding its framing.

use std::mem::MaybeUninit;

use bytes::Bytes;

use super::super::head;
use super::super::{BodyFraming, Header, Version};
use super::RequestDropReason;

/// Header slots kept on the stack when parsing a head (the default `max_headers`).
const STACK_HEADERS: usize = 128;

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
    /// Upgrade or CONNECT: the stream is a tunnel after this request.
    pub(super) tunnel: bool,
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
    mut value_at: Vec<(usize, usize)>,
) -> Result<(usize, ParsedHead), Option<RequestDropReason>> {
    use RequestDropReason::{Malformed, TooManyHeaders};
    value_at.clear();
    // Header slots on the stack for the usual limit (no allocation per request).
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max <= STACK_HEADERS {
        &mut stack[..max]
    } else {
        heap.resize_with(max, MaybeUninit::uninit);
        &mut heap
    };
    let mut storage = Vec::new();
    let (len, method, target, version, headers): (
        usize,
        &[u8],
        &[u8],
        Version,
        &[httparse::Header<'_>],
    ) = if let Some(first) = v09_line {
        let (method, target) = head::versionless_request_line(&view[..first]).ok_or(Malformed)?;
        // Rare path (no request line for httparse): initialised slots on the heap.
        storage.resize(max, httparse::EMPTY_HEADER);
        match httparse::parse_headers(&view[first..], &mut storage) {
            Ok(httparse::Status::Complete((n, headers))) if first + n == view.len() => {
                (view.len(), method, target, Version::Http09, headers)
            }
            Err(httparse::Error::TooManyHeaders) => return Err(Some(TooManyHeaders)),
            _ => return Err(Some(Malformed)),
        }
    } else {
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(view, slots) {
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
        (len, method, target, version, req.headers)
    };
    let (framing_ok, (framing, te_and_cl)) = match head::request_framing(headers) {
        Ok(f) => (true, f),
        Err(()) => (false, (BodyFraming::None, false)),
    };
    let base = view.as_ptr() as usize;
    let tunnel = method == b"CONNECT"
        || (headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
            && head::header_has_token(headers, "connection", b"upgrade"));
    value_at.extend(headers.iter().map(|h| {
        let at = h.value.as_ptr() as usize - base;
        (at, at + h.value.len())
    }));
    let parsed = ParsedHead {
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
    };
    Ok((len, parsed))
}
