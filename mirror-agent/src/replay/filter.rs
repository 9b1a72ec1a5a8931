//! Which requests are mirrored at all: methods, request-target regex allow/deny, header match
//! (the filters GoReplay offers as `--http-allow-method`, `--http-allow-url`,
//! `--http-disallow-url`, `--http-allow-header`).
//!
//! Owns parsing the filter options and the match; the dispatcher counts what is filtered.

use regex::bytes::Regex as BytesRegex;
use regex::{Regex, RegexSet};
use thiserror::Error;

use crate::http::Request;

/// Why a filter option was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// A path regex does not compile.
    #[error("bad path regex `{pattern}`: {why}")]
    BadRegex { pattern: String, why: String },
    /// `--header-match` is not `Name: regex`.
    #[error("bad header match `{spec}`: expected 'Name: regex'")]
    BadHeaderMatch { spec: String },
    /// An empty or non-token method.
    #[error("bad method `{method}`")]
    BadMethod { method: String },
}

/// Why a request was not mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Method,
    PathNotAllowed,
    PathDenied,
    HeaderMismatch,
}

/// The request filter shared by all mirrors. Empty means "mirror everything".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    methods: Vec<String>,
    allow: Option<RegexSet>,
    deny: Option<RegexSet>,
    headers: Vec<(String, BytesRegex)>,
}

impl Filter {
    /// `methods`: compared case-sensitively after upper-casing the option, since methods are
    /// case-sensitive tokens (RFC 9110 9.1) and operators type `get` for `GET`.
    pub fn new(
        methods: &[String],
        path_allow: &[String],
        path_deny: &[String],
        header_match: &[String],
    ) -> Result<Self, FilterError> {
        let methods = methods
            .iter()
            .map(|m| {
                let m = m.trim();
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    Err(FilterError::BadMethod { method: m.into() })
                } else {
                    Ok(m.to_ascii_uppercase())
                }
            })
            .collect::<Result<_, _>>()?;
        let headers = header_match
            .iter()
            .map(|spec| {
                let (name, pattern) = spec
                    .split_once(':')
                    .filter(|(n, _)| !n.trim().is_empty())
                    .ok_or_else(|| FilterError::BadHeaderMatch { spec: spec.clone() })?;
                let re = BytesRegex::new(pattern.trim()).map_err(|e| FilterError::BadRegex {
                    pattern: pattern.trim().into(),
                    why: one_line(&e.to_string()),
                })?;
                Ok((name.trim().to_string(), re))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            methods,
            allow: regex_set(path_allow)?,
            deny: regex_set(path_deny)?,
            headers,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.allow.is_none()
            && self.deny.is_none()
            && self.headers.is_empty()
    }

    /// `Ok` when the request is to be mirrored.
    pub fn check(&self, req: &Request) -> Result<(), Rejection> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return Err(Rejection::Method);
        }
        if let Some(allow) = &self.allow
            && !allow.is_match(req.target())
        {
            return Err(Rejection::PathNotAllowed);
        }
        if let Some(deny) = &self.deny
            && deny.is_match(req.target())
        {
            return Err(Rejection::PathDenied);
        }
        for (name, re) in &self.headers {
            let any = req
                .headers()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && re.is_match(v));
            if !any {
                return Err(Rejection::HeaderMismatch);
            }
        }
        Ok(())
    }
}

fn regex_set(patterns: &[String]) -> Result<Option<RegexSet>, FilterError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    // Compile one by one first so the error names the bad pattern.
    for p in patterns {
        Regex::new(p).map_err(|e| FilterError::BadRegex {
            pattern: p.clone(),
            why: one_line(&e.to_string()),
        })?;
    }
    RegexSet::new(patterns)
        .map(Some)
        .map_err(|e| FilterError::BadRegex {
            pattern: patterns.join(" | "),
            why: one_line(&e.to_string()),
        })
}

/// regex errors are multi-line (they draw a caret under the pattern); keep the last line.
fn one_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::testutil::request;

    fn f(m: &[&str], a: &[&str], d: &[&str], h: &[&str]) -> Filter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(m), &v(a), &v(d), &v(h)).unwrap()
    }

    #[test]
    fn empty_filter_passes_everything() {
        let flt = Filter::default();
        assert!(flt.is_empty());
        assert_eq!(flt.check(&request(b"DELETE /x HTTP/1.1\r\n\r\n")), Ok(()));
    }

    #[test]
    fn methods() {
        let flt = f(&["get", "HEAD"], &[], &[], &[]);
        assert_eq!(flt.check(&request(b"GET / HTTP/1.1\r\n\r\n")), Ok(()));
        assert_eq!(flt.check(&request(b"HEAD / HTTP/1.1\r\n\r\n")), Ok(()));
        assert_eq!(
            flt.check(&request(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")),
            Err(Rejection::Method)
        );
    }

    #[test]
    fn path_allow_and_deny() {
        let flt = f(&[], &["^/api/", "^/health$"], &["secret"], &[]);
        let r = |t: &str| request(format!("GET {t} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(flt.check(&r("/api/users?id=1")), Ok(()));
        assert_eq!(flt.check(&r("/health")), Ok(()));
        assert_eq!(
            flt.check(&r("/static/x.js")),
            Err(Rejection::PathNotAllowed)
        );
        assert_eq!(flt.check(&r("/api/secret")), Err(Rejection::PathDenied));
    }

    #[test]
    fn header_match_all_must_match() {
        let flt = f(&[], &[], &[], &["x-tenant: ^(a|b)$", "User-Agent:curl"]);
        let ok = request(b"GET / HTTP/1.1\r\nX-Tenant: b\r\nuser-agent: curl/8\r\n\r\n");
        assert_eq!(flt.check(&ok), Ok(()));
        let wrong = request(b"GET / HTTP/1.1\r\nX-Tenant: c\r\nuser-agent: curl/8\r\n\r\n");
        assert_eq!(flt.check(&wrong), Err(Rejection::HeaderMismatch));
        let missing = request(b"GET / HTTP/1.1\r\nuser-agent: curl/8\r\n\r\n");
        assert_eq!(flt.check(&missing), Err(Rejection::HeaderMismatch));
    }

    #[test]
    fn bad_options() {
        let v = |x: &str| vec![x.to_string()];
        let e = Filter::new(&[], &v("(unclosed"), &[], &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("bad path regex `(unclosed`"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        let e = Filter::new(&[], &[], &[], &v("no colon")).unwrap_err();
        assert!(matches!(e, FilterError::BadHeaderMatch { .. }));
        let e = Filter::new(&v("GE T"), &[], &[], &[]).unwrap_err();
        assert!(matches!(e, FilterError::BadMethod { .. }));
    }
}
