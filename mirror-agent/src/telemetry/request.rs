//! Per-request instruments: `http.client.request.duration` for each mirrored copy,
//! `http.server.request.duration` for the primary's exchanges seen on the wire, and the mirror
//! span of each copy.
//!
//! Owns [`MirrorRequestRecorder`], the cheap cloneable handle that telemetry's replay observer
//! calls once per copy, and [`PrimaryRecorder`] for the primary's exchanges the comparison
//! reports. Both record into the
//! Prometheus histogram families and, when OTLP is on, into the OpenTelemetry histograms.
//! Attribute values are bounded: methods outside RFC 9110's set become `_OTHER` (semantic
//! conventions), status codes outside 100-599 are not recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram as OtelHistogram;
use opentelemetry::trace::{Span as _, Status};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::semconv::normalize_method;
use super::trace::MirrorTracer;
use crate::replay::MirrorCopy;
use crate::replay::stats::{DropReason, ErrorKind, Outcome};

/// Bucket boundaries in seconds, as the HTTP semantic conventions advise for
/// `http.*.request.duration`.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

pub(super) type Labels = Vec<(&'static str, String)>;
pub(super) type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Mirror minus primary latency, seconds: symmetric around 0.
pub const DIFFERENCE_BUCKETS: [f64; 17] = [
    -5.0, -1.0, -0.25, -0.1, -0.05, -0.025, -0.01, -0.005, 0.0, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0, 5.0,
];

pub(super) fn new_family() -> HistFamily {
    Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS))
}

pub(super) fn new_difference_family() -> HistFamily {
    Family::new_with_constructor(|| Histogram::new(DIFFERENCE_BUCKETS))
}

/// How one copy ended, as the telemetry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestResult {
    /// A final response with this status.
    Status(u16),
    /// No response: the semantic-convention `error.type` value (`timeout`, `connect`, ...).
    Error(&'static str),
}

impl RequestResult {
    /// From the replay outcome; `None` for copies never sent (drops are counted, not timed).
    pub fn from_outcome(o: &Outcome) -> Option<(Self, Option<Duration>)> {
        match *o {
            Outcome::Answered {
                status, latency, ..
            } => Some((Self::Status(status), Some(latency))),
            Outcome::Timeout => Some((Self::Error("timeout"), None)),
            Outcome::Error(ErrorKind::Connect) => Some((Self::Error("connect"), None)),
            Outcome::Error(ErrorKind::Io) => Some((Self::Error("io"), None)),
            Outcome::Error(ErrorKind::BadResponse) => Some((Self::Error("bad_response"), None)),
            Outcome::Error(ErrorKind::Untranslatable) => {
                Some((Self::Error("untranslatable"), None))
            }
            Outcome::Dropped(DropReason::Backoff) => None,
            Outcome::Dropped(_) => None,
        }
    }
}

pub(super) struct Instruments {
    pub client_prom: HistFamily,
    pub server_prom: HistFamily,
    pub difference_prom: HistFamily,
    pub client_otel: Option<OtelHistogram<f64>>,
    pub difference_otel: Option<OtelHistogram<f64>>,
    pub server_otel: Option<OtelHistogram<f64>>,
    pub tracer: Option<MirrorTracer>,
}

fn labels(
    method: &str,
    result: RequestResult,
    server_address: &str,
    mirror: Option<&str>,
) -> Option<Labels> {
    let mut l: Labels = vec![("http.request.method", normalize_method(method).to_string())];
    match result {
        RequestResult::Status(s) if (100..600).contains(&s) => {
            l.push(("http.response.status_code", s.to_string()))
        }
        RequestResult::Status(_) => return None,
        RequestResult::Error(e) => l.push(("error.type", e.to_string())),
    }
    l.push(("server.address", server_address.to_string()));
    if let Some(m) = mirror {
        l.push(("mirror.name", m.to_string()));
    }
    Some(l)
}

/// Prometheus label names (Prometheus 2.x accepts no dots).
fn prom_key(k: &'static str) -> &'static str {
    match k {
        "http.request.method" => "http_request_method",
        "http.response.status_code" => "http_response_status_code",
        "error.type" => "error_type",
        "server.address" => "server_address",
        "mirror.name" => "mirror_name",
        other => other,
    }
}

fn prom_labels(l: &Labels) -> Labels {
    l.iter().map(|(k, v)| (prom_key(k), v.clone())).collect()
}

fn otel_attrs(l: &Labels) -> Vec<KeyValue> {
    l.iter()
        .map(|(k, v)| match (*k, v.parse::<i64>()) {
            ("http.response.status_code", Ok(n)) => KeyValue::new(*k, n),
            _ => KeyValue::new(*k, v.clone()),
        })
        .collect()
}

/// The hook the replay dispatcher calls per copy. Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct MirrorRequestRecorder {
    pub(super) inner: Arc<Instruments>,
    /// Series already resolved, per (mirror, server address).
    pub(super) series: Arc<Mutex<Vec<Arc<MirrorSeries>>>>,
}

