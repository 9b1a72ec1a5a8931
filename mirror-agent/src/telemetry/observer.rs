//! Telemetry's subscriptions: it implements replay's observer (a span and a duration per copy)
//! and the comparison's subscriber (the primary's durations and latency differences). The
//! stages own their interfaces; telemetry only listens, so the arrows point down the stack.

use std::time::Duration;

use super::request::{InFlight, MirrorRequestRecorder, PrimaryRecorder, SeriesHandle};
use crate::compare::{CompareSubscriber, Verdict};
use crate::http::response::ResponseSample;
use crate::pipeline::RequestKey;
use crate::replay::spec::MirrorSpec;
use crate::replay::stats::Outcome;
use crate::replay::{MirrorCopy, NotSent, ReplayObserver};

/// One mirror's series (its name and host) and port, for its copies' durations and spans.
#[derive(Debug, Clone)]
struct MirrorLabels {
    series: SeriesHandle,
    port: u16,
}

/// Replay's observer: starts each copy's span when a worker takes it (rewriting its
/// `traceparent` per `--otlp-traceparent`) and records `http.client.request.duration` with its
/// outcome. Copies never sent are counted by replay and recorded nowhere here.
#[derive(Debug, Clone)]
pub struct ReplayTelemetry {
    recorder: MirrorRequestRecorder,
    mirrors: Vec<MirrorLabels>,
}

impl ReplayTelemetry {
    pub(super) fn new(recorder: MirrorRequestRecorder, mirrors: &[MirrorSpec]) -> Self {
        Self {
            mirrors: mirrors
                .iter()
                .map(|m| MirrorLabels {
                    series: recorder.series(&m.name, &m.host),
                    port: m.port,
                })
                .collect(),
            recorder,
        }
    }
}

impl ReplayObserver for ReplayTelemetry {
    type Flight = Option<InFlight>;

    fn sending(&self, mirror: usize, copy: &mut MirrorCopy) -> Option<InFlight> {
        let m = self.mirrors.get(mirror)?;
        Some(self.recorder.start_on(&m.series, Some(m.port), copy))
    }

    fn not_sent(&self, _: usize, _: RequestKey, _: NotSent) {}

    fn finished(
        &self,
        _: usize,
        _: &MirrorCopy,
        flight: Option<InFlight>,
        outcome: &Outcome,
        _: &mut Option<Box<ResponseSample>>,
    ) {
        if let Some(f) = flight {
            f.finish(outcome);
        }
    }
}

/// The comparison's subscriber: `http.server.request.duration` for the primary's exchanges
/// seen on the wire, `mirror.compare.latency_difference` per verdict.
#[derive(Debug, Clone)]
pub struct CompareTelemetry {
    pub(super) mirrors: MirrorRequestRecorder,
    pub(super) primary: PrimaryRecorder,
}

impl CompareSubscriber for CompareTelemetry {
    fn primary_exchange(&self, method: &str, status: u16, latency: Duration, server: &str) {
        self.primary.record(method, status, latency, server);
    }

    fn verdict(&self, mirror: &str, verdict: &Verdict) {
        self.mirrors.record_comparison(mirror, verdict);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::telemetry::Telemetry;

    #[tokio::test]
    async fn the_comparison_s_primary_exchanges_become_server_durations() {
        let t = Telemetry::start(Default::default()).await.unwrap();
        let subscriber = t.compare_subscriber();
        subscriber.primary_exchange("GET", 200, Duration::from_millis(5), "10.0.0.2");
        subscriber.primary_exchange("GET", 503, Duration::from_millis(6), "10.0.0.2");
        let text = t.render_prometheus();
        for status in ["200", "503"] {
            assert!(
                text.contains(&format!(
                    "http_server_request_duration_seconds_count{{http_request_method=\"GET\",http_response_status_code=\"{status}\",server_address=\"10.0.0.2\"}} 1"
                )),
                "{text}"
            );
        }
    }
}
