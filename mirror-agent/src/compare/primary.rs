//! The primary's side from the pipeline's events: remembers each request's method and last-byte
//! time until its paired response arrives, then hands the primary's status and latency to the
//! comparison (whose subscriber, telemetry, records `http.server.request.duration`).
//!
//! Owns that bounded memory: a [`crate::pipeline::CapturedResponse`] names its request only by
//! `(flow_id, seq_in_flow)`, so the request's details wait here. Requests never answered
//! (one-sided captures) leave in FIFO order when the bound is reached, counted in `evicted`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::{CompareHub, CompareSnapshot, PrimaryInfo, PrimarySide, RequestKey};
use crate::http::response::ResponseSample;
use crate::pipeline::PipelineEvent;

#[derive(Debug)]
struct Waiting {
    method: String,
    /// The request target, kept only with content comparison on (diff log).
    target: String,
    end_ts_ns: u64,
    server: String,
}

/// Driven by the pipeline driver with every [`PipelineEvent`] (single-threaded).
#[derive(Debug)]
pub struct PrimaryObserver {
    waiting: HashMap<RequestKey, Waiting>,
    order: VecDeque<RequestKey>,
    max: usize,
    hub: CompareHub,
    /// Requests forgotten unanswered because `max` were waiting.
    pub evicted: u64,
    /// Responses recorded.
    pub paired: u64,
    /// Responses whose request was not (or no longer) known.
    pub unknown: u64,
}

impl PrimaryObserver {
    pub fn new(hub: CompareHub, max_waiting: usize) -> Self {
        Self {
            waiting: HashMap::new(),
            order: VecDeque::new(),
            max: max_waiting.max(1),
            hub,
            evicted: 0,
            paired: 0,
            unknown: 0,
        }
    }

    pub fn on_event(&mut self, ev: &PipelineEvent) {
        self.observe(ev, None);
    }

    /// [`Self::on_event`] that moves the response's capture (if any) into the comparison
    /// instead of copying it.
    pub fn on_event_mut(&mut self, ev: &mut PipelineEvent) {
        let capture = match ev {
            PipelineEvent::Response(r) => r.response.capture.take(),
            _ => None,
        };
        self.observe(ev, capture);
    }

