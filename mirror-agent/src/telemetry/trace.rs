//! W3C trace context for mirrored requests: find the client's `traceparent`, start a client span
//! linked to the primary's trace, and give the mirror a `traceparent` that is a child of that span.
//!
//! Owns the header surgery: the request head is parsed with httparse and only the value bytes of
//! the one `traceparent` line are replaced (rewrite) or that line and `tracestate` removed
//! (strip), so every other byte of the request stays as the client sent it. Parsing and
//! formatting the header value itself is the SDK's `TraceContextPropagator`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use super::export_stats::ExportStats;
use super::request::{normalize_method, url_path};

/// What the mirror receives as `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceparentMode {
    /// Replace the value with a child of the mirror span (default), so the mirror's server
    /// spans land under our span instead of colliding with the primary's.
    #[default]
    Rewrite,
    /// Keep the client's value: the mirror's spans join the primary's trace.
    Keep,
    /// Remove `traceparent` and `tracestate`.
    Strip,
}

impl TraceparentMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rewrite" => Some(Self::Rewrite),
            "keep" => Some(Self::Keep),
            "strip" => Some(Self::Strip),
            _ => None,
        }
    }
}

/// Where the trace headers sit in a request's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub method: String,
    pub target: String,
    /// The single `traceparent` line: (line start, value start, value end, line end).
    /// `None` if absent, or present more than once (invalid per W3C trace context 3.2).
    pub traceparent: Option<(usize, usize, usize, usize)>,
    pub traceparent_value: Option<String>,
    /// `tracestate` lines (line start, line end).
    pub tracestate_lines: Vec<(usize, usize)>,
    pub tracestate_value: Option<String>,
}

/// Parses the head of `raw` (a complete request). `None` if it is not a parseable HTTP/1.x head.
pub fn find_trace_headers(raw: &[u8]) -> Option<TraceHeaders> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let lines = raw[..head_end].iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&raw[..head_end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let base = raw.as_ptr() as usize;
    let mut out = TraceHeaders {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let mut parents = 0;
    for h in req.headers.iter() {
        let name_start = h.name.as_ptr() as usize - base;
        let value_start = h.value.as_ptr() as usize - base;
        let value_end = value_start + h.value.len();
        let line_end = raw[value_end..head_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head_end, |p| value_end + p + 1);
        if h.name.eq_ignore_ascii_case("traceparent") {
            parents += 1;
            out.traceparent = Some((name_start, value_start, value_end, line_end));
            out.traceparent_value = std::str::from_utf8(h.value).ok().map(str::to_string);
        } else if h.name.eq_ignore_ascii_case("tracestate") {
            out.tracestate_lines.push((name_start, line_end));
            out.tracestate_value = std::str::from_utf8(h.value).ok().map(str::to_string);
        }
    }
    if parents > 1 {
        out.traceparent = None;
        out.traceparent_value = None;
    }
    Some(out)
}

struct OneHeader<'a>(&'a TraceHeaders);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0.traceparent_value.as_deref(),
            "tracestate" => self.0.tracestate_value.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// W3C trace context 3.2.2 field widths: `version-traceid(32)-parentid(16)-flags(2)`, lowercase
/// hex; version 00 has exactly these four fields, later versions may append more after `-`.
/// Checked here because the SDK propagator parses ids as numbers and accepts short ones.
fn well_formed(v: &str) -> bool {
    let mut parts = v.splitn(5, '-');
    let widths = [2, 32, 16, 2];
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut version = "";
    for (i, w) in widths.into_iter().enumerate() {
        match parts.next() {
            Some(p) if p.len() == w && hex(p) => {
                if i == 0 {
                    version = p;
                }
            }
            _ => return false,
        }
    }
    version != "ff" && (version != "00" || parts.next().is_none())
}

/// The client's span context from the request's `traceparent`, if present and valid.
pub fn client_span_context(h: &TraceHeaders) -> Option<SpanContext> {
    h.traceparent?;
    if !well_formed(h.traceparent_value.as_deref()?.trim()) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&OneHeader(h));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The `traceparent` value naming `sc` as the parent (version 00).
