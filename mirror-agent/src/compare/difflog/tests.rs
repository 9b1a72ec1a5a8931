use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::compare::rules::CompareRules;
use crate::compare::{MismatchKind, PrimaryInfo, PrimarySide, content};
use crate::http::response::ResponseSample;

fn cap(head: &str, body: &str) -> ResponseSample {
    ResponseSample::ok_200(head, body)
}

fn verdict(p: ResponseSample, m: ResponseSample, target: &str) -> Verdict {
    Verdict {
        key: (1, 2),
        mirror: 0,
        primary: PrimarySide {
            status: 200,
            latency: Duration::from_micros(1500),
        },
        mirror_side: MirrorSide::Answered {
            status: 200,
            latency: Duration::from_millis(3),
        },
        mismatch: None,
        latency_difference: Some(0.0015),
        info: Some(Arc::new(PrimaryInfo {
            method: "GET".into(),
            target: target.into(),
            capture: Some(p),
        })),
        mirror_capture: Some(Arc::new(m)),
    }
}

/// A path of the test's own; a leftover of an earlier run is removed (the log refuses to
/// overwrite a file).
fn temp(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("mirror-difflog-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn credentials_are_redacted_everywhere() {
    let path = temp("redact");
    let log = DiffLog::create(&path, 10, HashSet::from(["x-internal".to_string()]), false).unwrap();
    let head = |auth: &str, n: &str| {
        format!(
            "Content-Type: application/json\r\nAuthorization: {auth}\r\nSet-Cookie: s={auth}\r\n\
             X-Api-Key: {auth}\r\nX-Internal: {auth}\r\nX-Plain: {n}\r\n"
        )
    };
    let p = cap(
        &head("Bearer PRIMARYSECRET", "1"),
        r#"{"a":1,"access_token":"PRIMARYSECRET"}"#,
    );
    let m = cap(
        &head("Bearer MIRRORSECRET", "2"),
        r#"{"a":2,"access_token":"MIRRORSECRET"}"#,
    );
    // Set-Cookie is ignored by default: to see it redacted when it differs, stop ignoring it.
    let mut rules = CompareRules::default();
    rules.ignored_headers.remove("set-cookie");
    let c = content::compare(&rules, &p, &m);
    let v = verdict(p, m, "/b?x=1&token=QSECRET&API_KEY=QSECRET2&sig=ok#frag");
    let line = log
        .line(
            UNIX_EPOCH + Duration::from_millis(1_764_162_502_123),
            "m1",
            &v,
            Some(&c),
        )
        .to_string();
    for secret in ["PRIMARYSECRET", "MIRRORSECRET", "QSECRET"] {
        assert!(!line.contains(secret), "{secret} leaked: {line}");
    }
    let o: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(o["time"], "2025-11-26T13:08:22.123Z");
    assert_eq!(
        o["path"],
        "/b?x=1&token=[redacted]&API_KEY=[redacted]&sig=ok#frag"
    );
    assert_eq!(o["method"], "GET");
    assert_eq!(o["kinds"], serde_json::json!(["header", "body"]));
    assert_eq!(o["primary"]["latency_ms"], 1.5);
    let headers = o["headers"].as_array().unwrap();
    let names: Vec<&str> = headers
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "authorization",
            "set-cookie",
            "x-api-key",
            "x-internal",
            "x-plain"
        ]
    );
    for h in &headers[..4] {
        assert_eq!(
            (&h["primary"], &h["mirror"]),
            (&"[redacted]".into(), &"[redacted]".into())
        );
    }
    assert_eq!(
        (&headers[4]["primary"], &headers[4]["mirror"]),
        (&"1".into(), &"2".into())
    );
    // Paths are names, not values: a differing secret member is listed, its value is not.
    assert_eq!(
        o["json_paths"],
        serde_json::json!(["$.a", "$.access_token"]),
        "{line}"
    );
    assert!(
        o["mirror_body"]["text"]
            .as_str()
            .unwrap()
            .contains("[redacted]")
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn excerpts_are_bounded_and_marked() {
    let long = "é".repeat(EXCERPT_BYTES);
    let e = excerpt(long.as_bytes(), false);
    assert!(e["text"].as_str().unwrap().len() <= EXCERPT_BYTES);
    assert_eq!(e["truncated"], true);
    assert_eq!(excerpt(b"short", false)["truncated"], false);
    assert_eq!(excerpt(b"short", true)["truncated"], true);
}

#[test]
fn rate_limit_counts_suppressed_lines_and_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    // Created by the log: private (an existing file is refused, see `output_file`).
    let path = temp("rate");
    let mut log = DiffLog::create(&path, 3, HashSet::new(), false).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut v = verdict(cap("", "a"), cap("", "b"), "/x");
    v.mismatch = Some(MismatchKind::StatusCode);
    let t0 = Instant::now();
    for _ in 0..10 {
        log.write("m", &v, None, t0);
    }
    assert_eq!((log.stats.lines, log.stats.suppressed), (3, 7));
    // Half a second later: one and a half tokens, one line.
    for _ in 0..3 {
        log.write("m", &v, None, t0 + Duration::from_millis(500));
    }
    assert_eq!((log.stats.lines, log.stats.suppressed), (4, 9));
    log.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 4);
    for l in text.lines() {
        let o: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(o["kinds"], serde_json::json!(["status_code"]));
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn write_errors_are_counted_not_fatal() {
    // A file opened read-only fails every write (EBADF), as a full disk would.
    let path = temp("readonly");
    let mut log = DiffLog::create(&path, 100, HashSet::new(), false).unwrap();
    log.file = std::fs::File::open(&path).unwrap();
    let mut v = verdict(cap("", "a"), cap("", "b"), "/x");
    v.mismatch = Some(MismatchKind::StatusClass);
    log.write("m", &v, None, Instant::now());
    log.write("m", &v, None, Instant::now());
    assert_eq!((log.stats.lines, log.stats.errors), (0, 2));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
    let _ = SystemTime::now();
}