    fn observe(&mut self, ev: &PipelineEvent, capture: Option<Box<ResponseSample>>) {
        let content = self.hub.capture_limit().is_some();
        match ev {
            PipelineEvent::Request(r) => {
                let key = (r.flow_id, r.seq_in_flow);
                while self.waiting.len() >= self.max {
                    match self.order.pop_front() {
                        Some(old) => {
                            if self.waiting.remove(&old).is_some() {
                                self.evicted += 1;
                            }
                        }
                        None => break,
                    }
                }
                self.order.push_back(key);
                self.waiting.insert(
                    key,
                    Waiting {
                        method: r.request.method().to_string(),
                        target: if content {
                            r.request.target().to_string()
                        } else {
                            String::new()
                        },
                        end_ts_ns: r.request.end_ts_ns,
                        server: r.dst.ip().to_string(),
                    },
                );
            }
            PipelineEvent::Response(resp) => {
                let key = (resp.flow_id, resp.seq_in_flow);
                let Some(w) = self.waiting.remove(&key) else {
                    self.unknown += 1;
                    return;
                };
                // `order` keeps the key until it reaches the front; removal there is a no-op.
                self.paired += 1;
                let latency = Duration::from_nanos(resp.response.ts_ns.saturating_sub(w.end_ts_ns));
                self.hub
                    .primary_exchange(&w.method, resp.response.status, latency, &w.server);
                let side = PrimarySide {
                    status: resp.response.status,
                    latency,
                };
                let info = content.then(|| PrimaryInfo {
                    method: w.method,
                    target: w.target,
                    capture: capture
                        .or_else(|| resp.response.capture.clone())
                        .map(|b| *b),
                });
                self.hub.primary_with(key, side, info);
            }
            _ => {}
        }
        // Keys already answered pile up at the front of `order`; drop them so it stays bounded.
        while let Some(k) = self.order.front() {
            if self.waiting.contains_key(k) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Adds this observer's losses to the comparison counters before export.
    pub fn fill(&self, snap: &mut CompareSnapshot) {
        snap.primary_requests_evicted = self.evicted;
        snap.primary_responses_unknown = self.unknown;
    }

    /// Requests waiting for their response now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::Response;
    use crate::http::{BodyFraming, Version};
    use crate::pipeline::{CapturedRequest, CapturedResponse};
    use crate::replay::testutil::request;

    fn req(seq: u64, end_ts_ns: u64) -> PipelineEvent {
        let mut r = request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        r.end_ts_ns = end_ts_ns;
        PipelineEvent::Request(CapturedRequest {
            src: "10.0.0.1:4000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            flow_id: 1,
            seq_in_flow: seq,
            request: r,
        })
    }

    fn resp(seq: u64, status: u16, ts_ns: u64) -> PipelineEvent {
        PipelineEvent::Response(CapturedResponse {
            client: "10.0.0.1:4000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
            flow_id: 1,
            seq_in_flow: seq,
            response: Response {
                status,
                version: Version::Http11,
                head_len: 0,
                framing: BodyFraming::None,
                body_len: 0,
                ts_ns,
                end_ts_ns: ts_ns,
                close: false,
                capture: None,
            },
        })
    }

    /// Hears what the comparison reports, as telemetry would.
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<(String, u16, Duration, String)>>);

    impl crate::compare::CompareSubscriber for Heard {
        fn primary_exchange(&self, method: &str, status: u16, latency: Duration, server: &str) {
            let mut v = self.0.lock().unwrap();
            v.push((method.into(), status, latency, server.into()));
        }
        fn verdict(&self, _mirror: &str, _verdict: &crate::compare::Verdict) {}
    }

    #[test]
    fn pipelined_responses_pair_in_order_and_feed_the_comparison() {
        let heard = std::sync::Arc::new(Heard::default());
        let hub = CompareHub::new(
            vec!["m".into()],
            Duration::from_secs(9),
            16,
            Some(heard.clone()),
        );
        let mut o = PrimaryObserver::new(hub.clone(), 8);
        // Pipelined: three requests, then their responses.
        for (seq, end) in [(0, 1_000), (1, 2_000), (2, 3_000)] {
            o.on_event(&req(seq, end));
        }
        o.on_event(&resp(0, 200, 5_001_000));
        o.on_event(&resp(1, 503, 6_002_000));
        o.on_event(&resp(7, 200, 9_000_000));
        assert_eq!((o.paired, o.unknown, o.waiting()), (2, 1, 1));
        hub.mirror(
            (1, 1),
            0,
            &crate::replay::stats::Outcome::Answered {
                status: 200,
                latency: Duration::from_millis(1),
                grpc_status: None,
            },
        );
        let s = hub.snapshot();
        assert_eq!((s.mirrors[0].compared, s.mirrors[0].status_class), (1, 1));
        let heard = heard.0.lock().unwrap();
        assert_eq!(
            *heard,
            vec![
                (
                    "GET".into(),
                    200,
                    Duration::from_millis(5),
                    "10.0.0.2".into()
                ),
                (
                    "GET".into(),
                    503,
                    Duration::from_millis(6),
                    "10.0.0.2".into()
                ),
            ]
        );
    }

    #[test]
    fn unanswered_requests_are_bounded_and_counted() {
        let hub = CompareHub::new(vec!["m".into()], Duration::from_secs(9), 16, None);
        let mut o = PrimaryObserver::new(hub, 4);
        for seq in 0..10 {
            o.on_event(&req(seq, 0));
        }
        assert_eq!((o.waiting(), o.evicted), (4, 6));
        for seq in 6..10 {
            o.on_event(&resp(seq, 200, 1));
        }
        assert_eq!((o.waiting(), o.paired), (0, 4));
        assert!(o.order.is_empty());
    }
}
