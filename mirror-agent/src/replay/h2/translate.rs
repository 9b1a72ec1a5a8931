//! A copy's HTTP/1.1 bytes as an HTTP/2 request (RFC 9113 8.3, 8.2.2): what goes to a mirror
//! over HTTP/2.
//!
//! Every copy reaches replay as HTTP/1.1 bytes (an HTTP/2 stream is captured in its HTTP/1.1
//! form, see `http2::convert`), after the rewrites, so the header rules, Host modes and body
//! limits apply once, whatever the mirror's protocol. This turns those bytes back into
//! request parts:
//! - `:method` and `:path` from the request line (absolute-form targets give their path and
//!   authority); `:authority` from `Host`, else the mirror's own; `:scheme` from the mirror;
//! - fields in order, names lowercased, minus the connection-specific ones HTTP/2 forbids
//!   (`connection` and the fields it names, `keep-alive`, `proxy-connection`,
//!   `transfer-encoding`, `upgrade`; `te` unless it is `trailers`) and `host`;
//! - the body decoded from its framing (Content-Length, or chunked with its trailers, which
//!   become HTTP/2 trailers).
//!
//! CONNECT and upgrade requests (WebSocket) cannot be carried by an HTTP/2 stream: refused,
//! and counted by the caller; an `Upgrade: h2c` request goes as an ordinary stream. The bytes were framed by our own request framer already, so a
//! framing error here means a copy that was never a request: refused the same way.

use std::mem::MaybeUninit;

use bytes::Bytes;
use hyper::http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::{Method, Request, Uri, uri};

/// Most fields in a head or a trailer section (the framer's own limit is lower).
const MAX_FIELDS: usize = 256;

/// A copy in its HTTP/2 parts: the head (pseudo-header fields from the method and URI), the
/// decoded body and the trailers. Field values and the body share the copy's bytes.
#[derive(Debug)]
pub struct H2Copy {
    pub head: Request<()>,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// Why a copy cannot go over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untranslatable {
    /// CONNECT, or an HTTP/1.1 upgrade (`Connection: upgrade` with `Upgrade`).
    Tunnel,
    /// The bytes are not a complete HTTP/1.1 request, or a part has no HTTP/2 form.
    Malformed,
}

/// The request parts and body of `bytes`, for a mirror reached with `scheme` whose own
/// authority is `mirror_authority`.
pub fn to_h2(
    bytes: &Bytes,
    scheme: &uri::Scheme,
    mirror_authority: &str,
) -> Result<H2Copy, Untranslatable> {
    use Untranslatable::Malformed;
    // Uninitialised slots: zeroing 256 of them (8 KiB) for every copy showed in profiles.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(Malformed),
    };
    let method =
        Method::from_bytes(req.method.ok_or(Malformed)?.as_bytes()).map_err(|_| Malformed)?;
    if method == Method::CONNECT {
        return Err(Untranslatable::Tunnel);
    }
    let target = req.path.ok_or(Malformed)?;
    let fields = req.headers;
    let connection: Vec<Vec<u8>> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| f.value.split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    // An upgrade to anything but h2c (WebSocket) would turn the stream into a tunnel. An
    // `Upgrade: h2c` request is an ordinary request to an HTTP/2 mirror: it goes without its
    // upgrade fields (connection-specific, dropped below).
    let upgrade = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("upgrade"));
    if connection.iter().any(|t| t == b"upgrade")
        && upgrade.is_some_and(|u| !u.value.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    {
        return Err(Untranslatable::Tunnel);
    }

    let (path, target_authority) = if target.starts_with('/') || target == "*" {
        (target.to_string(), None)
    } else {
        let u: Uri = target.parse().map_err(|_| Malformed)?;
        let path = u.path_and_query().map_or("/", |p| p.as_str()).to_string();
        (path, u.authority().map(|a| a.as_str().to_string()))
    };
    let host = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("host"))
        .map(|f| std::str::from_utf8(f.value).map_err(|_| Malformed))
        .transpose()?
        .filter(|h| !h.is_empty());
    let authority = host
        .map(str::to_string)
        .or(target_authority)
        .unwrap_or_else(|| mirror_authority.to_string());
    let uri = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| Malformed)?;

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Malformed)?;
        match name.as_str() {
            "transfer-encoding" => {
                chunked = f
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                continue;
            }
            "content-length" => {
                length = Some(
                    std::str::from_utf8(f.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or(Malformed)?,
                );
            }
            "host" | "connection" | "keep-alive" | "proxy-connection" | "upgrade"
            | "http2-settings" => continue,
            "te" if !f.value.trim_ascii().eq_ignore_ascii_case(b"trailers") => continue,
            n if connection.iter().any(|t| t == n.as_bytes()) => continue,
            _ => {}
        }
        // The value shares the copy's bytes (checked, not copied).
        let value =
            HeaderValue::from_maybe_shared(bytes.slice_ref(f.value)).map_err(|_| Malformed)?;
        headers.append(name, value);
    }

    let rest = bytes.slice(head_len..);
    let (body, trailers) = if chunked {
        // A chunked body's length is its decoded size; Content-Length must not contradict it.
        headers.remove(hyper::http::header::CONTENT_LENGTH);
        dechunk(&rest)?
    } else {
        let n = length.unwrap_or(0);
        if rest.len() < n {
            return Err(Malformed);
        }
        (rest.slice(..n), None)
    };
    let mut head = Request::new(());
    *head.method_mut() = method;
    *head.uri_mut() = uri;
    *head.headers_mut() = headers;
    Ok(H2Copy {
        head,
        body,
        trailers,
    })
}

