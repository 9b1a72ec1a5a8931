//! Attribute values by the OpenTelemetry semantic conventions, shared by the histograms and the
//! spans: bounded method names, the `url.path` of a request target, and the RPC attributes of a
//! gRPC call.

/// `http.request.method` per the semantic conventions: known methods as is, others `_OTHER`.
pub fn normalize_method(m: &str) -> &'static str {
    crate::http::standard_method(m).unwrap_or("_OTHER")
}

/// `url.path` of a request target: origin-form up to `?`, or the path of an absolute-form.
pub fn url_path(target: &str) -> &str {
    let t = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    t.split(['?', '#']).next().unwrap_or(t)
}

/// `rpc.service` and `rpc.method` of a gRPC call: a request whose `content-type` is
/// `application/grpc` (or `application/grpc+proto`, ...) and whose path is `/service/method`
/// (the gRPC over HTTP/2 protocol's `:path`). `head` is the request's HTTP/1.1 head.
pub fn grpc_call<'a>(head: &[u8], target: &'a str) -> Option<(&'a str, &'a str)> {
    let grpc = head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        line[..colon].eq_ignore_ascii_case(b"content-type")
            && line[colon + 1..]
                .trim_ascii()
                .get(..16)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"application/grpc"))
    });
    if !grpc {
        return None;
    }
    let (service, method) = target.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains(['/', '?']))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::grpc_call;

    #[test]
    fn grpc_calls_are_told_by_content_type_and_path() {
        let head = b"POST /pkg.Echo/Say HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc+proto\r\n\r\n";
        assert_eq!(grpc_call(head, "/pkg.Echo/Say"), Some(("pkg.Echo", "Say")));
        let json = b"POST /pkg.Echo/Say HTTP/1.1\r\ncontent-type: application/json\r\n\r\n";
        assert_eq!(grpc_call(json, "/pkg.Echo/Say"), None);
        assert_eq!(grpc_call(head, "/health"), None);
        assert_eq!(grpc_call(head, "/a/b/c"), None);
    }
}
