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
                    let len = request.raw.len() as u64;
                    stats.requests += 1;
                    stats.request_bytes += len;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    if !self.server_ignored {
                        self.resp.expect(ExpectedResponse {
                            head: request.method == "HEAD",
                            connect: request.method == "CONNECT",
                        });
                        self.awaiting.push_back(seq);
                    }
                    out.push(PipelineEvent::Request(CapturedRequest {
                        src: self.client,
                        dst: self.server,
                        flow_id,
                        seq_in_flow: seq,
                        request,
                    }));
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
        // response dropped after its head (a gap in its body) took one with it, and one
        // dropped in its head did not. `awaiting.len() - pending` is the number of expectations
        // taken and not yet answered; every Final still to come in this batch needs one, and
        // one more belongs to the response still open at the end of the batch, if any.
        let pending = self.resp.pending_expectations();
        let mut finals_left = sc
            .resp
            .iter()
            .filter(|e| matches!(e, ResponseEvent::Final(_)))
            .count();
        let open_body = self.resp.response_open();
        for ev in sc.resp.drain(..) {
            match ev {
                ResponseEvent::Informational(_) => stats.responses_informational += 1,
                ResponseEvent::Final(response) => {
                    finals_left -= 1;
                    match self.awaiting.pop_front() {
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
                    let taken = self.awaiting.len().saturating_sub(pending);
                    let extra = taken.saturating_sub(finals_left);
                    if extra >= 2 || (extra == 1 && !open_body) {
                        self.awaiting.pop_front();
                        stats.responses_lost += 1;
                    }
                }
            }
        }
    }
}
