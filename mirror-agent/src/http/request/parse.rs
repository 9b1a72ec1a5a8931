//! Parsing a complete request head with httparse (or a versionless request line plus header
//! fields) into the fields of a [`Request`](crate::http::Request), and deciding its framing.

use std::sync::Arc;

use super::super::head;
use super::super::{BodyFraming, Text, TraceFields, Version};
use super::RequestDropReason;

/// The parsed head of the request in progress. The method and target are located in the head
/// (offsets from its start, which is where the request's bytes start), and the header fields
/// are not kept: a request reads them from its head when asked ([`crate::http::Request::headers`]).
#[derive(Debug)]
pub(super) struct ParsedHead {
    pub(super) method: Text,
    pub(super) target: Text,
    pub(super) version: Version,
    /// Where the trace context fields are (`None`: there are none, the common case).
    pub(super) trace: Option<Arc<TraceFields>>,
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
/// Allocates nothing for a request without trace context.
pub(super) fn parse_head(
    view: &[u8],
    v09_line: Option<usize>,
    max: usize,
    exact: bool,
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
                let parsed = parsed_head(view, method, target, Version::Http09, headers);
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
        let parsed = parsed_head(view, method, target, version, req.headers);
        Ok((len, parsed))
    })
}

/// The [`ParsedHead`] of a head parsed from `view`: framing decided, the method and target
/// located, the trace context fields found.
fn parsed_head(
    view: &[u8],
    method: &[u8],
    target: &[u8],
    version: Version,
    headers: &[httparse::Header<'_>],
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
    let at = |b: &[u8]| b.as_ptr() as usize - base;
    let tunnel = !connect
        && headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
        && head::has_connection_token(headers, b"upgrade");
    // Most requests carry no trace context: only a name of the right length is looked at
    // closer.
    let trace = headers
        .iter()
        .any(|h| matches!(h.name.len(), 10 | 11) && h.name.as_bytes()[0] | 0x20 == b't')
        .then(|| {
            TraceFields::locate(
                view,
                headers.iter().map(|h| {
                    let from = at(h.value);
                    (h.name, (from, from + h.value.len()))
                }),
            )
            .shared()
        })
        .flatten();
    ParsedHead {
        method: Text::method(view, at(method), method),
        target: Text::found(view, at(target), target),
        version,
        trace,
        framing,
        framing_ok,
        te_and_cl,
        tunnel,
        connect,
        keep_alive: super::super::persists(version, |t| head::has_connection_token(headers, t)),
    }
}
