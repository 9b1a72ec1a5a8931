//! Noise learned from a baseline mirror (`role=baseline`): a second instance of the primary's
//! version, so whatever differs between the primary's and the baseline's answers to the same
//! request differs by nature (ids, timestamps, host names), not because of a code change. This
//! is Twitter Diffy's idea, done passively.
//!
//! Owns the endpoint templates (method plus the path with numeric, UUID and long hex segments
//! collapsed), the bounded table of noise fields per endpoint (header names, JSON paths with
//! array indices generalised, or the whole body when bodies compare byte for byte), with how
//! often each was seen differing, and the [`Noise`] view a candidate's comparison asks.
//! Learning is continuous: a field that differed once is noise from then on. The table is
//! bounded ([`MAX_ENDPOINTS`], [`MAX_FIELDS`] per endpoint); what does not fit is counted.
//!
//! Status codes are never learned: a different status from the baseline is reported as the
//! baseline's own mismatch, and a candidate's different status is always real.

use std::collections::{BTreeMap, HashMap};

use super::body::differing_fields;
use super::headers::diff_headers;
use super::rules::{CompareRules, JsonPath, Noise, Step};
use crate::http::response::ResponseSample;

/// Endpoints the noise table (and the per-endpoint counters) hold at most; later endpoints
/// are not learned (counted) and counted under [`OTHER_ENDPOINT`].
pub const MAX_ENDPOINTS: usize = 256;
/// Noise fields one endpoint holds at most (headers, JSON paths and the whole body).
pub const MAX_FIELDS: usize = 64;
/// The endpoint name counters use once [`MAX_ENDPOINTS`] are known.
pub const OTHER_ENDPOINT: &str = "(other)";
/// Longest path template kept; longer ones are cut (and end in `...`).
const MAX_TEMPLATE: usize = 160;

/// `METHOD /path/template`: the query is dropped, an absolute-form target loses its scheme
/// and authority, and segments that name one instance of a resource are collapsed: all
/// digits `{n}`, a UUID `{uuid}`, 16 or more hex digits `{hex}`.
pub fn endpoint(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    let mut out = String::with_capacity(method.len() + 1 + path.len().min(MAX_TEMPLATE));
    out.push_str(method);
    out.push(' ');
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(collapse(seg));
        if out.len() > method.len() + 1 + MAX_TEMPLATE {
            out.truncate(method.len() + 1 + MAX_TEMPLATE);
            while !out.is_char_boundary(out.len()) {
                out.pop();
            }
            out.push_str("...");
            break;
        }
    }
    out
}

fn collapse(seg: &str) -> &str {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
        "{n}"
    } else if seg.len() == 36
        && seg.split('-').map(str::len).eq([8usize, 4, 4, 4, 12])
        && seg.split('-').all(hex)
    {
        "{uuid}"
    } else if seg.len() >= 16 && hex(seg) {
        "{hex}"
    } else {
        seg
    }
}

/// Where one response differed from another on one request: what a primary/baseline pair
/// teaches, and the request's own noise for the candidates judged on the same request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Lower-case header names.
    pub headers: Vec<String>,
    /// Generalised JSON paths.
    pub json: Vec<JsonPath>,
    /// Bodies compared byte for byte and different.
    pub body: bool,
}

impl Observed {
    /// The fields in which the baseline's answer `b` differs from the primary's `p` (equal
    /// statuses), under the explicit rules.
    pub fn between(rules: &CompareRules, p: &ResponseSample, b: &ResponseSample) -> Self {
        let headers = diff_headers(rules, p, b)
            .into_iter()
            .map(|h| h.name)
            .collect();
        let fields = if rules.body == super::rules::BodyMode::Off
            || super::headers::content_encoding(p) != super::headers::content_encoding(b)
        {
            Default::default()
        } else {
            differing_fields(rules, p, b, MAX_FIELDS)
        };
        Self {
            headers,
            json: fields.json,
            body: fields.whole,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.json.is_empty() && !self.body
    }
}

/// One endpoint's noise fields, each with how many primary/baseline pairs it differed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EndpointNoise {
    headers: BTreeMap<String, u64>,
    json: Vec<(JsonPath, u64)>,
    body: u64,
}

impl EndpointNoise {
    fn len(&self) -> usize {
        self.headers.len() + self.json.len() + usize::from(self.body > 0)
    }
}

/// One endpoint's learned fields, for the exit table and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFields {
    pub endpoint: String,
    /// `header:NAME`, `json:PATH` or `body`, with how often each differed, most often first.
    pub fields: Vec<(String, u64)>,
}

