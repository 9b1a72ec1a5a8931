//! The HTTP/2 side of a flow: a client stream that starts with the HTTP/2 preface goes to a
//! client-direction [`crate::http2::Decoder`] instead of the HTTP/1 request framer, and each
//! request it decodes is written as HTTP/1.1 ([`crate::http2::convert`]) and emitted like any
//! other. With responses on (`--compare`), the server stream goes to a server-direction decoder
//! (its own HPACK table) and each response is paired with its request by stream id and emitted
//! as a [`CapturedResponse`] whose sample is written as the HTTP/2 mirror side's is, so the
//! comparison treats both sides alike.
//!
//! Owns the decoders of the flow, the pairing of streams, and the accounting of their bytes in
//! [`PipelineStats`] (`h2_frame_bytes`, `h2_dropped_bytes` for the client side,
//! `h2_server_frame_bytes`, `h2_server_dropped_bytes` for the server side, which the end-of-run
//! ledger adds up). A gap ends decoding of that direction for the rest of the connection: the
//! header table cannot be rebuilt.

use std::collections::HashMap;

use super::Decided;
use crate::http::request::HttpLimits;
use crate::http::response::{Response, ResponseSample};
use crate::http::{BodyFraming, Version};
use crate::http2::convert;
use crate::http2::decoder::{Decoder, H2Event, H2Limits, H2Response, H2Stats};
use crate::pipeline::stats::PipelineStats;
use crate::pipeline::{CapturedResponse, PipelineEvent};

/// Requests of one connection waiting for their response, at most (the oldest is given up,
/// counted as unanswered): an HTTP/2 server answers at most its SETTINGS_MAX_CONCURRENT_STREAMS
/// at a time, usually 100 or 128, so only a server that never answers fills this.
const MAX_AWAITING: usize = 4096;

/// Responses that ended before their request (the server answered before the client ended its
/// stream, e.g. an early error), held until the request is emitted; beyond it the oldest is
/// given up, counted as unpaired.
const MAX_EARLY: usize = 64;

/// One direction's decoder and what of its byte counts the pipeline has already taken.
struct Direction {
    decoder: Decoder,
    taken: H2Stats,
    events: Vec<H2Event>,
    ended: bool,
}

impl Direction {
    fn new(decoder: Decoder) -> Self {
        Self {
            decoder,
            taken: H2Stats::default(),
            events: Vec::new(),
            ended: false,
        }
    }

    /// Byte counts grown since the last call: (framed, dropped). Requests' and responses'
    /// bytes are in neither: the caller counts them by message.
    fn grown(&mut self) -> (u64, u64) {
        let now = self.decoder.stats();
        let t = &self.taken;
        let framed = (now.preface_bytes - t.preface_bytes) + (now.control_bytes - t.control_bytes);
        let dropped =
            (now.dropped_bytes - t.dropped_bytes) + (now.undecodable_bytes - t.undecodable_bytes);
        self.taken = now;
        (framed, dropped)
    }
}

/// The server direction and the pairing of its streams with the requests emitted.
struct ServerSide {
    dir: Direction,
    /// Keep a [`ResponseSample`] of each response (content comparison).
    capture: bool,
    /// Stream id -> `seq_in_flow` of requests emitted and not answered yet.
    awaiting: HashMap<u32, u64>,
    /// Responses whose request has not been emitted yet, by stream id.
    early: HashMap<u32, H2Response>,
}

/// The decoders of one flow.
pub(super) struct H2Flow {
    client: Direction,
    server: Option<ServerSide>,
}

impl H2Flow {
    /// `responses`: decode the server direction too; `capture`: the comparison's body prefix
    /// per response (`None`: statuses only).
    pub(super) fn new(http: &HttpLimits, responses: bool, capture: Option<usize>) -> Box<Self> {
        let limits = H2Limits {
            max_body: usize::try_from(http.max_body_bytes).unwrap_or(usize::MAX),
            ..H2Limits::default()
        };
        let server = responses.then(|| ServerSide {
            dir: Direction::new(Decoder::server(H2Limits {
                max_body: capture.unwrap_or(0),
                ..H2Limits::default()
            })),
            capture: capture.is_some(),
            awaiting: HashMap::new(),
            early: HashMap::new(),
        });
        Box::new(Self {
            client: Direction::new(Decoder::client(limits)),
            server,
        })
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.client.decoder.buffered_bytes()
            + self.server.as_ref().map_or(0, |s| {
                s.dir.decoder.buffered_bytes()
                    + s.early.values().map(|r| r.body.len()).sum::<usize>()
            })
    }

