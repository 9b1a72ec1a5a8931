//! Content comparison of one mirrored request, run after the status check when both sides
//! answered with the same status: headers ([`super::headers`]) and body ([`super::body`]).
//!
//! Different Content-Encoding on the two sides (gzip vs identity, say) is a header mismatch and
//! the bodies are not compared: the bytes are not comparable without decoding, which the agent
//! does not do. The same encoding on both sides compares the encoded bytes (exact).

use super::body::{BodyVerdict, compare_bodies_with};
use super::headers::{HeaderDiff, content_encoding, diff_headers_with};
use super::rules::{BodyMode, CompareRules, NoNoise, Noise};
use crate::http::response::ResponseSample;

/// Why the bodies were not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySkip {
    /// `--compare-body off`.
    Off,
    /// The two sides use different Content-Encoding.
    ContentEncoding,
}

impl BodySkip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::ContentEncoding => "content_encoding",
        }
    }
}

/// What the header and body comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentVerdict {
    pub headers: Vec<HeaderDiff>,
    pub body: Result<BodyVerdict, BodySkip>,
}

impl ContentVerdict {
    /// A header differs for real (not noise).
    pub fn header_mismatch(&self) -> bool {
        self.headers.iter().any(|h| !h.noise)
    }
    /// The body differs for real (not noise).
    pub fn body_mismatch(&self) -> bool {
        matches!(&self.body, Ok(b) if b.differs)
    }
    /// Something differs on a noise field (a baseline showed it differs by nature).
    pub fn noise_differs(&self) -> bool {
        self.headers.iter().any(|h| h.noise) || matches!(&self.body, Ok(b) if b.noise_differs)
    }
}

/// Compares the primary's and the mirror's captured responses; every difference is real.
pub fn compare(rules: &CompareRules, p: &ResponseSample, m: &ResponseSample) -> ContentVerdict {
    compare_with(rules, &NoNoise, p, m)
}

/// [`compare`] with differences on `noise` fields marked as noise.
pub fn compare_with(
    rules: &CompareRules,
    noise: &dyn Noise,
    p: &ResponseSample,
    m: &ResponseSample,
) -> ContentVerdict {
    let mut headers = diff_headers_with(rules, noise, p, m);
    let (ep, em) = (content_encoding(p), content_encoding(m));
    let body = if ep != em {
        // Counted as a header mismatch even when content-encoding is ignored by name.
        if !headers.iter().any(|h| h.name == "content-encoding") {
            headers.push(HeaderDiff {
                name: "content-encoding".into(),
                primary: ep.into_iter().collect(),
                mirror: em.into_iter().collect(),
                noise: noise.header("content-encoding"),
            });
        }
        Err(BodySkip::ContentEncoding)
    } else if rules.body == BodyMode::Off {
        Err(BodySkip::Off)
    } else {
        Ok(compare_bodies_with(rules, noise, p, m))
    };
    ContentVerdict { headers, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(head: &str, body: &str) -> ResponseSample {
        ResponseSample::ok_200(head, body)
    }

    #[test]
    fn encoding_mismatch_is_a_header_mismatch_and_skips_the_body() {
        let r = CompareRules::default();
        let v = compare(
            &r,
            &cap("Content-Encoding: gzip\r\n", "\x1f\u{8b}zz"),
            &cap("", "plain"),
        );
        assert!(v.header_mismatch() && !v.body_mismatch());
        assert_eq!(v.body, Err(BodySkip::ContentEncoding));
        assert_eq!(v.headers[0].primary, ["gzip"]);
        // Even when the header is ignored by name.
        let r = CompareRules::new(&["header:content-encoding".into()], None, None, &[]).unwrap();
        let v = compare(&r, &cap("Content-Encoding: br\r\n", "a"), &cap("", "b"));
        assert!(v.header_mismatch());
        // Same encoding: bytes compared.
        let v = compare(
            &r,
            &cap("Content-Encoding: br\r\n", "a"),
            &cap("Content-Encoding: br\r\n", "b"),
        );
        assert!(v.body_mismatch() && !v.header_mismatch());
        let off = CompareRules::new(&[], Some("off"), None, &[]).unwrap();
        assert_eq!(
            compare(&off, &cap("", "a"), &cap("", "b")).body,
            Err(BodySkip::Off)
        );
    }
}