pub fn traceparent_for(sc: &SpanContext) -> String {
    let mut carrier = HashMap::new();
    let cx = Context::new().with_remote_span_context(sc.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Applies `mode` to the request bytes: the same `Bytes` when nothing changes.
pub fn apply_mode(raw: &Bytes, h: &TraceHeaders, mode: TraceparentMode, child: &str) -> Bytes {
    match (mode, h.traceparent) {
        (TraceparentMode::Keep, _) | (_, None) => raw.clone(),
        (TraceparentMode::Rewrite, Some((_, vs, ve, _))) => {
            let mut out = BytesMut::with_capacity(raw.len() - (ve - vs) + child.len());
            out.extend_from_slice(&raw[..vs]);
            out.extend_from_slice(child.as_bytes());
            out.extend_from_slice(&raw[ve..]);
            out.freeze()
        }
        (TraceparentMode::Strip, Some((ls, _, _, le))) => {
            let mut cut: Vec<(usize, usize)> = h.tracestate_lines.clone();
            cut.push((ls, le));
            cut.sort_unstable();
            let mut out = BytesMut::with_capacity(raw.len());
            let mut at = 0;
            for (s, e) in cut {
                out.extend_from_slice(&raw[at..s]);
                at = e;
            }
            out.extend_from_slice(&raw[at..]);
            out.freeze()
        }
    }
}

/// Starts mirror spans: one tracer for the whole agent.
#[derive(Clone)]
pub struct MirrorTracer {
    tracer: SdkTracer,
    pub mode: TraceparentMode,
    /// Counts started spans, so the ones the SDK never exported show (see `export_stats`).
    stats: Arc<ExportStats>,
}

impl std::fmt::Debug for MirrorTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorTracer")
            .field("mode", &self.mode)
            .finish()
    }
}

impl MirrorTracer {
    pub(super) fn new(
        provider: &SdkTracerProvider,
        mode: TraceparentMode,
        stats: Arc<ExportStats>,
    ) -> Self {
        Self {
            tracer: provider.tracer("mirror-agent"),
            mode,
            stats,
        }
    }

    /// The self-contained per-request step: starts the client span for one copy of `raw` to
    /// `mirror`, linked to the client's trace when `raw` carries a valid `traceparent`, and
    /// returns the bytes to send (with the `traceparent` per [`Self::mode`]).
    pub fn mirror_trace_context(
        &self,
        mirror: &str,
        server_address: &str,
        server_port: Option<u16>,
        raw: &Bytes,
    ) -> (Span, Bytes) {
        let h = find_trace_headers(raw).unwrap_or_default();
        let method = normalize_method(&h.method);
        let name = if method == "_OTHER" { "HTTP" } else { method };
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", url_path(&h.target).to_string()),
            KeyValue::new("server.address", server_address.to_string()),
            KeyValue::new("mirror.name", mirror.to_string()),
        ];
        if let Some(port) = server_port {
            attrs.push(KeyValue::new("server.port", port as i64));
        }
        if method == "_OTHER" {
            attrs.push(KeyValue::new(
                "http.request.method_original",
                h.method.clone(),
            ));
        }
        let client = client_span_context(&h);
        let links = client
            .iter()
            .map(|sc| Link::with_context(sc.clone()))
            .collect();
        // A root span (empty parent context) in its own trace: the mirror's work must not land
        // inside the primary's trace, only point at it.
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .with_links(links)
            .start_with_context(&self.tracer, &Context::new());
        self.stats.span_started();
        let bytes = match client {
            Some(_) if self.mode == TraceparentMode::Rewrite => {
                use opentelemetry::trace::Span as _;
                apply_mode(raw, &h, self.mode, &traceparent_for(span.span_context()))
            }
            // An invalid traceparent is left alone in rewrite mode: we cannot tell what the
            // client meant, and the bytes stay as sent.
            _ if self.mode == TraceparentMode::Rewrite => raw.clone(),
            _ => apply_mode(raw, &h, self.mode, ""),
        };
        (span, bytes)
    }
}

#[cfg(test)]
mod tests;