    /// The server direction is decoded (so the flow does not count it as ignored).
    pub(super) fn decodes_responses(&self) -> bool {
        self.server.is_some()
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
        if h2.client.ended {
            stats.h2_dropped_bytes += bytes.len() as u64;
            return;
        }
        h2.client.decoder.push(bytes, &mut h2.client.events);
        self.on_h2(flow_id, ts_ns, http, stats, out);
    }

    /// In-order server bytes of an HTTP/2 flow whose responses are decoded.
    pub(super) fn h2_server_data(
        &mut self,
        flow_id: u64,
        bytes: &[u8],
        ts_ns: u64,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) else {
            return;
        };
        if s.dir.ended {
            stats.h2_server_dropped_bytes += bytes.len() as u64;
            return;
        }
        s.dir.decoder.push_at(bytes, ts_ns, &mut s.dir.events);
        self.on_h2_server(flow_id, stats, out);
    }

    /// The server direction ended, or a gap broke it: open streams are dropped, every byte
    /// counted.
    pub(super) fn h2_server_end(
        &mut self,
        flow_id: u64,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) else {
            return;
        };
        if s.dir.ended {
            return;
        }
        s.dir.decoder.finish(&mut s.dir.events);
        s.dir.ended = true;
        self.on_h2_server(flow_id, stats, out);
    }

    /// The connection ended, or a gap broke the client direction: open streams are dropped,
    /// every byte counted.
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
        if h2.client.ended {
            return;
        }
        // Open streams end as dropped (unfinished); a connection that failed before was
        // counted when it did.
        h2.client.decoder.finish(&mut h2.client.events);
        h2.client.ended = true;
        self.on_h2(flow_id, ts_ns, http, stats, out);
    }

    /// The server answered the `Upgrade: h2c` request `seq` with 101: its bytes after the 101
    /// head are HTTP/2 frames, decoded with the server's own table, and that request's answer
    /// is stream 1's (RFC 7540 3.2). The flow's decoders are made now if the client's preface
    /// has not come yet (the client sends it after the 101): its next bytes go straight to the
    /// client decoder, which checks the preface.
    pub(super) fn switch_server_to_h2(
        &mut self,
        seq: u64,
        cfg: &crate::pipeline::PipelineConfig,
        stats: &mut PipelineStats,
    ) {
        if self.h2.is_none() {
            stats.h2_flows += 1;
            stats.h2_upgrades += 1;
            self.h2c_upgrade = false;
            self.h2 = Some(H2Flow::new(&cfg.http, true, cfg.capture_responses));
        }
        let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) else {
            return;
        };
        s.awaiting.insert(1, seq);
        self.server_h2 = true;
    }

    /// The flow is closing: requests still waiting are unanswered, early responses unpaired.
    pub(super) fn h2_close(
        &mut self,
        flow_id: u64,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        self.h2_server_end(flow_id, stats, out);
        if let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) {
            stats.requests_unanswered += s.awaiting.len() as u64;
            stats.responses_unpaired += s.early.len() as u64;
            s.awaiting.clear();
            s.early.clear();
        }
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
        // Requests' bytes go by request below (one that cannot be written as HTTP/1.1 is a
        // drop); the other buckets by their growth.
        let (framed, dropped) = h2.client.grown();
        stats.h2_frame_bytes += framed;
        stats.h2_dropped_bytes += dropped;
        let events = std::mem::take(&mut h2.client.events);
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
                    let seq = self.next_seq;
                    let end_ts_ns = request.end_ts_ns;
                    self.emit_request(flow_id, request, out);
                    self.h2_awaits(flow_id, r.stream, seq, end_ts_ns, stats, out);
                }
                H2Event::Dropped { .. } => stats.h2_streams_dropped += 1,
                H2Event::Failed(_) => stats.h2_flows_failed += 1,
                // A client decoder gives no responses.
                H2Event::Response(_) => {}
            }
        }
    }

    /// The request `seq` of `stream` was emitted: its response is awaited, or emitted now if
    /// it came first.
    fn h2_awaits(
        &mut self,
        flow_id: u64,
        stream: u32,
        seq: u64,
        end_ts_ns: u64,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let (client, server) = (self.client, self.server);
        let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) else {
            return;
        };
        if let Some(mut r) = s.early.remove(&stream) {
            // Answered before the client ended its stream: no waiting time to measure.
            r.first_ts_ns = r.first_ts_ns.max(end_ts_ns);
            stats.responses += 1;
            stats.h2_responses += 1;
            out.push(PipelineEvent::Response(captured(
                client, server, flow_id, seq, r, s.capture,
            )));
            return;
        }
        if s.awaiting.len() >= MAX_AWAITING
            && let Some(&oldest) = s.awaiting.keys().min()
        {
            s.awaiting.remove(&oldest);
            stats.requests_unanswered += 1;
        }
        s.awaiting.insert(stream, seq);
    }

    fn on_h2_server(
        &mut self,
        flow_id: u64,
        stats: &mut PipelineStats,
        out: &mut Vec<PipelineEvent>,
    ) {
        let (client, server) = (self.client, self.server);
        let Some(s) = self.h2.as_mut().and_then(|h| h.server.as_mut()) else {
            return;
        };
        let (framed, dropped) = s.dir.grown();
        stats.h2_server_frame_bytes += framed;
        stats.h2_server_dropped_bytes += dropped;
        let events = std::mem::take(&mut s.dir.events);
        for ev in events {
            match ev {
                H2Event::Response(r) => {
                    stats.h2_server_frame_bytes += r.wire_bytes;
                    stats.responses_informational += u64::from(r.informational);
                    match s.awaiting.remove(&r.stream) {
                        Some(seq) => {
                            stats.responses += 1;
                            stats.h2_responses += 1;
                            out.push(PipelineEvent::Response(captured(
                                client, server, flow_id, seq, r, s.capture,
                            )));
                        }
                        None => {
                            if s.early.len() >= MAX_EARLY
                                && let Some(&oldest) = s.early.keys().min()
                            {
                                s.early.remove(&oldest);
                                stats.responses_unpaired += 1;
                            }
                            s.early.insert(r.stream, r);
                        }
                    }
                }
                H2Event::Dropped { stream, .. } => {
                    stats.h2_response_streams_dropped += 1;
                    // Its request gets no response: counted as lost, not left waiting.
                    if s.awaiting.remove(&stream).is_some() {
                        stats.h2_responses_lost += 1;
                    }
                }
                H2Event::Failed(_) => stats.h2_server_failed += 1,
                H2Event::Request(_) => {}
            }
        }
    }
}

/// A decoded response as the comparison takes it: the sample's head is an HTTP/1.1-style
/// status line and the fields, trailers after them, as `replay::h2` writes the mirror's.
fn captured(
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    flow_id: u64,
    seq_in_flow: u64,
    r: H2Response,
    capture: bool,
) -> CapturedResponse {
    let sample = capture.then(|| {
        let mut head = format!("HTTP/1.1 {} \r\n", r.status).into_bytes();
        for (name, value) in r.headers.iter().chain(&r.trailers) {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        Box::new(ResponseSample {
            head,
            body: r.body.to_vec(),
            body_len: r.body_len,
            truncated: r.truncated,
        })
    });
    CapturedResponse {
        client,
        server,
        flow_id,
        seq_in_flow,
        response: Response {
            status: r.status,
            version: Version::Http2,
            head_len: 0,
            framing: BodyFraming::ContentLength(r.body_len),
            body_len: r.body_len,
            ts_ns: r.first_ts_ns,
            end_ts_ns: r.last_ts_ns,
            close: false,
            capture: sample,
        },
    }
}
