//! The HTTP/2 side of a flow: a client stream that starts with the HTTP/2 preface goes to an
//! [`crate::http2::ClientDecoder`] instead of the HTTP/1 request framer, and each request it
//! decodes is written as HTTP/1.1 ([`crate::http2::convert`]) and emitted like any other.
//!
//! Owns the decoder of the flow and the accounting of its bytes in [`PipelineStats`]
//! (`h2_frame_bytes`, `h2_dropped_bytes`, which the end-of-run ledger adds up). A gap ends
//! decoding for the rest of the connection: the header table cannot be rebuilt. The server
//! side of such a flow is not framed (its responses are HTTP/2 too; comparison of HTTP/2
//! responses is not built yet), its bytes are counted as ignored.

use super::Decided;
use crate::http::request::HttpLimits;
use crate::http2::convert;
use crate::http2::decoder::{ClientDecoder, H2Event, H2Limits, H2Stats};
use crate::pipeline::PipelineEvent;
use crate::pipeline::stats::PipelineStats;

/// The decoder of one flow and what of its byte counts the pipeline has already taken.
pub(super) struct H2Flow {
    decoder: ClientDecoder,
    taken: H2Stats,
    events: Vec<H2Event>,
    ended: bool,
}

impl H2Flow {
    pub(super) fn new(http: &HttpLimits) -> Box<Self> {
        let limits = H2Limits {
            max_body: usize::try_from(http.max_body_bytes).unwrap_or(usize::MAX),
            ..H2Limits::default()
        };
        Box::new(Self {
            decoder: ClientDecoder::new(limits),
            taken: H2Stats::default(),
            events: Vec::new(),
            ended: false,
        })
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.decoder.buffered_bytes()
    }
}

impl Decided {
    /// In-order client bytes of an HTTP/2 flow.
    pub(super) fn h2_data(
        &mut self,
        flow_id: u64,
        bytes: &[u8],
        ts_ns: u64,
        http: &HttpLimits,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let Some(h2) = self.h2.as_mut() else {
            return;
        };
        if h2.ended {
            stats.h2_dropped_bytes += bytes.len() as u64;
            return;
        }
        h2.decoder.push(bytes, &mut h2.events);
        self.on_h2(flow_id, ts_ns, http, stats, out);
    }

    /// The connection ended, or a gap broke it: open streams are dropped, every byte counted.
    pub(super) fn h2_end(
        &mut self,
        flow_id: u64,
        ts_ns: u64,
        http: &HttpLimits,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let Some(h2) = self.h2.as_mut() else {
            return;
        };
        if h2.ended {
            return;
        }
        // Open streams end as dropped (unfinished); a connection that failed before was
        // counted when it did.
        h2.decoder.finish(&mut h2.events);
        h2.ended = true;
        self.on_h2(flow_id, ts_ns, http, stats, out);
    }

    fn on_h2(
        &mut self,
        flow_id: u64,
        ts_ns: u64,
        http: &HttpLimits,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let Some(h2) = self.h2.as_mut() else {
            return;
        };
        let now = h2.decoder.stats();
        let t = &h2.taken;
        // Requests' bytes go by request below (one that cannot be written as HTTP/1.1 is a
        // drop); the other buckets by their growth.
        stats.h2_frame_bytes +=
            (now.preface_bytes - t.preface_bytes) + (now.control_bytes - t.control_bytes);
        stats.h2_dropped_bytes +=
            (now.dropped_bytes - t.dropped_bytes) + (now.undecodable_bytes - t.undecodable_bytes);
        h2.taken = now;
        let events = std::mem::take(&mut h2.events);
        for ev in events {
            match ev {
                H2Event::Request(r) => {
                    let request = convert::to_http1(&r)
                        .ok()
                        .and_then(|raw| convert::request_from_http1(raw, ts_ns, http));
                    let Some(mut request) = request else {
                        stats.h2_streams_dropped += 1;
                        stats.h2_dropped_bytes += r.wire_bytes;
                        continue;
                    };
                    request.h2_stream = Some(r.stream);
                    stats.h2_frame_bytes += r.wire_bytes;
                    stats.requests += 1;
                    stats.h2_requests += 1;
                    self.emit_request(flow_id, request, out);
                }
                H2Event::Dropped { .. } => stats.h2_streams_dropped += 1,
                H2Event::Failed(_) => stats.h2_flows_failed += 1,
            }
        }
    }
}
