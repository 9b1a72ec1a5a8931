//! What the content comparison compares and ignores: `--compare-body`, `--compare-body-limit`,
//! `--compare-ignore header:NAME|json:PATH`, and the headers that differ on every response by
//! nature (ignored by default).
//!
//! Owns parsing and validation of those values (one-line errors, exit 2) and JSON path
//! matching. The comparison itself is [`super::content`].

use std::collections::HashSet;
use std::str::FromStr;

/// Default `--compare-body-limit`: body bytes kept per response on each side.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Headers ignored by default: they differ between two servers on every response by nature
/// (dates and caching validators, server identity, cookies, per-request ids and trace context)
/// or are framing (RFC 9112 6: the decoded bodies are compared instead).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "age",
    "expires",
    "etag",
    "last-modified",
    "set-cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// How bodies are compared (`--compare-body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyMode {
    /// `json` when both sides say `application/json` (or `+json`), else `exact`.
    #[default]
    Auto,
    /// Byte for byte (decoded, de-chunked), plus the full decoded length.
    Exact,
    /// Both parse as JSON: compared as values, ignoring `json:` paths; else `exact`.
    Json,
    /// Bodies are not kept nor compared (headers still are).
    Off,
}

/// A `--compare-*` value the agent cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// Neither `header:` nor `json:`.
    #[error("--compare-ignore {0:?}: unknown kind (use header:NAME or json:PATH)")]
    UnknownKind(String),
    /// An empty or invalid header name.
    #[error("--compare-ignore {0:?}: not a header name")]
    BadHeader(String),
    /// A JSON path that does not parse.
    #[error("--compare-ignore {spec:?}: bad JSON path: {why} (use $.a.b[*].c, [N], [*] or .*)")]
    BadJsonPath { spec: String, why: &'static str },
    /// Not one of the body modes.
    #[error("--compare-body {0:?}: use auto, exact, json or off")]
    BadBodyMode(String),
    /// `--diff-log-rate 0`.
    #[error("--diff-log-rate 0: must be at least 1 line per second")]
    ZeroRate,
    /// A size or rate flag over its bound.
    #[error("{flag}: at most {max}")]
    Bound { flag: &'static str, max: u64 },
    /// A comparison flag without `--compare`.
    #[error("{0} needs --compare")]
    NeedsCompare(&'static str),
}

impl FromStr for BodyMode {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "exact" => Ok(Self::Exact),
            "json" => Ok(Self::Json),
            "off" => Ok(Self::Off),
            _ => Err(RuleError::BadBodyMode(s.to_string())),
        }
    }
}

/// One step of a JSON path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

/// One step of a concrete location in a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A JSON path to ignore: `$.a.b[*].c` (the `$` is optional), where `.name` is an object
/// member, `.*` any member, `[N]` an array element and `[*]` any element. Matching a node
/// ignores it and everything under it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    segs: Vec<Seg>,
}

