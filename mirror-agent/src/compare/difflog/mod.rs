//! `--diff-log FILE`: one JSON line per mismatching request, rate-limited, credentials never
//! written.
//!
//! Owns the file (created mode 0600, it may hold response data), the token bucket
//! (`--diff-log-rate` lines per second, burst of one second's worth; lines over the rate are
//! counted as suppressed, never silently lost), redaction, and write-error handling (counted,
//! logged once, never fatal). Redacted as `[redacted]`: the values of Authorization,
//! Proxy-Authorization, Cookie, Set-Cookie, of headers whose name looks like a credential
//! (token, secret, password, api-key, ...), of headers the user strips or ignores; query
//! parameters named like a credential; and in JSON body excerpts, members named like one.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::content::ContentVerdict;
use super::{MirrorSide, Verdict};

/// Body excerpt bytes per side in a line.
pub const EXCERPT_BYTES: usize = 512;
/// Default `--diff-log-rate`.
pub const DEFAULT_RATE: u32 = 10;

const REDACTED: &str = "[redacted]";
const ALWAYS_REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];
/// Substrings of a lower-cased name that mark a credential (query parameter, header, JSON member).
const CREDENTIAL_WORDS: &[&str] = &[
    "token",
    "key",
    "password",
    "passwd",
    "secret",
    "signature",
    "auth",
    "credential",
    "session",
];

/// Counters of the diff log (exported with the comparison counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffLogStats {
    pub lines: u64,
    /// Lines over `--diff-log-rate`, not written.
    pub suppressed: u64,
    /// Lines that could not be written (disk full, ...).
    pub errors: u64,
}

/// A `--diff-log` file that cannot be created.
#[derive(Debug, thiserror::Error)]
#[error("--diff-log {0}")]
pub struct DiffLogError(crate::output_file::OutputFileError);

pub struct DiffLog {
    file: File,
    rate: f64,
    tokens: f64,
    last: Instant,
    redacted: HashSet<String>,
    pub stats: DiffLogStats,
}

impl std::fmt::Debug for DiffLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffLog")
            .field("stats", &self.stats)
            .finish()
    }
}

