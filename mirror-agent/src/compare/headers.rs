//! Header comparison of two captured responses: names case-insensitive, values exact, order of
//! different names ignored (RFC 9110 5.3: only the order of same-named fields matters, so
//! repeated fields compare as ordered lists), ignored names skipped.

use std::collections::BTreeMap;

use super::rules::{CompareRules, NoNoise, Noise};
use crate::http::response::ResponseSample;

/// One header that differs: both sides' values (empty list: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderDiff {
    /// Lower-case name.
    pub name: String,
    pub primary: Vec<String>,
    pub mirror: Vec<String>,
    /// The header differs by nature (learned from a baseline): not a mismatch.
    pub noise: bool,
}

/// Lower-case name → values in wire order, without the ignored names.
fn grouped<'c>(c: &'c ResponseSample, rules: &CompareRules) -> BTreeMap<String, Vec<&'c [u8]>> {
    let mut m: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for (name, value) in c.headers() {
        let lower = name.to_ascii_lowercase();
        if !rules.header_ignored(&lower) {
            m.entry(lower).or_default().push(value);
        }
    }
    m
}

fn strings(v: Option<&Vec<&[u8]>>) -> Vec<String> {
    v.map(|v| {
        v.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    })
    .unwrap_or_default()
}

/// The headers that differ, sorted by name (every difference real).
pub fn diff_headers(
    rules: &CompareRules,
    p: &ResponseSample,
    m: &ResponseSample,
) -> Vec<HeaderDiff> {
    diff_headers_with(rules, &NoNoise, p, m)
}

/// [`diff_headers`] with the headers `noise` names marked as noise.
pub fn diff_headers_with(
    rules: &CompareRules,
    noise: &dyn Noise,
    p: &ResponseSample,
    m: &ResponseSample,
) -> Vec<HeaderDiff> {
    let (gp, gm) = (grouped(p, rules), grouped(m, rules));
    let mut names: Vec<&String> = gp.keys().chain(gm.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| gp.get(*n) != gm.get(*n))
        .map(|n| HeaderDiff {
            name: n.clone(),
            primary: strings(gp.get(n)),
            mirror: strings(gm.get(n)),
            noise: noise.header(n),
        })
        .collect()
}

/// The value of the first field named `lower_name`, trimmed and lower-cased.
pub fn value_of(c: &ResponseSample, lower_name: &str) -> Option<String> {
    c.headers()
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(lower_name))
        .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
}

/// Content-Encoding, with `identity` and absence the same.
pub fn content_encoding(c: &ResponseSample) -> Option<String> {
    value_of(c, "content-encoding").filter(|v| !v.is_empty() && v != "identity")
}

/// Content-Type says JSON: `application/json` or any `+json` structured syntax suffix
/// (RFC 6839 3.1).
pub fn says_json(c: &ResponseSample) -> bool {
    value_of(c, "content-type").is_some_and(|v| {
        let media = v.split(';').next().unwrap_or("").trim();
        media == "application/json" || media.ends_with("+json")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cap(head: &str, body: &str) -> ResponseSample {
        ResponseSample::ok_200(head, body)
    }

    #[test]
    fn names_case_insensitive_order_ignored_defaults_skipped() {
        let rules = CompareRules::default();
        let p = cap(
            "Content-Type: text/plain\r\nX-A: 1\r\nDate: Mon\r\nX-B: 2\r\nContent-Length: 3\r\n",
            "",
        );
        let m = cap(
            "x-b: 2\r\ncontent-type: text/plain\r\nx-a: 1\r\nDate: Tue\r\nTransfer-Encoding: chunked\r\n",
            "",
        );
        assert_eq!(diff_headers(&rules, &p, &m), vec![]);
        // A value differs, a header is missing, a repeated header is reordered.
        let m = cap(
            "Content-Type: text/html\r\nX-A: 1\r\nX-B: 2\r\nVary: a\r\nVary: b\r\n",
            "",
        );
        let p = cap(
            "Content-Type: text/plain\r\nX-A: 1\r\nX-B: 2\r\nVary: b\r\nVary: a\r\n",
            "",
        );
        let d = diff_headers(&rules, &p, &m);
        let names: Vec<&str> = d.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["content-type", "vary"]);
        assert_eq!(d[0].primary, ["text/plain"]);
        assert_eq!(d[0].mirror, ["text/html"]);
        // Ignoring a header by name.
        let rules = CompareRules::new(
            &["header:Content-Type".into(), "header:vary".into()],
            None,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(diff_headers(&rules, &p, &m), vec![]);
        let m = cap("X-A: 1\r\nX-B: 2\r\n", "");
        let d = diff_headers(&rules, &cap("X-A: 1\r\n", ""), &m);
        assert_eq!((d[0].name.as_str(), d[0].primary.len()), ("x-b", 0));
    }

    #[test]
    fn json_content_types_and_encodings() {
        assert!(says_json(&cap(
            "Content-Type: application/json; charset=utf-8\r\n",
            ""
        )));
        assert!(says_json(&cap(
            "content-type: application/problem+json\r\n",
            ""
        )));
        assert!(!says_json(&cap("Content-Type: text/json-ish\r\n", "")));
        assert_eq!(
            content_encoding(&cap("Content-Encoding: GZIP\r\n", "")).as_deref(),
            Some("gzip")
        );
        assert_eq!(
            content_encoding(&cap("Content-Encoding: identity\r\n", "")),
            None
        );
    }
}
