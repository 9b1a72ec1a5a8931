//! The OpenTelemetry side: OTLP metric and span exporters (gRPC via tonic, or HTTP/protobuf),
//! the meter provider whose observable instruments read the model's snapshots, and the tracer
//! provider behind the mirror spans.
//!
//! Owns the providers and their shutdown (final flush), and counts every export's outcome in
//! [`ExportStats`]. The standard `OTEL_*` variables are
//! honoured by the SDK and exporter themselves (endpoint, per-signal endpoints, headers,
//! timeout, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`); what the command line sets explicitly wins over them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as SdkSpanExporter};

use super::export_stats::ExportStats;
use super::model::{DEFS, Kind, Snapshots, Value};
use super::request::{DIFFERENCE_BUCKETS, DURATION_BUCKETS};
use super::{OtlpConfig, OtlpProtocol, TelemetryError};

/// Providers kept alive for the run; [`Otel::shutdown`] flushes them.
pub(super) struct Otel {
    meters: SdkMeterProvider,
    tracers: Option<SdkTracerProvider>,
    pub client_hist: Histogram<f64>,
    pub server_hist: Histogram<f64>,
    pub difference_hist: Histogram<f64>,
}

fn resource(cfg: &OtlpConfig) -> Resource {
    let mut b = Resource::builder();
    // OTEL_SERVICE_NAME (read by the builder's env detector) wins over our default name.
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty());
    match (&cfg.service_name, from_env) {
        (Some(n), _) => b = b.with_service_name(n.clone()),
        (None, false) => b = b.with_service_name("mirror-agent"),
        (None, true) => {}
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `--otlp-endpoint` is a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: HTTP appends the signal
/// path (`/v1/metrics`, `/v1/traces`); gRPC uses it as is.
fn endpoint(cfg: &OtlpConfig, signal_path: &str) -> Option<String> {
    let e = cfg.endpoint.as_deref()?;
    Some(match cfg.protocol {
        OtlpProtocol::Grpc => e.to_string(),
        OtlpProtocol::HttpProtobuf => format!("{}{signal_path}", e.trim_end_matches('/')),
    })
}

/// Builds one signal's OTLP exporter (`MetricExporter` or `SpanExporter`: their builders have
/// the same methods but no common trait, hence a macro rather than a generic function).
macro_rules! otlp_exporter {
    ($exporter:ty, $cfg:expr, $signal_path:literal) => {{
        let cfg: &OtlpConfig = $cfg;
        let ep = endpoint(cfg, $signal_path);
        let built = match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut b = <$exporter>::builder()
                    .with_tonic()
                    .with_protocol(Protocol::Grpc);
                if let Some(ep) = ep {
                    b = b.with_endpoint(ep);
                }
                b.build()
            }
            OtlpProtocol::HttpProtobuf => {
                let mut b = <$exporter>::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary);
                if let Some(ep) = ep {
                    b = b.with_endpoint(ep);
                }
                b.build()
            }
        };
        built.map_err(|e| TelemetryError::Otlp(e.to_string()))
    }};
}

/// An exporter that counts what its inner exporter achieved in [`ExportStats`]: the SDK only
/// logs a failed export (and not at all without its internal-logs feature).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let r = self.inner.export(metrics).await;
        self.stats
            .metrics_exported(r.as_ref().map(|_| ()).map_err(|e| e as _));
        r
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

impl<E: SdkSpanExporter> SdkSpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        self.stats
            .spans_exported(n, r.as_ref().map(|_| ()).map_err(|e| e as _));
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Registers one observable instrument per model entry; each reads the latest snapshots.
fn register_observables(meter: &Meter, snapshots: &Arc<Mutex<Snapshots>>) {
    for def in DEFS {
        let snaps = snapshots.clone();
        let read = move || -> Vec<super::model::Point> {
            let s = crate::sync::lock(&snaps);
            def.points(&s)
        };
        let attrs = |pt: &super::model::Point| -> Vec<KeyValue> {
            pt.attrs
                .iter()
                .map(|(k, v)| KeyValue::new(*k, v.clone()))
                .collect()
        };
        match def.kind {
            Kind::Counter => {
                meter
                    .u64_observable_counter(def.name)
                    .with_description(def.help)
                    .with_unit(def.unit.ucum())
                    .with_callback(move |obs| {
                        for pt in read() {
                            let v = match pt.value {
                                Value::U64(v) => v,
                                Value::F64(v) => v as u64,
                            };
                            obs.observe(v, &attrs(&pt));
                        }
                    })
                    .build();
            }
            Kind::Gauge => {
                meter
                    .f64_observable_gauge(def.name)
                    .with_description(def.help)
                    .with_unit(def.unit.ucum())
                    .with_callback(move |obs| {
                        for pt in read() {
                            obs.observe(pt.value.as_f64(), &attrs(&pt));
                        }
                    })
                    .build();
            }
        }
    }
}

impl Otel {
    /// Builds the exporters and providers. Must run inside a tokio runtime (tonic's channel).
    pub fn start(
        cfg: &OtlpConfig,
        snapshots: &Arc<Mutex<Snapshots>>,
        stats: &Arc<ExportStats>,
    ) -> Result<Self, TelemetryError> {
        let resource = resource(cfg);
        let metrics = Counted {
            inner: otlp_exporter!(MetricExporter, cfg, "/v1/metrics")?,
            stats: stats.clone(),
        };
        let mut reader = PeriodicReader::builder(metrics);
        if let Some(i) = cfg.export_interval {
            reader = reader.with_interval(i);
        }
        let meters = SdkMeterProvider::builder()
            .with_reader(reader.build())
            .with_resource(resource.clone())
            .build();
        let meter = meters.meter("mirror-agent");
        register_observables(&meter, snapshots);
        let hist = |name: &'static str, help: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        let client_hist = hist(
            "http.client.request.duration",
            "Duration of mirrored requests, request sent to response read.",
            &DURATION_BUCKETS,
        );
        let server_hist = hist(
            "http.server.request.duration",
            "Primary's duration seen on the wire: last request byte to first response byte.",
            &DURATION_BUCKETS,
        );
        let difference_hist = hist(
            "mirror.compare.latency_difference",
            "Mirror latency minus the primary's for the same request.",
            &DIFFERENCE_BUCKETS,
        );
        let tracers = if cfg.traces {
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(Counted {
                        inner: otlp_exporter!(SpanExporter, cfg, "/v1/traces")?,
                        stats: stats.clone(),
                    })
                    .with_resource(resource)
                    .build(),
            )
        } else {
            None
        };
        Ok(Self {
            meters,
            tracers,
            client_hist,
            server_hist,
            difference_hist,
        })
    }

    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracers.as_ref()
    }

    /// Exports what is pending now (metrics collected from the latest snapshots, ended spans).
    pub fn flush(&self) {
        if let Err(e) = self.meters.force_flush() {
            tracing::warn!(error = %e, "OTLP metrics flush failed");
        }
        if let Some(t) = &self.tracers
            && let Err(e) = t.force_flush()
        {
            tracing::warn!(error = %e, "OTLP spans flush failed");
        }
    }

    /// Final export and stop. Blocks up to the exporters' timeouts: call from a blocking
    /// context (`spawn_blocking`) or after the runtime's work is done.
    pub fn shutdown(&self) {
        self.flush();
        let _ = self.meters.shutdown_with_timeout(Duration::from_secs(5));
        if let Some(t) = &self.tracers {
            let _ = t.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}