fn looks_secret(lower: &str) -> bool {
    CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

impl DiffLog {
    /// Creates (truncates) `path` with mode 0600. `redacted`: lower-case header names the user
    /// strips or ignores.
    /// Opens `path` by the agent's output-file rules ([`crate::output_file`]): created 0600,
    /// never through a symlink, an existing file only with `overwrite`.
    pub fn create(
        path: &Path,
        rate: u32,
        redacted: HashSet<String>,
        overwrite: bool,
    ) -> Result<Self, DiffLogError> {
        let file = crate::output_file::create(path, overwrite).map_err(DiffLogError)?;
        let rate = f64::from(rate.max(1));
        Ok(Self {
            file,
            rate,
            tokens: rate,
            last: Instant::now(),
            redacted,
            stats: DiffLogStats::default(),
        })
    }

    /// Token bucket: `rate` lines per second, burst `rate`.
    fn allow(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Writes the line of one mismatching request, or counts why not.
    pub fn write(
        &mut self,
        mirror: &str,
        v: &Verdict,
        content: Option<&ContentVerdict>,
        now: Instant,
    ) {
        if !self.allow(now) {
            self.stats.suppressed += 1;
            return;
        }
        let mut line = self.line(SystemTime::now(), mirror, v, content).to_string();
        line.push('\n');
        match self.file.write_all(line.as_bytes()) {
            Ok(()) => self.stats.lines += 1,
            Err(e) => {
                if self.stats.errors == 0 {
                    tracing::warn!(error = %e, "cannot write the diff log (reported once; lines are counted)");
                }
                self.stats.errors += 1;
            }
        }
    }

    fn header_value(&self, name: &str, values: &[String]) -> Value {
        if values.is_empty() {
            return Value::Null;
        }
        if ALWAYS_REDACTED.contains(&name) || self.redacted.contains(name) || looks_secret(name) {
            return json!(REDACTED);
        }
        json!(values.join(", "))
    }

    /// The JSON object of one line (pure: tests call it directly).
    pub fn line(
        &self,
        time: SystemTime,
        mirror: &str,
        v: &Verdict,
        content: Option<&ContentVerdict>,
    ) -> Value {
        let info = v.info.as_deref();
        let mut kinds: Vec<&str> = v.mismatch.iter().map(|k| k.as_str()).collect();
        let mut o = json!({
            "time": rfc3339(time),
            "mirror": mirror,
            "method": info.map(|i| i.method.as_str()),
            "path": info.map(|i| redact_target(&i.target)),
            "primary": {"status": v.primary.status, "latency_ms": ms(v.primary.latency)},
            "mirror_response": match v.mirror_side {
                MirrorSide::Answered { status, latency } => json!({"status": status, "latency_ms": ms(latency)}),
                MirrorSide::NoResponse => Value::Null,
            },
        });
        if let Some(c) = content {
            if c.header_mismatch() {
                kinds.push("header");
            }
            if c.body_mismatch() {
                kinds.push("body");
            }
            o["headers"] = c
                .headers
                .iter()
                .map(|h| {
                    json!({"name": h.name, "primary": self.header_value(&h.name, &h.primary),
                           "mirror": self.header_value(&h.name, &h.mirror), "noise": h.noise})
                })
                .collect();
            match &c.body {
                Ok(b) => {
                    o["body_mode"] = json!(b.mode.as_str());
                    o["body_truncated"] = json!(b.truncated);
                    // Differences a baseline showed to be noise: listed apart, never kinds.
                    if !b.noise_paths.is_empty() {
                        o["noise_json_paths"] = json!(b.noise_paths);
                    }
                    if b.noise_differs && b.noise_paths.is_empty() {
                        o["body_noise"] = json!(true);
                    }
                    if b.differs {
                        if b.mode == super::body::UsedMode::Json {
                            o["json_paths"] = json!(b.paths);
                            o["json_paths_more"] = json!(b.more_paths);
                        }
                        if let Some(at) = b.first_difference {
                            o["first_difference"] = json!(at);
                        }
                    }
                }
                Err(skip) => o["body_skipped"] = json!(skip.as_str()),
            }
        }
        o["kinds"] = json!(kinds);
        if content.is_some_and(ContentVerdict::body_mismatch)
            || v.mismatch.is_some() && v.mirror_capture.is_some()
        {
            if let Some(c) = info.and_then(|i| i.capture.as_ref()) {
                o["primary_body"] = excerpt(&c.body, c.truncated);
            }
            if let Some(c) = &v.mirror_capture {
                o["mirror_body"] = excerpt(&c.body, c.truncated);
            }
        }
        o
    }

    /// Flushes to the file (lines are written whole; this is for the end of the run).
    pub fn flush(&mut self) {
        let _ = self.file.flush();
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The request target with the values of credential-like query parameters redacted.
pub fn redact_target(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if looks_secret(&k.to_ascii_lowercase()) => format!("{k}={REDACTED}"),
            _ => kv.to_string(),
        })
        .collect();
    let mut s = format!("{path}?{}", parts.join("&"));
    if let Some(f) = fragment {
        s.push('#');
        s.push_str(f);
    }
    s
}

/// Members named like a credential get their value replaced, at any depth.
fn redact_json(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if looks_secret(&k.to_ascii_lowercase()) {
                    *val = json!(REDACTED);
                } else {
                    redact_json(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_json),
        _ => {}
    }
}

/// At most [`EXCERPT_BYTES`] of a body as text (JSON re-serialized with credentials redacted).
pub fn excerpt(body: &[u8], truncated: bool) -> Value {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact_json(&mut v);
            v.to_string()
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!({"text": &text[..end], "truncated": truncated || end < text.len()})
}

/// RFC 3339 UTC time with milliseconds. Hand-written (days-to-civil, H. Hinnant's algorithm)
/// to avoid a date crate for one timestamp format.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests;
