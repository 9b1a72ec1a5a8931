//! One HTTP/2 request written as HTTP/1.1 (RFC 9113 8.3 and 8.2.3, RFC 9112), so it goes
//! through the same replay, filters, rewrites and recording as captured HTTP/1.x requests.
//! Until replay over HTTP/2 exists (issue 13's `protocol=h2`), this is how an h2c request
//! reaches a mirror: the mirror gets the same method, target, fields and body, in HTTP/1.1.
//!
//! - Request line: `:method`, then `:path` (CONNECT is a tunnel, not a request: refused).
//! - `Host` from `:authority` (a `host` field is dropped when `:authority` is there; RFC 9113
//!   8.3.1 says they must agree).
//! - Fields in order, pseudo-header fields left out; `cookie` crumbs joined into one field
//!   with `; ` (8.2.3); `content-length` and `transfer-encoding` left out and written from the
//!   body as received: `Content-Length`, or chunked when there are trailers (HTTP/1.1 carries
//!   trailers only in chunked coding).
//! - A field name or value that HTTP/1.1 cannot carry (CR, LF or NUL in a value, which
//!   RFC 9113 8.2.1 makes malformed; a name that is not a token) refuses the request, so a
//!   header can never be smuggled into the copy.

use super::decoder::H2Request;
use crate::http::request::{HttpLimits, RequestEvent, RequestFramer};

/// Why a request cannot be written as HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertError {
    /// CONNECT (a tunnel).
    Connect,
    /// A field HTTP/1.1 cannot carry, or a pseudo-header missing.
    Malformed,
}

fn token(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

fn value_ok(b: &[u8]) -> bool {
    !b.iter().any(|&c| c == b'\r' || c == b'\n' || c == 0)
}

/// The request as HTTP/1.1 wire bytes.
pub fn to_http1(r: &H2Request) -> Result<Vec<u8>, ConvertError> {
    let method = r.field(":method").ok_or(ConvertError::Malformed)?;
    if method == b"CONNECT" {
        return Err(ConvertError::Connect);
    }
    let path = r.field(":path").ok_or(ConvertError::Malformed)?;
    if !token(method) || path.is_empty() || path.iter().any(|&c| c <= b' ' || c == 0x7f) {
        return Err(ConvertError::Malformed);
    }
    let authority = r.field(":authority");
    let mut out = Vec::with_capacity(128 + r.body.len());
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(a) = authority {
        if !value_ok(a) {
            return Err(ConvertError::Malformed);
        }
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &r.headers {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name.starts_with(b":") {
            continue;
        }
        if !token(name) || !value_ok(value) {
            return Err(ConvertError::Malformed);
        }
        match name {
            b"cookie" => cookies.push(value),
            b"host" if authority.is_some() => {}
            b"content-length" | b"transfer-encoding" | b"connection" => {}
            _ => field(&mut out, name, value),
        }
    }
    if !cookies.is_empty() {
        field(&mut out, b"cookie", &cookies.join(&b"; "[..]));
    }
    if r.trailers.is_empty() {
        let declared = r.field("content-length").is_some();
        if !r.body.is_empty() || declared {
            field(
                &mut out,
                b"content-length",
                r.body.len().to_string().as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&r.body);
    } else {
        field(&mut out, b"transfer-encoding", b"chunked");
        out.extend_from_slice(b"\r\n");
        if !r.body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", r.body.len()).as_bytes());
            out.extend_from_slice(&r.body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (name, value) in &r.trailers {
            if !token(name) || !value_ok(value) {
                return Err(ConvertError::Malformed);
            }
            field(&mut out, name, value);
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The HTTP/1.1 form parsed back into a [`crate::http::Request`], under the same limits as
/// captured HTTP/1.x (a head or body over them is a drop, as it would be over HTTP/1.1). The
/// pipeline does this for each decoded stream, and `--from` for each HTTP/2 record.
pub fn request_from_http1(
    raw: Vec<u8>,
    ts_ns: u64,
    http: &HttpLimits,
) -> Option<crate::http::Request> {
    let limits = HttpLimits {
        // The body is already whole: it is never omitted here.
        omit_bodies_over: None,
        ..http.clone()
    };
    let mut framer = RequestFramer::new(limits, false);
    let mut events = Vec::new();
    framer.push(&bytes::Bytes::from(raw), ts_ns, &mut events);
    framer.finish(&mut events);
    events.into_iter().find_map(|e| match e {
        RequestEvent::Request(r) => Some(r),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn req(headers: &[(&str, &str)], body: &str, trailers: &[(&str, &str)]) -> H2Request {
        let pairs = |h: &[(&str, &str)]| {
            h.iter()
                .map(|(n, v)| (Bytes::from(n.to_string()), Bytes::from(v.to_string())))
                .collect()
        };
        H2Request {
            stream: 1,
            headers: pairs(headers),
            body: Bytes::from(body.to_string()),
            trailers: pairs(trailers),
            wire_bytes: 0,
        }
    }

    #[test]
    fn requests_become_http11_with_host_cookies_and_framing_from_the_body() {
        let r = req(
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "api:8080"),
                (":path", "/v1/items?x=1"),
                ("cookie", "a=1"),
                ("content-type", "application/json"),
                ("cookie", "b=2"),
                ("content-length", "999"),
                ("host", "other"),
            ],
            "{\"k\":1}",
            &[],
        );
        let raw = String::from_utf8(to_http1(&r).unwrap()).unwrap();
        assert_eq!(
            raw,
            "POST /v1/items?x=1 HTTP/1.1\r\nHost: api:8080\r\ncontent-type: application/json\r\n\
             cookie: a=1; b=2\r\ncontent-length: 7\r\n\r\n{\"k\":1}"
        );
        let get = req(
            &[(":method", "GET"), (":scheme", "http"), (":path", "/")],
            "",
            &[],
        );
        assert_eq!(to_http1(&get).unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        let grpc = req(
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "g"),
                (":path", "/pkg.Svc/M"),
                ("te", "trailers"),
            ],
            "\0\0\0\0\x02hi",
            &[("x-checksum", "7")],
        );
        let raw = to_http1(&grpc).unwrap();
        assert!(raw.ends_with(
            b"transfer-encoding: chunked\r\n\r\n7\r\n\0\0\0\0\x02hi\r\n0\r\nx-checksum: 7\r\n\r\n"
        ));
    }

    #[test]
    fn what_http11_cannot_carry_is_refused() {
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let with = |extra: (&str, &str)| {
            let mut h = base.to_vec();
            h.push(extra);
            to_http1(&req(&h, "", &[]))
        };
        assert_eq!(with(("x-a", "1\r\nx-b: 2")), Err(ConvertError::Malformed));
        assert_eq!(with(("bad name", "1")), Err(ConvertError::Malformed));
        assert_eq!(with(("x-z", "nul\0")), Err(ConvertError::Malformed));
        let connect = req(&[(":method", "CONNECT"), (":authority", "h:443")], "", &[]);
        assert_eq!(to_http1(&connect), Err(ConvertError::Connect));
        let space = req(
            &[(":method", "GET"), (":scheme", "http"), (":path", "/a b")],
            "",
            &[],
        );
        assert_eq!(to_http1(&space), Err(ConvertError::Malformed));
    }
}
