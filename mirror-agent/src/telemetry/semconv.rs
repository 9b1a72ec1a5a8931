//! Attribute values by the OpenTelemetry semantic conventions, shared by the histograms and the
//! spans: bounded method names and the `url.path` of a request target.

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
