//! Telemetry: the agent's metrics (Prometheus endpoint and OTLP), the per-request duration
//! histograms, and the mirror spans with W3C trace context.
//!
//! Owns every `opentelemetry*` and `prometheus_client` import of the crate (the OpenTelemetry
//! APIs churn; one module absorbs it). It counts nothing itself: the stages keep cumulative
//! counters, and the driver hands their snapshots to [`Telemetry::update_from`] about once a
//! second; both exporters report those values as they are. What happens per request arrives
//! by subscription ([`observer`]): [`ReplayTelemetry`] is replay's observer (a span and a
//! duration per copy) and [`CompareTelemetry`] the comparison's subscriber (the primary's
//! durations, latency differences). Telemetry imports the stages it listens to, never the
//! other way round.
//!
//! Driver use (as `app` does):
//! ```ignore
//! let telemetry = Telemetry::start(config.telemetry).await?;   // AppError on failure
//! let replay_observer = telemetry.replay_observer(&replay_cfg.mirrors);
//! let hub = CompareHub::new(names, ttl, max, Some(telemetry.compare_subscriber()));
//! telemetry.set_ready(true);                              // capture attached / source open
//! // every second:
//! telemetry.update_from(kernel.as_ref(), Some(&pipeline_stats), Some(&replayer.snapshot()));
//! telemetry.update_compare(Some(&compare_snapshot));
//! // on exit:
//! telemetry.shutdown().await;                             // final OTLP export
//! ```

pub mod export_stats;
pub mod model;
pub mod observer;
mod otel;
mod prometheus;
pub mod request;
pub mod semconv;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::{Registry, Unit as PromUnit};
use thiserror::Error;

use crate::capture::ebpf::Counters;
use crate::pipeline::PipelineStats;
use crate::replay::stats::ReplaySnapshot;
use export_stats::{ExportSnapshot, ExportStats};
pub use model::Snapshots;
pub use observer::{CompareTelemetry, ReplayTelemetry};
pub use request::{InFlight, MirrorRequestRecorder, PrimaryRecorder, RequestResult};
pub use trace::{MirrorTracer, TraceparentMode};

/// Why telemetry could not start (reported as one line, exit status 2 for bad flags).
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bad --metrics-addr `{0}`: expected HOST:PORT, e.g. 0.0.0.0:9464")]
    BadMetricsAddr(String),
    #[error("bad --otlp-protocol `{0}`: expected grpc or http/protobuf")]
    BadProtocol(String),
    #[error("bad --otlp-traceparent `{0}`: expected rewrite, keep or strip")]
    BadTraceparentMode(String),
    #[error("bad --otlp-endpoint `{0}`: expected an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("OTLP exporter: {0}")]
    Otlp(String),
}

impl TelemetryError {
    /// Exit status: 2 for configuration errors, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            TelemetryError::Bind { .. } | TelemetryError::Otlp(_) => 1,
            _ => 2,
        }
    }
}

/// `--otlp-protocol` (or `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (collector port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318): the specification's default.
    #[default]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn parse(s: &str) -> Result<Self, TelemetryError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            _ => Err(TelemetryError::BadProtocol(s.into())),
        }
    }
}

/// OTLP export settings.
#[derive(Debug, Clone, Default)]
pub struct OtlpConfig {
    /// Base URL; `None` lets the exporter read `OTEL_EXPORTER_OTLP_[METRICS_|TRACES_]ENDPOINT`.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// `None`: `OTEL_METRIC_EXPORT_INTERVAL` or the SDK's 60 s.
    pub export_interval: Option<Duration>,
    /// `None`: `OTEL_SERVICE_NAME`, else `mirror-agent`.
    pub service_name: Option<String>,
    /// Export a span per mirrored request.
    pub traces: bool,
}

/// What [`Telemetry::start`] sets up.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub metrics_addr: Option<SocketAddr>,
    pub otlp: Option<OtlpConfig>,
    pub traceparent: TraceparentMode,
}

/// Updates the exported values from a task other than the one owning [`Telemetry`].
#[derive(Debug, Clone)]
pub struct SnapshotUpdater {
    snapshots: Arc<Mutex<Snapshots>>,
    export_stats: Option<Arc<ExportStats>>,
}

impl SnapshotUpdater {
    /// As [`Telemetry::update_from`].
    pub fn update_from(
        &self,
        kernel: Option<&Counters>,
        pipeline: Option<&PipelineStats>,
        replay: Option<&ReplaySnapshot>,
    ) {
        let mut s = crate::sync::lock(&self.snapshots);
        s.kernel = kernel.cloned();
        s.pipeline = pipeline.cloned();
        s.replay = replay.cloned();
        s.otlp = self.export_stats.as_ref().map(|e| e.snapshot());
    }
}

/// The running telemetry. Dropping it stops the endpoint; call [`Self::shutdown`] for the
/// final OTLP export.
pub struct Telemetry {
    snapshots: Arc<Mutex<Snapshots>>,
    endpoint: Arc<prometheus::Endpoint>,
    server: Option<prometheus::Server>,
    otel: Option<Arc<otel::Otel>>,
    /// Outcomes of the OTLP exports (only with OTLP on).
    export_stats: Option<Arc<ExportStats>>,
    instruments: Arc<request::Instruments>,
}