/// The table's bounds reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoiseLosses {
    /// Primary/baseline pairs of endpoints the table had no room for: nothing learned.
    pub endpoints_full: u64,
    /// Fields not learned because their endpoint held [`MAX_FIELDS`] already.
    pub fields_full: u64,
}

/// What has been learned, per endpoint.
#[derive(Debug, Default)]
pub struct NoiseTable {
    endpoints: HashMap<String, EndpointNoise>,
    losses: NoiseLosses,
}

impl NoiseTable {
    /// Learns from one primary/baseline pair on `endpoint`.
    pub fn learn(&mut self, endpoint: &str, seen: &Observed) {
        if seen.is_empty() {
            return;
        }
        if !self.endpoints.contains_key(endpoint) && self.endpoints.len() >= MAX_ENDPOINTS {
            self.losses.endpoints_full += 1;
            return;
        }
        let e = self.endpoints.entry(endpoint.to_string()).or_default();
        let mut full = 0;
        for h in &seen.headers {
            let room = e.len() < MAX_FIELDS;
            match e.headers.get_mut(h) {
                Some(n) => *n += 1,
                None if room => {
                    e.headers.insert(h.clone(), 1);
                }
                None => full += 1,
            }
        }
        for p in &seen.json {
            let room = e.len() < MAX_FIELDS;
            match e.json.iter_mut().find(|(q, _)| q == p) {
                Some((_, n)) => *n += 1,
                None if room => e.json.push((p.clone(), 1)),
                None => full += 1,
            }
        }
        if seen.body {
            if e.body > 0 || e.len() < MAX_FIELDS {
                e.body += 1;
            } else {
                full += 1;
            }
        }
        self.losses.fields_full += full;
    }

    /// The noise a candidate's answer on `endpoint` is judged with: what the endpoint learned,
    /// plus what this request's own baseline answer showed (`local`; it matters when the table
    /// could not learn it).
    pub fn view<'a>(&'a self, endpoint: &str, local: Option<&'a Observed>) -> NoiseView<'a> {
        NoiseView {
            learned: self.endpoints.get(endpoint),
            local,
        }
    }

    /// Fields learned on `endpoint`.
    pub fn fields(&self, endpoint: &str) -> usize {
        self.endpoints.get(endpoint).map_or(0, EndpointNoise::len)
    }

    pub fn losses(&self) -> NoiseLosses {
        self.losses
    }

    /// Every endpoint's fields, endpoints by name, fields most often seen first.
    pub fn snapshot(&self) -> Vec<EndpointFields> {
        let mut out: Vec<EndpointFields> = self
            .endpoints
            .iter()
            .map(|(endpoint, e)| {
                let mut fields: Vec<(String, u64)> = e
                    .headers
                    .iter()
                    .map(|(h, n)| (format!("header:{h}"), *n))
                    .chain(e.json.iter().map(|(p, n)| (format!("json:{p}"), *n)))
                    .chain((e.body > 0).then(|| ("body".to_string(), e.body)))
                    .collect();
                fields.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                EndpointFields {
                    endpoint: endpoint.clone(),
                    fields,
                }
            })
            .collect();
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }
}

/// The learned and the request's own noise of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct NoiseView<'a> {
    learned: Option<&'a EndpointNoise>,
    local: Option<&'a Observed>,
}