impl JsonPath {
    /// Hand-written: the syntax is a small subset of JSONPath (RFC 9535) with no filters, so
    /// pulling in a JSONPath engine would be more code than this.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut rest = text.trim();
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut segs = Vec::new();
        let mut first = true;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or("unclosed [")?;
                let inner = &r[..end];
                segs.push(if inner == "*" {
                    Seg::AnyIndex
                } else {
                    Seg::Index(inner.parse().map_err(|_| "[..] holds an index or *")?)
                });
                rest = &r[end + 1..];
            } else {
                let r = match rest.strip_prefix('.') {
                    Some(r) => r,
                    None if first && !text.trim().starts_with('$') => rest,
                    None => return Err("expected . or ["),
                };
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let name = &r[..end];
                if name.is_empty() {
                    return Err("empty member name");
                }
                segs.push(if name == "*" {
                    Seg::AnyKey
                } else {
                    Seg::Key(name.to_string())
                });
                rest = &r[end..];
            }
            first = false;
        }
        if segs.is_empty() {
            return Err("names nothing below $");
        }
        Ok(Self { segs })
    }

    /// The pattern of a concrete location with every array index generalised to `[*]`: the
    /// shape a learned noise field takes (`$.items[3].ts` and `$.items[7].ts` are one field).
    pub fn generalized(at: &[Step<'_>]) -> Self {
        Self {
            segs: at
                .iter()
                .map(|s| match s {
                    Step::Key(k) => Seg::Key((*k).to_string()),
                    Step::Index(_) => Seg::AnyIndex,
                })
                .collect(),
        }
    }

    /// The pattern names this location or one of its ancestors.
    pub fn covers(&self, at: &[Step<'_>]) -> bool {
        at.len() >= self.segs.len() && self.matches(&at[..self.segs.len()])
    }

    /// The pattern names exactly this location.
    pub fn matches(&self, at: &[Step<'_>]) -> bool {
        self.segs.len() == at.len()
            && self.segs.iter().zip(at).all(|(s, a)| match (s, a) {
                (Seg::Key(k), Step::Key(n)) => k == n,
                (Seg::AnyKey, Step::Key(_)) => true,
                (Seg::Index(i), Step::Index(j)) => i == j,
                (Seg::AnyIndex, Step::Index(_)) => true,
                _ => false,
            })
    }
}

/// `$.a[*].b`, or `$["odd key"]` for members that are not plain names (as the diff log writes
/// concrete paths).
impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("$")?;
        for s in &self.segs {
            match s {
                Seg::Key(k) if is_plain_member(k) => write!(f, ".{k}")?,
                Seg::Key(k) => write!(f, "[{}]", serde_json::Value::String(k.clone()))?,
                Seg::AnyKey => f.write_str(".*")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
                Seg::AnyIndex => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

/// A member name written as `.name` in a path (else `["name"]`).
pub(super) fn is_plain_member(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// Differences that are noise rather than real: what a baseline mirror taught the comparison
/// ([`super::noise`]). Asked while comparing, so a noise field never hides a real difference
/// elsewhere in the same response.
pub trait Noise {
    /// The header (lower-case name) differs by nature.
    fn header(&self, lower_name: &str) -> bool;
    /// The JSON node at `at` (and everything under it) differs by nature.
    fn json(&self, at: &[Step<'_>]) -> bool;
    /// The body as a whole differs by nature (bodies compared byte for byte).
    fn body(&self) -> bool;
}

/// No noise known: every difference is real (no baseline mirror).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNoise;

impl Noise for NoNoise {
    fn header(&self, _: &str) -> bool {
        false
    }
    fn json(&self, _: &[Step<'_>]) -> bool {
        false
    }
    fn body(&self) -> bool {
        false
    }
}

/// Everything the content comparison needs to know, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareRules {
    /// Lower-case names of headers not compared (defaults plus `header:` ignores).
    pub ignored_headers: HashSet<String>,
    /// Lower-case names the user strips or ignores: written as `[redacted]` in the diff log.
    pub redacted_headers: HashSet<String>,
    pub json_ignore: Vec<JsonPath>,
    pub body: BodyMode,
    pub body_limit: usize,
}

impl Default for CompareRules {
    fn default() -> Self {
        Self {
            ignored_headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            redacted_headers: HashSet::new(),
            json_ignore: Vec::new(),
            body: BodyMode::Auto,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

impl CompareRules {
    /// From `--compare-ignore` values, `--compare-body`, `--compare-body-limit` and the
    /// `--strip-header` names (redacted in the diff log).
    pub fn new(
        ignores: &[String],
        body: Option<&str>,
        body_limit: Option<usize>,
        stripped: &[String],
    ) -> Result<Self, RuleError> {
        let mut r = Self::default();
        if let Some(b) = body {
            r.body = b.parse()?;
        }
        r.body_limit = body_limit.unwrap_or(DEFAULT_BODY_LIMIT);
        for s in stripped {
            r.redacted_headers.insert(s.trim().to_ascii_lowercase());
        }
        for spec in ignores {
            if let Some(name) = spec.strip_prefix("header:") {
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(is_token_char) {
                    return Err(RuleError::BadHeader(spec.clone()));
                }
                r.ignored_headers.insert(name.to_ascii_lowercase());
                r.redacted_headers.insert(name.to_ascii_lowercase());
            } else if let Some(path) = spec.strip_prefix("json:") {
                let p = JsonPath::parse(path).map_err(|why| RuleError::BadJsonPath {
                    spec: spec.clone(),
                    why,
                })?;
                r.json_ignore.push(p);
            } else {
                return Err(RuleError::UnknownKind(spec.clone()));
            }
        }
        Ok(r)
    }

    /// Body bytes each side keeps per response (`None` would keep nothing; `Some(0)`: the
    /// head only, with `--compare-body off`).
    pub fn capture_limit(&self) -> usize {
        if self.body == BodyMode::Off {
            0
        } else {
            self.body_limit
        }
    }

    pub fn header_ignored(&self, lower_name: &str) -> bool {
        self.ignored_headers.contains(lower_name)
    }

    pub fn json_ignored(&self, at: &[Step<'_>]) -> bool {
        self.json_ignore.iter().any(|p| p.matches(at))
    }
}

/// RFC 9110 5.6.2 token characters (header field names).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_parse_and_match() {
        let p = JsonPath::parse("$.a.b[*].c").unwrap();
        use Step::{Index as I, Key as K};
        assert!(p.matches(&[K("a"), K("b"), I(3), K("c")]));
        assert!(!p.matches(&[K("a"), K("b"), I(3)]));
        assert!(!p.matches(&[K("a"), K("x"), I(3), K("c")]));
        assert!(
            JsonPath::parse("a.*[0]")
                .unwrap()
                .matches(&[K("a"), K("z"), I(0)])
        );
        assert!(JsonPath::parse("[2]").unwrap().matches(&[I(2)]));
        // Generalised (learned noise): indices become [*]; covers a location and all under it.
        let g = JsonPath::generalized(&[K("items"), I(3), K("odd key")]);
        assert_eq!(g.to_string(), r#"$.items[*]["odd key"]"#);
        assert!(g.covers(&[K("items"), I(9), K("odd key"), K("deeper")]));
        assert!(!g.covers(&[K("items"), I(9)]));
        assert_eq!(JsonPath::parse("$.a.*[2]").unwrap().to_string(), "$.a.*[2]");
        for bad in ["$", "", "$.a..b", "$.a[", "$.a[x]", "$a", "a.", "$.a[1]b"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ignore_specs_and_errors_are_one_line() {
        let r = CompareRules::new(
            &["header:X-Trace".into(), "json:$.ts".into()],
            Some("json"),
            Some(10),
            &["Authorization".into()],
        )
        .unwrap();
        assert!(r.header_ignored("x-trace") && r.header_ignored("date"));
        assert!(r.redacted_headers.contains("authorization"));
        assert!(r.json_ignored(&[Step::Key("ts")]));
        assert_eq!(
            (r.body, r.body_limit, r.capture_limit()),
            (BodyMode::Json, 10, 10)
        );
        for (spec, want) in [
            ("cookie:x", "unknown kind"),
            ("header:", "not a header name"),
            ("header:a b", "not a header name"),
            ("json:$.a[", "bad JSON path"),
        ] {
            let e = CompareRules::new(&[spec.into()], None, None, &[]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want) && !msg.contains('\n'), "{spec}: {msg}");
        }
        let e = CompareRules::new(&[], Some("fuzzy"), None, &[]).unwrap_err();
        assert_eq!(e, RuleError::BadBodyMode("fuzzy".into()));
        let off = CompareRules::new(&[], Some("off"), None, &[]).unwrap();
        assert_eq!(off.capture_limit(), 0);
    }
}