impl Telemetry {
    /// Starts the endpoint and exporters on the current tokio runtime: the OTLP channel's tasks
    /// run on it while the SDK's export thread waits on them, so the runtime's threads must
    /// never block on an export (flush and shutdown run on blocking threads). Works on a
    /// current-thread runtime too (`--threads 1`; `tests/telemetry_otlp.rs`).
    pub async fn start(cfg: TelemetryConfig) -> Result<Self, TelemetryError> {
        let snapshots = Arc::new(Mutex::new(Snapshots::default()));
        let client_prom = request::new_family();
        let server_prom = request::new_family();
        let difference_prom = request::new_difference_family();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(prometheus::SnapshotCollector {
            snapshots: snapshots.clone(),
        }));
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of mirrored requests, request sent to response read",
            PromUnit::Seconds,
            client_prom.clone(),
        );
        registry.register_with_unit(
            "http_server_request_duration",
            "Primary's duration seen on the wire, last request byte to first response byte",
            PromUnit::Seconds,
            server_prom.clone(),
        );
        registry.register_with_unit(
            "mirror_compare_latency_difference",
            "Mirror latency minus the primary's for the same request",
            PromUnit::Seconds,
            difference_prom.clone(),
        );
        let endpoint = Arc::new(prometheus::Endpoint {
            registry,
            ready: Default::default(),
        });
        let export_stats = cfg.otlp.as_ref().map(|_| Arc::new(ExportStats::default()));
        let otel = match (&cfg.otlp, &export_stats) {
            (Some(o), Some(stats)) => Some(Arc::new(otel::Otel::start(o, &snapshots, stats)?)),
            _ => None,
        };
        let tracer = otel
            .as_ref()
            .zip(export_stats.as_ref())
            .and_then(|(o, stats)| Some((o.tracer_provider()?, stats.clone())))
            .map(|(p, stats)| MirrorTracer::new(p, cfg.traceparent, stats));
        let instruments = Arc::new(request::Instruments {
            client_prom,
            server_prom,
            difference_prom,
            client_otel: otel.as_ref().map(|o| o.client_hist.clone()),
            difference_otel: otel.as_ref().map(|o| o.difference_hist.clone()),
            server_otel: otel.as_ref().map(|o| o.server_hist.clone()),
            tracer,
        });
        let server = match cfg.metrics_addr {
            Some(a) => Some(prometheus::Server::start(a, endpoint.clone()).await?),
            None => None,
        };
        Ok(Self {
            snapshots,
            endpoint,
            server,
            otel,
            export_stats,
            instruments,
        })
    }

    /// Replaces the exported values with the stages' latest cumulative snapshots. `None` for
    /// a stage that does not run (its metrics are then absent, not zero).
    pub fn update_from(
        &self,
        kernel: Option<&Counters>,
        pipeline: Option<&PipelineStats>,
        replay: Option<&ReplaySnapshot>,
    ) {
        self.updater().update_from(kernel, pipeline, replay)
    }

    /// A handle that does [`Self::update_from`] from another task.
    pub fn updater(&self) -> SnapshotUpdater {
        SnapshotUpdater {
            snapshots: self.snapshots.clone(),
            export_stats: self.export_stats.clone(),
        }
    }

    /// The OTLP exports' outcomes so far (`None` without OTLP).
    pub fn otlp_snapshot(&self) -> Option<ExportSnapshot> {
        self.export_stats.as_ref().map(|s| s.snapshot())
    }

    /// Replaces the outputs' counters (`--record`, `--write-pcap`), like [`Self::update_from`].
    pub fn update_outputs(&self, outputs: &[crate::output_queue::OutputStats]) {
        let mut s = crate::sync::lock(&self.snapshots);
        s.outputs = outputs.iter().map(|o| (o.name(), o.snapshot())).collect();
    }

    /// Replaces the comparison counters (`--compare`), like [`Self::update_from`].
    pub fn update_compare(&self, compare: Option<&crate::compare::CompareSnapshot>) {
        let mut s = crate::sync::lock(&self.snapshots);
        s.compare = compare.cloned();
    }

    /// `/readyz` answers 200 once set (capture attached, or the pcap/recording opened).
    pub fn set_ready(&self, ready: bool) {
        self.endpoint.ready.store(ready, Ordering::Relaxed);
    }

    /// The per-copy hook for the replay dispatchers.
    pub fn recorder(&self) -> MirrorRequestRecorder {
        MirrorRequestRecorder {
            inner: self.instruments.clone(),
            series: Default::default(),
        }
    }

    /// The hook for the primary's paired responses.
    pub fn primary_recorder(&self) -> PrimaryRecorder {
        PrimaryRecorder {
            inner: self.instruments.clone(),
        }
    }

    /// Replay's observer for these mirrors (in the replayer's order).
    pub fn replay_observer(&self, mirrors: &[crate::replay::spec::MirrorSpec]) -> ReplayTelemetry {
        ReplayTelemetry::new(self.recorder(), mirrors)
    }

    /// The comparison's subscriber.
    pub fn compare_subscriber(&self) -> Arc<dyn crate::compare::CompareSubscriber> {
        Arc::new(CompareTelemetry {
            mirrors: self.recorder(),
            primary: self.primary_recorder(),
        })
    }

    /// The address `/metrics` is served on (the bound port when `:0` was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }

    /// The `/metrics` text as served now.
    pub fn render_prometheus(&self) -> String {
        self.endpoint.render().unwrap_or_default()
    }

    /// Exports pending OTLP data now (blocking the calling thread on the export; run it on a
    /// blocking thread).
    pub async fn flush(&self) {
        if let Some(o) = self.otel.clone() {
            let _ = tokio::task::spawn_blocking(move || o.flush()).await;
        }
    }

    /// Final OTLP export, then stops the endpoint. Returns the OTLP exports' outcomes after
    /// that final export (`None` without OTLP), for the exit summary.
    pub async fn shutdown(mut self) -> Option<ExportSnapshot> {
        if let Some(o) = self.otel.take() {
            let _ = tokio::task::spawn_blocking(move || o.shutdown()).await;
        }
        self.server.take();
        self.otlp_snapshot()
    }
}