/// The histogram series of one (mirror, server address), resolved once per (method, result).
///
/// Why: building the label set (five `String`s, then a copy with Prometheus names), hashing it
/// into the family and dropping it again cost about a tenth of the agent's CPU at 50k copies/s
/// (perf, `cargo xtask bench mirror`). A series handle shares the family's histogram, so
/// `/metrics` is unchanged; the number of entries is bounded like the family's label sets.
pub(super) struct MirrorSeries {
    mirror: String,
    server_address: String,
    /// Looked up once per copy: foldhash rather than SipHash (the key is a static method name
    /// and a result, not remote-controlled beyond the bounded label sets).
    by_result:
        Mutex<HashMap<(&'static str, RequestResult), Option<Series>, foldhash::fast::RandomState>>,
}

/// One label set's Prometheus histogram and OpenTelemetry attributes.
struct Series {
    prom: Histogram,
    otel: Vec<KeyValue>,
}

impl MirrorSeries {
    fn record(&self, inner: &Instruments, method: &'static str, result: RequestResult, secs: f64) {
        let mut by_result = crate::sync::lock(&self.by_result);
        let series = by_result.entry((method, result)).or_insert_with(|| {
            let l = labels(method, result, &self.server_address, Some(&self.mirror))?;
            Some(Series {
                prom: inner.client_prom.get_or_create_owned(&prom_labels(&l)),
                otel: otel_attrs(&l),
            })
        });
        // None: a status outside 100-599, not recorded.
        let Some(series) = series else { return };
        series.prom.observe(secs);
        if let Some(h) = &inner.client_otel {
            h.record(secs, &series.otel);
        }
    }
}

impl std::fmt::Debug for MirrorRequestRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorRequestRecorder")
    }
}

impl MirrorRequestRecorder {
    /// Records one copy's duration (`http.client.request.duration`).
    pub fn record(
        &self,
        mirror: &str,
        method: &str,
        result: RequestResult,
        duration: Duration,
        server_address: &str,
    ) {
        let series = self.series_for(mirror, server_address);
        self.record_in(&series, normalize_method(method), result, duration);
    }

    fn record_in(
        &self,
        series: &MirrorSeries,
        method: &'static str,
        result: RequestResult,
        duration: Duration,
    ) {
        let secs = duration.as_secs_f64();
        tracing::trace!(
            mirror = series.mirror,
            method,
            ?result,
            secs,
            server_address = series.server_address,
            "mirror request"
        );
        series.record(&self.inner, method, result, secs);
    }

    /// The series of (mirror, server address), created on first use (a few per agent).
    fn series_for(&self, mirror: &str, server_address: &str) -> Arc<MirrorSeries> {
        let mut all = crate::sync::lock(&self.series);
        if let Some(s) = all
            .iter()
            .find(|s| s.mirror == mirror && s.server_address == server_address)
        {
            return s.clone();
        }
        let s = Arc::new(MirrorSeries {
            mirror: mirror.to_string(),
            server_address: server_address.to_string(),
            by_result: Mutex::new(HashMap::default()),
        });
        all.push(s.clone());
        s
    }

    /// Records one comparison's latency difference (`mirror.compare.latency_difference`).
    pub(super) fn record_comparison(&self, mirror: &str, v: &crate::compare::Verdict) {
        let Some(d) = v.latency_difference else {
            return;
        };
        self.inner
            .difference_prom
            .get_or_create(&vec![("mirror_name", mirror.to_string())])
            .observe(d);
        if let Some(h) = &self.inner.difference_otel {
            h.record(d, &[KeyValue::new("mirror.name", mirror.to_string())]);
        }
    }

    /// Starts the telemetry of one copy about to be sent: the span (if tracing is on), with
    /// the copy's `traceparent` handled per the configured mode. Call [`InFlight::finish`]
    /// with the outcome.
    pub fn start(
        &self,
        mirror: &str,
        server_address: &str,
        server_port: Option<u16>,
        copy: &mut MirrorCopy,
    ) -> InFlight {
        self.start_on(&self.series(mirror, server_address), server_port, copy)
    }

    /// The series of one (mirror, server address), for [`Self::start_on`]: resolved once per
    /// mirror instead of once per copy (a lock and a scan of the series list).
    pub fn series(&self, mirror: &str, server_address: &str) -> SeriesHandle {
        SeriesHandle(self.series_for(mirror, server_address))
    }

    /// [`Self::start`] on a series resolved before.
    pub fn start_on(
        &self,
        series: &SeriesHandle,
        server_port: Option<u16>,
        copy: &mut MirrorCopy,
    ) -> InFlight {
        let series = series.0.clone();
        let span = self.inner.tracer.as_ref().map(|t| {
            Box::new(t.mirror_trace_context(
                &series.mirror,
                &series.server_address,
                server_port,
                copy,
            ))
        });
        InFlight {
            recorder: self.clone(),
            series,
            method: normalize_method(copy.method()),
            started: Instant::now(),
            span,
        }
    }
}

