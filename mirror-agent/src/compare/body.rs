//! Body comparison of two captured responses: `exact` bytes (the decoded body prefixes and the
//! full decoded lengths), or `json` (both parse with serde_json: values compared structurally,
//! ignoring the `json:` paths; either side not JSON falls back to exact).
//!
//! A body longer than the capture limit is compared on its prefix and the verdict says
//! `truncated`; a truncated body never parses as JSON, so it is compared exactly.

use serde_json::Value;

use super::rules::{BodyMode, CompareRules, JsonPath, NoNoise, Noise, Step};
use crate::http::response::ResponseSample;

/// At most this many differing JSON paths are reported per request.
pub const MAX_PATHS: usize = 8;

/// How the bodies were compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedMode {
    Exact,
    Json,
    /// `json` was asked (or implied) but a side did not parse.
    ExactFallback,
}

impl UsedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Json => "json",
            Self::ExactFallback => "exact (not JSON)",
        }
    }
}

/// What the body comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyVerdict {
    pub mode: UsedMode,
    /// A real difference: not ignored, not noise.
    pub differs: bool,
    /// JSON mode: the first really differing paths (`$.a[0].b`), at most [`MAX_PATHS`].
    pub paths: Vec<String>,
    /// More paths differ than listed.
    pub more_paths: bool,
    /// Differences that are noise (learned from a baseline): JSON paths (at most
    /// [`MAX_PATHS`]), or the whole body in exact mode (`noise_paths` empty).
    pub noise_differs: bool,
    pub noise_paths: Vec<String>,
    /// Exact mode: offset of the first differing byte (or the shorter length).
    pub first_difference: Option<u64>,
    /// A side's body was longer than the limit: compared on the prefix.
    pub truncated: bool,
}

/// Which JSON comparison applies: both sides parsed, or `None` for exact.
fn parse_both(rules: &CompareRules, p: &ResponseSample, m: &ResponseSample) -> Parsed {
    let truncated = p.truncated || m.truncated;
    let want_json = match rules.body {
        BodyMode::Json => true,
        BodyMode::Auto => super::headers::says_json(p) && super::headers::says_json(m),
        BodyMode::Exact | BodyMode::Off => false,
    };
    // Identical bytes are identical JSON values too: the common case costs a memcmp, no parse.
    let identical = p.body == m.body && p.body_len == m.body_len;
    let values = if want_json && !truncated && !identical {
        serde_json::from_slice::<Value>(&p.body)
            .ok()
            .zip(serde_json::from_slice::<Value>(&m.body).ok())
    } else {
        None
    };
    Parsed {
        values,
        // Identical bytes were compared exactly (no parse), whatever was asked.
        fallback_mode: if want_json && !identical {
            UsedMode::ExactFallback
        } else {
            UsedMode::Exact
        },
        truncated,
    }
}

struct Parsed {
    values: Option<(Value, Value)>,
    fallback_mode: UsedMode,
    truncated: bool,
}

/// Offset of the first differing byte of the decoded bodies (or the shorter length).
fn first_difference(p: &ResponseSample, m: &ResponseSample) -> Option<u64> {
    p.body
        .iter()
        .zip(&m.body)
        .position(|(a, b)| a != b)
        .map(|i| i as u64)
        .or_else(|| (p.body_len != m.body_len).then(|| p.body.len().min(m.body.len()) as u64))
}

/// Compares the bodies under `rules` (mode `Off` is the caller's to skip); every difference
/// is real.
pub fn compare_bodies(rules: &CompareRules, p: &ResponseSample, m: &ResponseSample) -> BodyVerdict {
    compare_bodies_with(rules, &NoNoise, p, m)
}

/// [`compare_bodies`] with differences on `noise` fields set apart as noise.
pub fn compare_bodies_with(
    rules: &CompareRules,
    noise: &dyn Noise,
    p: &ResponseSample,
    m: &ResponseSample,
) -> BodyVerdict {
    let parsed = parse_both(rules, p, m);
    if let Some((a, b)) = &parsed.values {
        let (mut real, mut noisy) = (Vec::new(), Vec::new());
        let mut more = false;
        walk(
            rules,
            noise,
            a,
            b,
            &mut Vec::new(),
            false,
            &mut |at, is_noise| {
                let list = if is_noise { &mut noisy } else { &mut real };
                if list.len() < MAX_PATHS {
                    list.push(render(at));
                } else if !is_noise {
                    more = true;
                    return false;
                }
                true
            },
        );
        return BodyVerdict {
            mode: UsedMode::Json,
            differs: !real.is_empty(),
            paths: real,
            more_paths: more,
            noise_differs: !noisy.is_empty(),
            noise_paths: noisy,
            first_difference: None,
            truncated: parsed.truncated,
        };
    }
    let first = first_difference(p, m);
    let whole_noise = first.is_some() && noise.body();
    BodyVerdict {
        mode: parsed.fallback_mode,
        differs: first.is_some() && !whole_noise,
        paths: Vec::new(),
        more_paths: false,
        noise_differs: whole_noise,
        noise_paths: Vec::new(),
        first_difference: first,
        truncated: parsed.truncated,
    }
}

