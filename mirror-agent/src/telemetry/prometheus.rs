//! The Prometheus side: a registry whose collector reads the model's snapshots at scrape time,
//! and the HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
//!
//! Owns the listener and its task. The text is OpenMetrics as prometheus-client encodes it
//! (counters get `_total`, units their suffix), so names match what an OpenTelemetry Collector's
//! Prometheus exporter would produce from the OTLP side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit as PromUnit};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::TelemetryError;
use super::model::{DEFS, Kind, Snapshots, Unit, Value, prometheus_base};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes every [`DEFS`] entry from the latest snapshots on each scrape.
#[derive(Debug)]
pub(super) struct SnapshotCollector {
    pub snapshots: Arc<Mutex<Snapshots>>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Clone out of the lock: encoding must not hold it while the driver updates.
        let snap = crate::sync::lock(&self.snapshots).clone();
        for def in DEFS {
            let points = def.points(&snap);
            if points.is_empty() {
                continue;
            }
            let name = prometheus_base(def.name);
            let unit = match def.unit {
                Unit::Bytes => Some(PromUnit::Bytes),
                // `Ratios` would render `_ratios`; the Prometheus convention is `_ratio`.
                Unit::Ratio => Some(PromUnit::Other("ratio".into())),
                Unit::Count(_) => None,
            };
            let ty = match def.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(&name, def.help, unit.as_ref(), ty)?;
            for pt in points {
                let labels: Vec<(String, String)> = pt
                    .attrs
                    .iter()
                    .map(|(k, v)| (prometheus_base(k), v.clone()))
                    .collect();
                let fam = metric.encode_family(&labels)?;
                match (def.kind, pt.value) {
                    (Kind::Counter, Value::U64(v)) => ConstCounter::new(v).encode(fam)?,
                    (Kind::Counter, Value::F64(v)) => ConstCounter::new(v).encode(fam)?,
                    (Kind::Gauge, Value::U64(v)) => ConstGauge::new(v as i64).encode(fam)?,
                    (Kind::Gauge, Value::F64(v)) => ConstGauge::new(v).encode(fam)?,
                }
            }
        }
        Ok(())
    }
}

/// State the HTTP handlers read.
pub(super) struct Endpoint {
    pub registry: Registry,
    pub ready: AtomicBool,
}

impl Endpoint {
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: &'static str| {
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = status;
            r
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => match self.render() {
                Ok(body) => {
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                    );
                    r
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

/// The running endpoint: its address and the task (stopped on drop).
pub(super) struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn start(addr: SocketAddr, endpoint: Arc<Endpoint>) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TelemetryError::Bind { addr, source })?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and the like: keep serving, the next accept may succeed.
                            tracing::debug!(error = %e, "metrics endpoint: accept failed");
                            continue;
                        }
                    },
                };
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let r = endpoint.respond(&req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "metrics endpoint: connection error");
                    }
                });
            }
        });
        tracing::info!(%addr, "metrics endpoint listening (/metrics, /healthz, /readyz)");
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every model entry shows up under the name `MetricDef::prometheus_name` promises (the name
    /// the dashboard and alerts use).
    #[test]
    fn rendered_names_match_the_model() {
        let snapshots = Arc::new(Mutex::new(super::super::model::tests_support::full()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector { snapshots }));
        let ep = Endpoint {
            registry,
            ready: AtomicBool::new(false),
        };
        let text = ep.render().unwrap();
        for def in DEFS {
            let name = def.prometheus_name();
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{name} missing from:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
