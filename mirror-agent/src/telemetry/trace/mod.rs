//! W3C trace context for mirrored requests: find the client's `traceparent`, start a client span
//! linked to the primary's trace, and give the mirror a `traceparent` that is a child of that span.
//!
//! Owns the header surgery: the framer located the `traceparent` and `tracestate` fields (they
//! travel with the copy as [`TraceFields`]), and only the value bytes of the one `traceparent`
//! line are replaced (rewrite) or that line and `tracestate` removed (strip), so every other
//! byte of the request stays as the client sent it. Parsing and formatting the header value
//! itself is the SDK's `TraceContextPropagator`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use super::export_stats::ExportStats;
use super::semconv::{normalize_method, url_path};
use crate::http::{FieldAt, TraceFields};
use crate::replay::MirrorCopy;

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

/// The client's `traceparent` and `tracestate` values, as the propagator reads them.
struct ClientHeaders<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for ClientHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
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

/// The client's span context from the copy's `traceparent`, if present and valid.
pub fn client_span_context(bytes: &[u8], trace: &TraceFields) -> Option<SpanContext> {
    let traceparent = trace.traceparent_value(bytes)?.trim();
    if !well_formed(traceparent) {
        return None;
    }
    let headers = ClientHeaders {
        traceparent,
        tracestate: trace.tracestate_value(bytes),
    };
    let cx = TraceContextPropagator::new().extract(&headers);
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

/// Applies `mode` to the copy's bytes, keeping `copy.trace` true; nothing changes (the same
/// `Bytes`) without a single `traceparent` or in keep mode. Rewrite replaces only the value
/// bytes; strip removes the `traceparent` and `tracestate` lines.
pub fn apply_mode(copy: &mut MirrorCopy, mode: TraceparentMode, child: &str) {
    let Some(tp) = copy.trace_fields().traceparent else {
        return;
    };
    let raw = &copy.bytes;
    match mode {
        TraceparentMode::Keep => {}
        TraceparentMode::Rewrite => {
            let (vs, ve) = tp.value;
            let mut out = BytesMut::with_capacity(raw.len() - (ve - vs) + child.len());
            out.extend_from_slice(&raw[..vs]);
            out.extend_from_slice(child.as_bytes());
            out.extend_from_slice(&raw[ve..]);
            // Fields after the value moved by the difference in length.
            let moved = |f: FieldAt| {
                if f.line.0 > vs {
                    f.shifted(ve, vs + child.len())
                } else {
                    f
                }
            };
            copy.trace = TraceFields {
                traceparent: Some(FieldAt {
                    line: (tp.line.0, tp.line.1 - ve + vs + child.len()),
                    value: (vs, vs + child.len()),
                }),
                tracestate: copy
                    .trace_fields()
                    .tracestate
                    .iter()
                    .copied()
                    .map(moved)
                    .collect(),
            }
            .shared();
            copy.bytes = out.freeze();
        }
        TraceparentMode::Strip => {
            let mut cut: Vec<(usize, usize)> = copy
                .trace_fields()
                .tracestate
                .iter()
                .map(|f| f.line)
                .collect();
            cut.push(tp.line);
            cut.sort_unstable();
            let mut out = BytesMut::with_capacity(raw.len());
            let mut at = 0;
            for (s, e) in cut {
                out.extend_from_slice(&raw[at..s]);
                at = e;
            }
            out.extend_from_slice(&raw[at..]);
            copy.trace = None;
            copy.bytes = out.freeze();
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

    /// The self-contained per-copy step: starts the client span for one copy to `mirror`,
    /// linked to the client's trace when the copy carries a valid `traceparent`, and applies
    /// [`Self::mode`] to the copy's bytes. Reads what the framer learned; parses nothing.
    pub fn mirror_trace_context(
        &self,
        mirror: &str,
        server_address: &str,
        server_port: Option<u16>,
        copy: &mut MirrorCopy,
    ) -> Span {
        let method = normalize_method(copy.method());
        let name = if method == "_OTHER" { "HTTP" } else { method };
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", url_path(copy.target()).to_string()),
            KeyValue::new("server.address", server_address.to_string()),
            KeyValue::new("mirror.name", mirror.to_string()),
        ];
        if let Some(port) = server_port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        if method == "_OTHER" {
            attrs.push(KeyValue::new(
                "http.request.method_original",
                copy.method().to_string(),
            ));
        }
        attrs.push(KeyValue::new(
            "network.protocol.version",
            if copy.head.over_h2 { "2" } else { "1.1" },
        ));
        // RPC semantic conventions for gRPC calls (the request's head is searched only up to
        // its end: a body is never read here).
        let head_end = copy
            .bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(copy.bytes.len());
        if let Some((service, rpc_method)) =
            super::semconv::grpc_call(&copy.bytes[..head_end], copy.target())
        {
            attrs.push(KeyValue::new("rpc.system", "grpc"));
            attrs.push(KeyValue::new("rpc.service", service.to_string()));
            attrs.push(KeyValue::new("rpc.method", rpc_method.to_string()));
        }
        let client = client_span_context(&copy.bytes, copy.trace_fields());
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
        match client {
            Some(_) if self.mode == TraceparentMode::Rewrite => {
                use opentelemetry::trace::Span as _;
                apply_mode(copy, self.mode, &traceparent_for(span.span_context()));
            }
            // An invalid traceparent is left alone in rewrite mode: we cannot tell what the
            // client meant, and the bytes stay as sent.
            _ if self.mode == TraceparentMode::Rewrite => {}
            _ => apply_mode(copy, self.mode, ""),
        }
        span
    }
}

#[cfg(test)]
mod tests;