/// Where two bodies differ, as fields a baseline can teach: the distinct JSON paths with
/// array indices generalised (at most `max`), or the body as a whole when the bodies are
/// compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BodyFields {
    pub json: Vec<JsonPath>,
    /// More distinct paths differed than `max`.
    pub json_more: bool,
    /// Compared byte for byte and different.
    pub whole: bool,
}

/// The fields in which `m`'s body differs from `p`'s under `rules` (ignored paths excluded).
pub fn differing_fields(
    rules: &CompareRules,
    p: &ResponseSample,
    m: &ResponseSample,
    max: usize,
) -> BodyFields {
    let parsed = parse_both(rules, p, m);
    let mut out = BodyFields::default();
    match &parsed.values {
        Some((a, b)) => {
            let mut seen = std::collections::HashSet::new();
            walk(
                rules,
                &NoNoise,
                a,
                b,
                &mut Vec::new(),
                false,
                &mut |at, _| {
                    let g = JsonPath::generalized(at);
                    if seen.contains(&g) {
                        return true;
                    }
                    if out.json.len() >= max {
                        out.json_more = true;
                        return false;
                    }
                    seen.insert(g.clone());
                    out.json.push(g);
                    true
                },
            );
        }
        None => out.whole = first_difference(p, m).is_some(),
    }
    out
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    // 1 and 1.0 are the same JSON number (RFC 8259 6 defines no distinction). Two integers
    // compare exactly: as f64 two 64-bit ids (or nanosecond timestamps) 100 apart would be
    // equal.
    a == b
        || ((a.is_f64() || b.is_f64())
            && matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y))
}