/// A complete chunked body and its trailer section: the decoded bytes and the trailers.
///
/// By hand: the request framer that already checked these bytes works on a stream and keeps
/// no decoded copy; here the message is whole, and the decoding is a loop over size lines.
fn dechunk(mut rest: &[u8]) -> Result<(Bytes, Option<HeaderMap>), Untranslatable> {
    use Untranslatable::Malformed;
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Malformed)?;
        let size_text = rest[..line_end].split(|&b| b == b';').next().unwrap_or(&[]);
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or(Malformed)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err(Malformed);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let fields = match httparse::parse_headers(rest, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(Malformed),
    };
    let mut trailers = HeaderMap::new();
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Malformed)?;
        trailers.append(
            name,
            HeaderValue::from_bytes(f.value).map_err(|_| Malformed)?,
        );
    }
    Ok((
        Bytes::from(body),
        (!trailers.is_empty()).then_some(trailers),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head, with the body and trailers beside it.
    fn translate(raw: &str) -> Result<Request<(Bytes, Option<HeaderMap>)>, Untranslatable> {
        let c = to_h2(
            &Bytes::from(raw.to_string()),
            &uri::Scheme::HTTP,
            "mirror:9000",
        )?;
        Ok(c.head.map(|()| (c.body, c.trailers)))
    }

    #[test]
    fn fields_keep_their_order_minus_the_connection_specific_ones() {
        let r = translate(
            "POST /v1/items?x=1 HTTP/1.1\r\nHost: api:8080\r\nX-B: 2\r\nConnection: keep-alive, X-Hop\r\n\
             X-Hop: gone\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-A: 1\r\nX-B: 3\r\n\
             Content-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "http://api:8080/v1/items?x=1");
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-b", "te", "x-a", "content-length"]);
        let xb: Vec<&[u8]> = r
            .headers()
            .get_all("x-b")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(xb, [&b"2"[..], b"3"]);
        let (body, trailers) = r.into_body();
        assert_eq!(&body[..], b"hello");
        assert!(trailers.is_none());
    }

    #[test]
    fn chunked_bodies_are_decoded_and_their_trailers_kept() {
        let r = translate(
            "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: gzip\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\n\r\n",
        )
        .unwrap();
        assert!(r.headers().get("transfer-encoding").is_none());
        assert!(
            r.headers().get("te").is_none(),
            "te other than trailers is dropped"
        );
        let (body, trailers) = r.into_body();
        assert_eq!(&body[..], b"hello world");
        assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
    }

    #[test]
    fn authority_comes_from_host_then_the_target_then_the_mirror() {
        let abs = translate("GET http://origin:81/p?q HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(abs.uri().to_string(), "http://origin:81/p?q");
        let none = translate("GET /p HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(none.uri().to_string(), "http://mirror:9000/p");
        let star = translate("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(star.uri().path_and_query().unwrap().as_str(), "*");
    }

    #[test]
    fn tunnels_and_broken_copies_are_refused() {
        for (raw, why) in [
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                Untranslatable::Tunnel,
            ),
            (
                "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                Untranslatable::Tunnel,
            ),
            ("GET /p HTTP/1.1\r\nHost: a\r\n", Untranslatable::Malformed),
            (
                "POST /p HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort",
                Untranslatable::Malformed,
            ),
            (
                "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Untranslatable::Malformed,
            ),
        ] {
            assert_eq!(translate(raw).err(), Some(why), "{raw:?}");
        }
        // An Upgrade field without the connection option is only a field, and is dropped.
        let r = translate("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(r.headers().is_empty());
        // An h2c upgrade is an ordinary request over HTTP/2, without its upgrade fields.
        let r = translate(
            "GET /u HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }
}
