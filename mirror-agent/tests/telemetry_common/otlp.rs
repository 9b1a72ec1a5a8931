//! A real OTLP receiver for the telemetry tests: a tonic gRPC server implementing the official
//! collector services (`opentelemetry-proto` generated types), and an HTTP endpoint decoding
//! protobuf bodies (`/v1/metrics`, `/v1/traces`) with prost. Everything received is kept.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default, Clone)]
pub struct Received {
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// (path, content-type) of every HTTP request.
    pub http_requests: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// OTLP/gRPC on 127.0.0.1, a free port.
    pub async fn grpc() -> Self {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .expect("bind grpc receiver");
        let addr = incoming.local_addr().unwrap();
        let got = Received::default();
        let svc = got.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MetricsServiceServer::new(svc.clone()))
                .add_service(TraceServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await
                .expect("grpc receiver");
        });
        Self { addr, got, task }
    }

    /// OTLP/HTTP with protobuf bodies on 127.0.0.1, a free port.
    pub async fn http() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Received::default();
        let state = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let ct = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            state.http_requests.lock().unwrap().push((path.clone(), ct));
                            let ok = match path.as_str() {
                                "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
                                    .map(|m| state.metrics.lock().unwrap().push(m))
                                    .is_ok(),
                                "/v1/traces" => ExportTraceServiceRequest::decode(body)
                                    .map(|t| state.traces.lock().unwrap().push(t))
                                    .is_ok(),
                                _ => false,
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = if ok {
                                hyper::StatusCode::OK
                            } else {
                                hyper::StatusCode::BAD_REQUEST
                            };
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, got, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every metric received with this name, newest last.
    pub fn metrics_named(&self, name: &str) -> Vec<Metric> {
        let got = self.got.metrics.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| m.name == name)
            .cloned()
            .collect()
    }

    pub fn spans(&self) -> Vec<Span> {
        let got = self.got.traces.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .cloned()
            .collect()
    }

    /// The `service.name` of every metrics export.
    pub fn service_names(&self) -> Vec<String> {
        let got = self.got.metrics.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.resource_metrics)
            .filter_map(|rm| rm.resource.as_ref())
            .filter_map(|r| attr(&r.attributes, "service.name"))
            .collect()
    }
}

/// A string (or int, rendered) attribute value.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            any_value::Value::IntValue(i) => i.to_string(),
            any_value::Value::BoolValue(b) => b.to_string(),
            any_value::Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

/// (attributes, value) of each Sum or Gauge point; (attributes, count) of Histogram points.
pub fn points(m: &Metric) -> Vec<(Vec<KeyValue>, f64)> {
    let num = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    };
    match &m.data {
        Some(metric::Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| (p.attributes.clone(), num(&p.value)))
            .collect(),
        Some(metric::Data::Gauge(g)) => g
            .data_points
            .iter()
            .map(|p| (p.attributes.clone(), num(&p.value)))
            .collect(),
        Some(metric::Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| (p.attributes.clone(), p.count as f64))
            .collect(),
        _ => Vec::new(),
    }
}

/// Polls `cond` every 50 ms up to `limit` (async: the receiver runs on the same runtime).
pub async fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