impl Noise for NoiseView<'_> {
    fn header(&self, lower_name: &str) -> bool {
        self.learned
            .is_some_and(|e| e.headers.contains_key(lower_name))
            || self
                .local
                .is_some_and(|o| o.headers.iter().any(|h| h == lower_name))
    }

    fn json(&self, at: &[Step<'_>]) -> bool {
        self.learned
            .is_some_and(|e| e.json.iter().any(|(p, _)| p.matches(at)))
            || self
                .local
                .is_some_and(|o| o.json.iter().any(|p| p.matches(at)))
    }

    fn body(&self) -> bool {
        self.learned.is_some_and(|e| e.body > 0) || self.local.is_some_and(|o| o.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::content::compare_with;

    fn json(body: &str, extra: &str) -> ResponseSample {
        ResponseSample::ok_200(&format!("Content-Type: application/json\r\n{extra}"), body)
    }

    #[test]
    fn endpoint_templates_collapse_instance_segments() {
        for (method, target, want) in [
            ("GET", "/users/42?x=1", "GET /users/{n}"),
            (
                "PUT",
                "/o/3f2b8c1e-0a4b-4c1d-9e2f-1234567890ab/items/7",
                "PUT /o/{uuid}/items/{n}",
            ),
            ("GET", "/blob/0123456789abcdef0123", "GET /blob/{hex}"),
            ("GET", "/blob/cafe", "GET /blob/cafe"),
            ("GET", "http://api.example:8080/a/1#f", "GET /a/{n}"),
            ("GET", "http://api.example", "GET /"),
            ("OPTIONS", "*", "OPTIONS *"),
            ("GET", "/v2/", "GET /v2/"),
        ] {
            assert_eq!(endpoint(method, target), want, "{target}");
        }
        let long = format!("/{}", "z".repeat(500));
        let e = endpoint("GET", &long);
        assert!(e.len() <= 4 + MAX_TEMPLATE + 3 && e.ends_with("..."), "{e}");
    }

    #[test]
    fn a_baseline_teaches_noise_and_a_real_change_stays_real() {
        let rules = CompareRules::default();
        let p = json(
            r#"{"id":"a1","ts":1,"items":[{"v":1,"at":1},{"v":2,"at":2}],"plan":"free"}"#,
            "X-Instance: p\r\n",
        );
        let b = json(
            r#"{"id":"b7","ts":2,"items":[{"v":1,"at":5},{"v":2,"at":6}],"plan":"free"}"#,
            "X-Instance: b\r\n",
        );
        let seen = Observed::between(&rules, &p, &b);
        assert_eq!(seen.headers, ["x-instance"]);
        let paths: Vec<String> = seen.json.iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["$.id", "$.items[*].at", "$.ts"]);
        let mut t = NoiseTable::default();
        let ep = endpoint("GET", "/users/1");
        t.learn(&ep, &seen);
        t.learn(&ep, &seen);
        assert_eq!(t.fields(&ep), 4);
        let snap = t.snapshot();
        assert_eq!(snap[0].fields[0], ("header:x-instance".to_string(), 2));
        // The candidate differs on every noise field and on one real one.
        let c = json(
            r#"{"id":"c3","ts":3,"items":[{"v":1,"at":9},{"v":2,"at":9}],"plan":"pro"}"#,
            "X-Instance: c\r\n",
        );
        let v = compare_with(&rules, &t.view(&ep, None), &p, &c);
        assert!(v.body_mismatch() && !v.header_mismatch() && v.noise_differs());
        let b = v.body.as_ref().unwrap();
        assert_eq!(b.paths, ["$.plan"]);
        assert_eq!(
            b.noise_paths,
            ["$.id", "$.items[0].at", "$.items[1].at", "$.ts"]
        );
        // Only noise: no mismatch. Another endpoint learned nothing: all real.
        let n = json(
            r#"{"id":"c4","ts":4,"items":[{"v":1,"at":0},{"v":2,"at":0}],"plan":"free"}"#,
            "X-Instance: c\r\n",
        );
        let v = compare_with(&rules, &t.view(&ep, None), &p, &n);
        assert!(!v.body_mismatch() && !v.header_mismatch() && v.noise_differs());
        let v = compare_with(&rules, &t.view("GET /other", None), &p, &n);
        assert!(v.body_mismatch() && v.header_mismatch());
        // The request's own baseline answer counts even where nothing was learned.
        let v = compare_with(&rules, &t.view("GET /other", Some(&seen)), &p, &n);
        assert!(!v.body_mismatch() && !v.header_mismatch());
    }

    #[test]
    fn non_json_bodies_are_noisy_as_a_whole_and_bounds_are_counted() {
        let rules = CompareRules::default();
        let text = |s: &str| ResponseSample::ok_200("Content-Type: text/plain\r\n", s);
        let seen = Observed::between(&rules, &text("ok from p"), &text("ok from b"));
        assert!(seen.body && seen.json.is_empty());
        let mut t = NoiseTable::default();
        t.learn("GET /health", &seen);
        let v = compare_with(
            &rules,
            &t.view("GET /health", None),
            &text("ok from p"),
            &text("down"),
        );
        assert!(!v.body_mismatch() && v.noise_differs());
        // Equal answers teach nothing and take no room.
        t.learn("GET /same", &Observed::default());
        assert_eq!(t.snapshot().len(), 1);
        // Fields per endpoint, then endpoints.
        let many = Observed {
            headers: (0..MAX_FIELDS + 5).map(|i| format!("x-{i}")).collect(),
            ..Default::default()
        };
        t.learn("GET /many", &many);
        assert_eq!(t.fields("GET /many"), MAX_FIELDS);
        assert_eq!(t.losses().fields_full, 5);
        for i in 0..MAX_ENDPOINTS + 3 {
            t.learn(&format!("GET /e{i}"), &seen);
        }
        assert_eq!(t.snapshot().len(), MAX_ENDPOINTS);
        assert_eq!(t.losses().endpoints_full, 3 + 2);
    }
}