/// A resolved (mirror, server address) series ([`MirrorRequestRecorder::series`]).
#[derive(Clone)]
pub struct SeriesHandle(Arc<MirrorSeries>);

impl std::fmt::Debug for SeriesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeriesHandle({}, {})",
            self.0.mirror, self.0.server_address
        )
    }
}

/// One copy between [`MirrorRequestRecorder::start`] and its outcome.
pub struct InFlight {
    recorder: MirrorRequestRecorder,
    series: Arc<MirrorSeries>,
    /// Already normalized (`_OTHER` for unknown methods).
    method: &'static str,
    started: Instant,
    /// Boxed: a span is 288 bytes, and every queued copy carries an `InFlight` through the
    /// mirror's queue and batches (moved several times); without tracing this stays 8 bytes.
    span: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl InFlight {
    /// Ends the span and records the duration (the replay's measured latency when answered,
    /// else the time since `start`). Drops end the span as an error and record no duration.
    pub fn finish(mut self, outcome: &Outcome) {
        let res = RequestResult::from_outcome(outcome);
        if let Some((result, latency)) = res {
            let d = latency.unwrap_or_else(|| self.started.elapsed());
            self.recorder
                .record_in(&self.series, self.method, result, d);
        }
        if let Some(mut span) = self.span.take() {
            if let Outcome::Answered {
                grpc_status: Some(code),
                ..
            } = outcome
            {
                span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(*code)));
            }
            match res {
                Some((RequestResult::Status(s), _)) => {
                    span.set_attribute(KeyValue::new("http.response.status_code", s as i64));
                    // Client spans: 4xx and 5xx are errors (HTTP semantic conventions).
                    if s >= 400 {
                        span.set_attribute(KeyValue::new("error.type", s.to_string()));
                        span.set_status(Status::error(""));
                    }
                }
                Some((RequestResult::Error(e), _)) => {
                    span.set_attribute(KeyValue::new("error.type", e));
                    span.set_status(Status::error(e));
                }
                None => {
                    span.set_attribute(KeyValue::new("error.type", "not_sent"));
                    span.set_status(Status::error("not sent"));
                }
            }
            span.end();
        }
    }
}

/// Records the primary's exchanges as observed on the wire (`http.server.request.duration`,
/// last request byte to first response byte).
#[derive(Clone)]
pub struct PrimaryRecorder {
    pub(super) inner: Arc<Instruments>,
}

impl std::fmt::Debug for PrimaryRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrimaryRecorder")
    }
}

impl PrimaryRecorder {
    pub fn record(&self, method: &str, status: u16, duration: Duration, server_address: &str) {
        let Some(l) = labels(method, RequestResult::Status(status), server_address, None) else {
            return;
        };
        let secs = duration.as_secs_f64();
        self.inner
            .server_prom
            .get_or_create(&prom_labels(&l))
            .observe(secs);
        if let Some(h) = &self.inner.server_otel {
            h.record(secs, &otel_attrs(&l));
        }
    }
}

#[cfg(test)]
mod cost {
    /// Prints the per-copy cost of the hooks (a table, no assertion on time). Run with
    /// `cargo test --release -p mirror-agent --lib telemetry::request::cost -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: prints a table"]
    async fn per_copy_cost() {
        use std::time::{Duration, Instant};

        use super::super::trace::TraceparentMode;
        use super::super::{OtlpConfig, Telemetry, TelemetryConfig};
        use crate::replay::stats::Outcome;

        // OTLP on (to an endpoint nobody answers: exports fail quietly, the hooks still run).
        let t = Telemetry::start(TelemetryConfig {
            metrics_addr: None,
            otlp: Some(OtlpConfig {
                endpoint: Some("http://127.0.0.1:9".into()),
                export_interval: Some(Duration::from_secs(3600)),
                traces: true,
                ..Default::default()
            }),
            traceparent: TraceparentMode::Rewrite,
        })
        .await
        .unwrap();
        let rec = t.recorder();
        let copy = crate::replay::testutil::copy(
            b"GET /orders/42 HTTP/1.1\r\nHost: shop\r\nUser-Agent: x\r\nAccept: */*\r\n\
              traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        );
        let n = 20_000u32;
        let t0 = Instant::now();
        for _ in 0..n {
            rec.record(
                "app-v2",
                "GET",
                super::RequestResult::Status(200),
                Duration::from_millis(2),
                "10.0.0.5",
            );
        }
        let record = t0.elapsed() / n;
        let t0 = Instant::now();
        for _ in 0..n {
            let f = rec.start("app-v2", "10.0.0.5", Some(8080), &mut copy.clone());
            f.finish(&Outcome::Answered {
                status: 200,
                latency: Duration::from_millis(2),
                grpc_status: None,
            });
        }
        let span = t0.elapsed() / n;
        println!("| hook | per copy |\n|---|---|");
        println!("| record (Prometheus + OTLP histogram) | {record:?} |");
        println!("| start+finish (span, traceparent rewrite, histogram) | {span:?} |");
    }
}
