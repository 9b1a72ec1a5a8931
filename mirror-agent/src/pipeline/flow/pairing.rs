//! Pairing: requests out of the request framer, final responses matched to them in order.
//!
//! Owns the queue of requests waiting for a response and keeps it in step with the response
//! framer's expectations (the framer takes one when a response head is parsed).

use super::Decided;
use crate::http::request::RequestEvent;
use crate::http::response::{ExpectedResponse, ResponseEvent};
use crate::pipeline::stats::PipelineStats;
use crate::pipeline::{CapturedRequest, CapturedResponse, PipelineEvent};

use super::Scratch;

impl Decided {
    /// Emits the flow's next request, numbered in the flow (HTTP/1.x and HTTP/2 alike).
    pub(super) fn emit_request(
        &mut self,
        flow_id: u64,
        request: crate::http::Request,
        out: &mut Vec<PipelineEvent>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        out.push(PipelineEvent::Request(CapturedRequest {
            src: self.client,
            dst: self.server,
            flow_id,
            seq_in_flow: seq,
            request,
        }));
    }

    pub(super) fn on_requests(
        &mut self,
        flow_id: u64,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        for ev in sc.req.drain(..) {
            match ev {
                RequestEvent::Request(request) => {
                    self.h2c_upgrade = upgrades_to_h2c(&request);
                    let len = request.raw.len() as u64;
                    stats.requests += 1;
                    stats.request_bytes += len;
                    if let Some(resp) = self.resp.as_mut().filter(|_| !self.server_ignored) {
                        resp.expect(ExpectedResponse {
                            head: request.method() == "HEAD",
                            connect: request.method() == "CONNECT",
                        });
                        self.awaiting.push_back(self.next_seq);
                        self.h2c_upgrade_seq = self.h2c_upgrade.then_some(self.next_seq);
                    }
                    self.emit_request(flow_id, request, out);
                }
                RequestEvent::Dropped { reason, bytes } => {
                    stats.request_drops.add(reason, bytes);
                }
                RequestEvent::Tunnel => {
                    stats.flows_tunnel += 1;
                    self.client_ignored = true;
                }
                RequestEvent::Http2 => {
                    stats.flows_h2 += 1;
                    self.client_ignored = true;
                    self.server_ignored = true;
                }
            }
        }
    }

    pub(super) fn on_responses(
        &mut self,
        flow_id: u64,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        // The framer takes a request's expectation when the response head is parsed, so a
        // response dropped after its head (a gap in its body) took one with it (the framer
        // counts those: `answers_dropped`), one dropped in its head did not, and a final
        // response whose head came when no request was waiting took none (`awaiting.len() -
        // pending` is then 0). Answer drops of this batch pop the oldest waiting request, in
        // event order; only a batch holding a non-answer drop, then a final, then an answer drop
        // would pair that final one request late, and that needs a framing error right before
        // a good response on one connection.
        let pending = self.resp.as_ref().map_or(0, |r| r.pending_expectations());
        // The framer counts an answer drop when it happens and reports the Dropped event when
        // the next message starts (drops are merged), possibly in a later batch: carry them.
        let answers = self.resp_stats().answers_dropped;
        self.answers_owed += answers.saturating_sub(self.answers_seen);
        self.answers_seen = answers;
        for ev in sc.resp.drain(..) {
            match ev {
                ResponseEvent::Informational(_) => stats.responses_informational += 1,
                ResponseEvent::Final(response) => {
                    let took = self.awaiting.len() > pending;
                    let seq = if took {
                        self.awaiting.pop_front()
                    } else {
                        None
                    };
                    match seq {
                        Some(seq)
                            if response.status == 101 && self.h2c_upgrade_seq == Some(seq) =>
                        {
                            // Switched to h2c: not the request's answer (that comes as the
                            // server's HTTP/2 stream 1), a 1xx on the way to it.
                            stats.responses_informational += 1;
                            self.h2c_switched = Some(seq);
                        }
                        Some(seq) => {
                            stats.responses += 1;
                            out.push(PipelineEvent::Response(CapturedResponse {
                                client: self.client,
                                server: self.server,
                                flow_id,
                                seq_in_flow: seq,
                                response,
                            }));
                        }
                        None => stats.responses_unpaired += 1,
                    }
                }
                ResponseEvent::Dropped { reason, bytes } => {
                    stats.response_drops.add(reason, bytes);
                    if self.answers_owed > 0 && !self.awaiting.is_empty() {
                        self.answers_owed -= 1;
                        self.awaiting.pop_front();
                        stats.responses_lost += 1;
                    }
                }
            }
        }
    }
}

/// Whether `request` asks to upgrade its connection to HTTP/2 over cleartext (`Upgrade: h2c`
/// with the `upgrade` connection option). Only a request the framer saw ask for an upgrade has
/// its head read again.
fn upgrades_to_h2c(request: &crate::http::Request) -> bool {
    request.upgrade && crate::http::field_has_token(request.head(), "upgrade", b"h2c")
}