fn render(at: &[Step<'_>]) -> String {
    let mut s = String::from("$");
    for step in at {
        match step {
            Step::Key(k) if super::rules::is_plain_member(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Key(k) => {
                s.push('[');
                s.push_str(&Value::String(k.to_string()).to_string());
                s.push(']');
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A differing location and whether it lies on a noise field; returns false to stop the walk.
type Visit<'v, 'a> = dyn FnMut(&[Step<'a>], bool) -> bool + 'v;

/// Depth-first over both values, calling `visit` at each differing location; a node whose
/// location an ignore pattern names is skipped with everything under it, and everything at
/// or under a noise field is reported as noise. serde_json's default recursion limit (128)
/// bounds the depth. Returns false once `visit` asked to stop.
fn walk<'a>(
    rules: &CompareRules,
    noise: &dyn Noise,
    a: &'a Value,
    b: &'a Value,
    at: &mut Vec<Step<'a>>,
    under_noise: bool,
    visit: &mut Visit<'_, 'a>,
) -> bool {
    if !at.is_empty() && rules.json_ignored(at) {
        return true;
    }
    let under_noise = under_noise || (!at.is_empty() && noise.json(at));
    // A member or element present on one side only.
    let one_sided = |at: &mut Vec<Step<'a>>, visit: &mut Visit<'_, 'a>| {
        if rules.json_ignored(at) {
            return true;
        }
        let is_noise = under_noise || noise.json(at);
        visit(at, is_noise)
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                at.push(Step::Key(k));
                let go = match y.get(k) {
                    Some(vb) => walk(rules, noise, va, vb, at, under_noise, visit),
                    None => one_sided(at, visit),
                };
                at.pop();
                if !go {
                    return false;
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                at.push(Step::Key(k));
                let go = one_sided(at, visit);
                at.pop();
                if !go {
                    return false;
                }
            }
            true
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                at.push(Step::Index(i));
                let go = match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => walk(rules, noise, va, vb, at, under_noise, visit),
                    _ => one_sided(at, visit),
                };
                at.pop();
                if !go {
                    return false;
                }
            }
            true
        }
        (Value::Number(x), Value::Number(y)) if numbers_equal(x, y) => true,
        (Value::Number(_), Value::Number(_)) => visit(at, under_noise),
        _ if a == b => true,
        _ => visit(at, under_noise),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(ct: &str, body: &str) -> ResponseSample {
        ResponseSample::ok_200(&format!("Content-Type: {ct}\r\n"), body)
    }
    const J: &str = "application/json";

    fn rules(ignores: &[&str]) -> CompareRules {
        let v: Vec<String> = ignores.iter().map(|s| s.to_string()).collect();
        CompareRules::new(&v, None, None, &[]).unwrap()
    }

    #[test]
    fn json_compares_values_and_ignores_paths() {
        let p = cap(
            J,
            r#"{"id":1,"items":[{"v":1,"ts":10},{"v":2,"ts":11}],"name":"x","n":1.0}"#,
        );
        let m = cap(
            J,
            r#"{"name":"x","n":1,"items":[{"ts":99,"v":1},{"v":3,"ts":12}],"id":1}"#,
        );
        let v = compare_bodies(&rules(&[]), &p, &m);
        assert_eq!(v.mode, UsedMode::Json);
        assert_eq!(v.paths, ["$.items[0].ts", "$.items[1].ts", "$.items[1].v"]);
        let v = compare_bodies(&rules(&["json:$.items[*].ts"]), &p, &m);
        assert_eq!(v.paths, ["$.items[1].v"]);
        let v = compare_bodies(&rules(&["json:items[*].ts", "json:$.items[1].v"]), &p, &m);
        assert!(!v.differs, "{v:?}");
        // A whole subtree, a missing member, an extra element, a type change.
        let v = compare_bodies(&rules(&["json:$.items"]), &p, &m);
        assert!(!v.differs);
        let v = compare_bodies(
            &rules(&[]),
            &cap(J, r#"{"a":[1,2],"b":"1","odd key":1}"#),
            &cap(J, r#"{"a":[1,2,3],"b":1,"c":null}"#),
        );
        assert_eq!(v.paths, ["$.a[2]", "$.b", r#"$["odd key"]"#, "$.c"]);
    }

    #[test]
    fn large_integers_compare_exactly_and_floats_by_value() {
        let r = rules(&[]);
        // 2^60-ish nanosecond timestamps 100 apart: the same f64, different numbers.
        let v = compare_bodies(
            &r,
            &cap(J, r#"{"at":1796373465802536368,"n":1.0}"#),
            &cap(J, r#"{"at":1796373465802536468,"n":1}"#),
        );
        assert_eq!(v.paths, ["$.at"]);
    }

    #[test]
    fn paths_are_bounded() {
        let a: Vec<String> = (0..50).map(|i| format!("\"k{i}\":{i}")).collect();
        let b: Vec<String> = (0..50).map(|i| format!("\"k{i}\":{}", i + 1)).collect();
        let v = compare_bodies(
            &rules(&[]),
            &cap(J, &format!("{{{}}}", a.join(","))),
            &cap(J, &format!("{{{}}}", b.join(","))),
        );
        assert_eq!((v.paths.len(), v.more_paths), (MAX_PATHS, true));
    }

    #[test]
    fn exact_mode_fallback_and_truncation() {
        let r = rules(&[]);
        // Not JSON on one side: exact.
        let v = compare_bodies(&r, &cap(J, "{\"a\":1}"), &cap(J, "<html>"));
        assert_eq!(
            (v.mode, v.differs, v.first_difference),
            (UsedMode::ExactFallback, true, Some(0))
        );
        // text/plain: exact; same bytes are equal, JSON-equal but differently spaced is not.
        let v = compare_bodies(&r, &cap("text/plain", "{\"a\":1}"), &cap(J, "{ \"a\": 1 }"));
        assert_eq!((v.mode, v.first_difference), (UsedMode::Exact, Some(1)));
        assert!(
            !compare_bodies(&r, &cap("text/plain", "same"), &cap("text/plain", "same")).differs
        );
        // Forced json mode parses whatever the content type says.
        let json = CompareRules::new(&[], Some("json"), None, &[]).unwrap();
        let v = compare_bodies(
            &json,
            &cap("text/plain", "{\"a\":1}"),
            &cap("text/plain", "{ \"a\": 1 }"),
        );
        assert_eq!((v.mode, v.differs), (UsedMode::Json, false));
        // Truncated: equal prefixes and equal lengths are equal (flagged), different lengths not.
        let mut p = cap(J, "{\"a\":");
        p.truncated = true;
        p.body_len = 100;
        let mut m = p.clone();
        let v = compare_bodies(&r, &p, &m);
        assert_eq!(
            (v.mode, v.differs, v.truncated),
            (UsedMode::Exact, false, true)
        );
        m.body_len = 101;
        let v = compare_bodies(&r, &p, &m);
        assert_eq!((v.differs, v.first_difference), (true, Some(5)));
    }
}
