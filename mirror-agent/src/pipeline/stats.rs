//! Pipeline counters: every segment, flow and byte is accounted for under one reason.
//!
//! Owns [`PipelineStats`] and the identities that must hold between its fields
//! ([`PipelineStats::check_balance`]), so a silent loss shows up as a failed test.

use std::fmt;

use crate::http::request::RequestDropReason;
use crate::http::response::ResponseDropReason;
use crate::reassembly::StreamStats;

/// A count of events and of the bytes they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counted {
    pub count: u64,
    pub bytes: u64,
}

impl Counted {
    pub fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// Request bytes that did not become requests, by reason. Most are losses; `after_close` and
/// `after_te_and_cl` are requests the primary never served (sent after the connection ended
/// for it), not mirrored on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDrops {
    pub gap: Counted,
    pub head_too_large: Counted,
    pub too_many_headers: Counted,
    pub malformed: Counted,
    pub truncated: Counted,
    pub body_too_large: Counted,
    /// Bytes before the first request line of a connection picked up mid-stream.
    pub midstream: Counted,
    /// Requests (and other bytes) after a request that closes the connection.
    pub after_close: Counted,
    /// Requests (and other bytes) after a request with both Transfer-Encoding and
    /// Content-Length, after which the server closes (RFC 9112 section 6.1).
    pub after_te_and_cl: Counted,
}

impl RequestDrops {
    pub fn add(&mut self, reason: RequestDropReason, bytes: u64) {
        match reason {
            RequestDropReason::Gap => self.gap.add(bytes),
            RequestDropReason::HeadTooLarge => self.head_too_large.add(bytes),
            RequestDropReason::TooManyHeaders => self.too_many_headers.add(bytes),
            RequestDropReason::Malformed => self.malformed.add(bytes),
            RequestDropReason::Truncated => self.truncated.add(bytes),
            RequestDropReason::BodyTooLarge => self.body_too_large.add(bytes),
            RequestDropReason::Midstream => self.midstream.add(bytes),
            RequestDropReason::AfterClose => self.after_close.add(bytes),
            RequestDropReason::AfterTeAndCl => self.after_te_and_cl.add(bytes),
        }
    }

    /// All reasons together.
    pub fn total(&self) -> Counted {
        sum(&[self.lost(), self.unserved()])
    }

    /// The reasons that are losses: bytes of requests the primary served (or may have).
    pub fn lost(&self) -> Counted {
        sum(&[
            self.gap,
            self.head_too_large,
            self.too_many_headers,
            self.malformed,
            self.truncated,
            self.body_too_large,
            self.midstream,
        ])
    }

    /// Bytes the client sent after the connection ended for the server: never served.
    pub fn unserved(&self) -> Counted {
        sum(&[self.after_close, self.after_te_and_cl])
    }
}

fn sum(all: &[Counted]) -> Counted {
    all.iter().fold(Counted::default(), |a, c| Counted {
        count: a.count + c.count,
        bytes: a.bytes + c.bytes,
    })
}

/// Response bytes that did not become responses, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDrops {
    pub gap: Counted,
    pub head_too_large: Counted,
    pub malformed: Counted,
    pub truncated: Counted,
    pub too_many_headers: Counted,
    /// Bytes before the first status line of a connection picked up mid-stream.
    pub midstream: Counted,
}

impl ResponseDrops {
    pub fn add(&mut self, reason: ResponseDropReason, bytes: u64) {
        match reason {
            ResponseDropReason::Gap => self.gap.add(bytes),
            ResponseDropReason::HeadTooLarge => self.head_too_large.add(bytes),
            ResponseDropReason::Malformed => self.malformed.add(bytes),
            ResponseDropReason::Truncated => self.truncated.add(bytes),
            ResponseDropReason::TooManyHeaders => self.too_many_headers.add(bytes),
            ResponseDropReason::Midstream => self.midstream.add(bytes),
        }
    }

    /// All reasons together.
    pub fn total(&self) -> Counted {
        sum(&[
            self.gap,
            self.head_too_large,
            self.malformed,
            self.truncated,
            self.too_many_headers,
            self.midstream,
        ])
    }
}

/// Everything the pipeline counts. Reassembly counters of flows still open are added when the
/// flow ends, so read them after [`super::Pipeline::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    // ---- segments ----
    /// Segments handed to the pipeline.
    pub segments: u64,
    /// Their TCP payload bytes.
    pub payload_bytes: u64,
    /// Segments of connections on none of the configured ports.
    pub segments_other_port: u64,
    /// Payload bytes of those segments.
    pub other_port_bytes: u64,
    /// Segments with neither payload nor SYN for a connection not tracked (late ACKs, FINs).
    pub segments_no_flow: u64,
    /// Segments (without SYN) of a connection that already closed with FIN/FIN or RST: late
    /// retransmissions. Dropped, so a retransmitted request is not produced twice.
    pub segments_after_close: u64,
    /// Payload bytes of those segments.
    pub after_close_bytes: u64,
    /// Segments given to a tracked connection.
    pub segments_to_flows: u64,

    // ---- connections ----
    /// Connections tracked (created).
    pub flows: u64,
    /// Connections tracked right now.
    pub flows_active: u64,
    /// Ended by FIN in both directions or by RST.
    pub flows_closed: u64,
    /// Ended after `flow_idle` without a segment, with nothing unfinished (the last request
    /// complete, nothing held): a quiet connection retired, nothing lost.
    pub flows_idle_finished: u64,
    /// Expired after `flow_idle` without a segment in the middle of a request or response, or
    /// holding bytes after a hole: what it held is lost (and counted where it was lost).
    pub flows_idle_expired: u64,
    /// Evicted because `max_flows` were tracked (least recently active first).
    pub flows_evicted_max_flows: u64,
    /// Evicted because the global memory budget was exceeded and shedding their out-of-order
    /// bytes was not enough (partial requests held).
    pub flows_evicted_memory: u64,
    /// Times the memory budget made a flow give up its holes early (the gaps are counted in
    /// the reassembly counters as bound gaps).
    pub memory_sheds: u64,
    /// Still open when the input ended.
    pub flows_open_at_end: u64,
    /// Ended by a new connection's SYN on the same addresses (what they held is counted where
    /// it was lost).
    pub flows_superseded: u64,
    /// Ended without ever knowing which side was the client (their payload is `undecided_bytes`).
    pub flows_undecided: u64,
    /// Client side did not start with an HTTP request line (only without `--port`).
    pub flows_not_http: u64,
    /// Client side started with the HTTP/2 preface but was not decoded (its first segment was
    /// too short to tell, or it came after an HTTP/1.1 request: `Upgrade: h2c`).
    pub flows_h2: u64,
    /// Connections decoded as HTTP/2 from their start (prior knowledge, [`crate::http2`]).
    pub h2_flows: u64,
    /// Of those, connections whose decoding stopped (a connection error, or a gap that lost
    /// the header table); the rest of their client bytes are `h2_dropped_bytes`.
    pub h2_flows_failed: u64,
    /// Of `h2_flows`, connections that began in HTTP/1.1 and upgraded (`Upgrade: h2c`).
    pub h2_upgrades: u64,
    /// HTTP/2 connections picked up after their start (their header table is gone): their
    /// client frames are walked, not decoded ([`crate::http2::midstream`]).
    pub h2_midstream_flows: u64,
    /// Streams those connections' clients opened: requests that could not be mirrored.
    pub h2_midstream_streams: u64,
    /// Their client bytes.
    pub h2_midstream_bytes: u64,
    /// Requests from HTTP/2 streams (also in `requests`; their HTTP/1.1 form's bytes are not
    /// in `request_bytes`, their wire bytes are in `h2_frame_bytes`).
    pub h2_requests: u64,
    /// HTTP/2 streams dropped (reset by the client, malformed, over a bound, unfinished, or
    /// not expressible in HTTP/1.1).
    pub h2_streams_dropped: u64,
    /// Client bytes of HTTP/2 connections in requests, the preface and control frames.
    pub h2_frame_bytes: u64,
    /// Client bytes of HTTP/2 connections in dropped streams or after decoding stopped.
    pub h2_dropped_bytes: u64,
    /// Responses decoded from HTTP/2 streams and paired with their request (also in
    /// `responses`; their wire bytes are in `h2_server_frame_bytes`, not `response_bytes`).
    pub h2_responses: u64,
    /// Server streams of HTTP/2 connections dropped (reset by the server, malformed,
    /// unfinished, over a bound).
    pub h2_response_streams_dropped: u64,
    /// Of the requests emitted, those whose server stream was dropped: no response to compare.
    pub h2_responses_lost: u64,
    /// HTTP/2 connections whose server side stopped decoding (a connection error, or a gap
    /// that lost its header table).
    pub h2_server_failed: u64,
    /// Server bytes of HTTP/2 connections in responses and control frames.
    pub h2_server_frame_bytes: u64,
    /// Server bytes of HTTP/2 connections in dropped or pushed streams, or after decoding
    /// stopped.
    pub h2_server_dropped_bytes: u64,
    /// Became a tunnel (CONNECT, Upgrade) after a request.
    pub flows_tunnel: u64,

    // ---- bytes and messages ----
    /// Payload of connections whose client side was never known, or that overflowed the
    /// bounded pre-decision buffer.
    pub undecided_bytes: u64,
    /// Reassembly counters, client to server.
    pub client: StreamStats,
    /// Reassembly counters, server to client.
    pub server: StreamStats,
    /// Requests produced.
    pub requests: u64,
    /// Their wire bytes.
    pub request_bytes: u64,
    /// Client bytes lost between reassembly and a request, by reason.
    pub request_drops: RequestDrops,
    /// Client bytes not framed because the flow is not HTTP/1.x (h2, tunnel, not HTTP).
    pub client_bytes_ignored: u64,
    /// Client bytes the request framer skipped on purpose (blank lines between requests,
    /// bytes after a tunnel or h2 start within the same push).
    pub client_bytes_framer_ignored: u64,
    /// Client body bytes of requests emitted head only, since no consumer needs their bodies
    /// (`HttpLimits::omit_bodies_over`): not a loss.
    pub client_body_bytes_omitted: u64,
    /// Final responses produced (paired with their request).
    pub responses: u64,
    /// 1xx responses.
    pub responses_informational: u64,
    /// Final responses with no request waiting for them (capture started mid-connection).
    pub responses_unpaired: u64,
    /// Requests whose connection ended before any response to them was seen (one-sided
    /// captures, responses not captured).
    pub requests_unanswered: u64,
    /// Requests whose response was lost (a response drop consumed their place in line).
    pub responses_lost: u64,
    /// Dropped responses that had taken a request's place in line, as the response framer
    /// counted them (must equal `responses_lost`: checked by `check_balance_at_end`).
    pub response_answers_dropped: u64,
    /// Wire bytes of all responses (heads and bodies, 1xx included).
    pub response_bytes: u64,
    /// Server bytes lost before a response, by reason.
    pub response_drops: ResponseDrops,
    /// Server bytes not framed (h2, tunnel, not HTTP, or `responses` off).
    pub server_bytes_ignored: u64,
    /// Server bytes the response framer skipped on purpose (blank lines, tunnel bytes).
    pub server_bytes_framer_ignored: u64,
}

/// Adds reassembly counters of one direction.
pub(crate) fn add_stream(into: &mut StreamStats, s: &StreamStats) {
    into.bytes_delivered += s.bytes_delivered;
    into.retransmitted_bytes += s.retransmitted_bytes;
    into.overlap_conflict_bytes += s.overlap_conflict_bytes;
    into.gaps += s.gaps;
    into.gap_bytes += s.gap_bytes;
    into.overflow_bytes += s.overflow_bytes;
    into.bytes_offered += s.bytes_offered;
    into.segments += s.segments;
    into.before_start_bytes += s.before_start_bytes;
    into.after_end_bytes += s.after_end_bytes;
    into.gaps_timeout += s.gaps_timeout;
    into.gaps_bound += s.gaps_bound;
    into.gaps_end += s.gaps_end;
}

impl PipelineStats {
    /// The identities between counters; `Err` names the first that does not hold.
    pub fn check_balance(&self) -> Result<(), String> {
        let seg = self.segments_other_port
            + self.segments_no_flow
            + self.segments_after_close
            + self.segments_to_flows;
        if seg != self.segments {
            return Err(format!(
                "segments {} != other_port + no_flow + after_close + to_flows {seg}",
                self.segments
            ));
        }
        let ended = self.flows_active
            + self.flows_closed
            + self.flows_idle_finished
            + self.flows_idle_expired
            + self.flows_evicted_max_flows
            + self.flows_evicted_memory
            + self.flows_open_at_end
            + self.flows_superseded;
        if ended != self.flows {
            return Err(format!(
                "flows {} != active + closed + idle + expired + evicted + open at end {ended}",
                self.flows
            ));
        }
        Ok(())
    }

    /// [`Self::check_balance`] plus the byte identities that hold once every flow has ended
    /// (after [`super::Pipeline::finish`]): every payload byte is in a request, a counted drop,
    /// or an ignored (non-HTTP/1.x) count.
    pub fn check_balance_at_end(&self) -> Result<(), String> {
        self.check_balance()?;
        if self.flows_active != 0 {
            return Err(format!("{} flows still active", self.flows_active));
        }
        let (c, s) = (&self.client, &self.server);
        let offered = self.other_port_bytes
            + self.after_close_bytes
            + self.undecided_bytes
            + c.bytes_offered
            + s.bytes_offered;
        if offered != self.payload_bytes {
            return Err(format!(
                "payload_bytes {} != other_port {} + after_close {} + undecided {} + client offered {} + server offered {}",
                self.payload_bytes,
                self.other_port_bytes,
                self.after_close_bytes,
                self.undecided_bytes,
                c.bytes_offered,
                s.bytes_offered
            ));
        }
        for (name, d) in [("client", c), ("server", s)] {
            if d.bytes_offered != d.bytes_delivered + d.discarded_bytes() {
                return Err(format!(
                    "{name}: offered {} != delivered {} + discarded {}",
                    d.bytes_offered,
                    d.bytes_delivered,
                    d.discarded_bytes()
                ));
            }
        }
        let framed = self.request_bytes
            + self.request_drops.total().bytes
            + self.client_bytes_ignored
            + self.client_bytes_framer_ignored
            + self.client_body_bytes_omitted
            + self.h2_frame_bytes
            + self.h2_dropped_bytes
            + self.h2_midstream_bytes;
        if framed != c.bytes_delivered {
            return Err(format!(
                "client delivered {} != requests {} + dropped {} + ignored {} + framer ignored {} \
                 + bodies omitted {} + h2 frames {} + h2 dropped {} + h2 mid-connection {}",
                c.bytes_delivered,
                self.request_bytes,
                self.request_drops.total().bytes,
                self.client_bytes_ignored,
                self.client_bytes_framer_ignored,
                self.client_body_bytes_omitted,
                self.h2_frame_bytes,
                self.h2_dropped_bytes,
                self.h2_midstream_bytes
            ));
        }
        if self.responses_lost != self.response_answers_dropped {
            return Err(format!(
                "responses_lost {} != dropped answers seen by the response framer {}",
                self.responses_lost, self.response_answers_dropped
            ));
        }
        let framed = self.response_bytes
            + self.response_drops.total().bytes
            + self.server_bytes_ignored
            + self.server_bytes_framer_ignored
            + self.h2_server_frame_bytes
            + self.h2_server_dropped_bytes;
        if framed != s.bytes_delivered {
            return Err(format!(
                "server delivered {} != responses {} + dropped {} + ignored {} + framer ignored {} \
                 + h2 frames {} + h2 dropped {}",
                s.bytes_delivered,
                self.response_bytes,
                self.response_drops.total().bytes,
                self.server_bytes_ignored,
                self.server_bytes_framer_ignored,
                self.h2_server_frame_bytes,
                self.h2_server_dropped_bytes
            ));
        }
        Ok(())
    }

    /// Requests lost to capture or parsing, as a count (drops of the request framer that are
    /// losses).
    pub fn requests_lost(&self) -> u64 {
        self.request_drops.lost().count
    }
}

impl fmt::Display for PipelineStats {
    /// The end-of-run summary: one `name value` pair per line, grouped, every loss with its reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.request_drops;
        let r = &self.response_drops;
        let lines: &[(&str, u64)] = &[
            ("segments", self.segments),
            ("payload_bytes", self.payload_bytes),
            ("segments_other_port", self.segments_other_port),
            ("segments_no_flow", self.segments_no_flow),
            ("segments_after_close", self.segments_after_close),
            ("ignored.after_close_bytes", self.after_close_bytes),
            ("flows", self.flows),
            ("flows_closed", self.flows_closed),
            ("flows_idle_finished", self.flows_idle_finished),
            ("flows_idle_expired", self.flows_idle_expired),
            ("flows_evicted_max_flows", self.flows_evicted_max_flows),
            ("flows_evicted_memory", self.flows_evicted_memory),
            ("memory_sheds", self.memory_sheds),
            ("flows_open_at_end", self.flows_open_at_end),
            ("flows_superseded", self.flows_superseded),
            ("flows_undecided", self.flows_undecided),
            ("flows_not_http", self.flows_not_http),
            ("flows_h2", self.flows_h2),
            ("h2.flows", self.h2_flows),
            ("h2.upgrades", self.h2_upgrades),
            ("h2.requests", self.h2_requests),
            ("h2.frame_bytes", self.h2_frame_bytes),
            ("lost.h2_flows_failed", self.h2_flows_failed),
            ("lost.h2_streams", self.h2_streams_dropped),
            ("lost.h2_bytes", self.h2_dropped_bytes),
            ("h2.midstream_flows", self.h2_midstream_flows),
            ("lost.h2_midstream_streams", self.h2_midstream_streams),
            ("lost.h2_midstream_bytes", self.h2_midstream_bytes),
            ("h2.responses", self.h2_responses),
            ("h2.server_frame_bytes", self.h2_server_frame_bytes),
            ("lost.h2_server_flows_failed", self.h2_server_failed),
            ("lost.h2_response_streams", self.h2_response_streams_dropped),
            ("lost.h2_responses_of_requests", self.h2_responses_lost),
            ("lost.h2_server_bytes", self.h2_server_dropped_bytes),
            ("flows_tunnel", self.flows_tunnel),
            ("requests", self.requests),
            ("request_bytes", self.request_bytes),
            ("responses", self.responses),
            ("responses_informational", self.responses_informational),
            ("responses_unpaired", self.responses_unpaired),
            ("lost.responses_of_requests", self.responses_lost),
            ("requests_unanswered", self.requests_unanswered),
            ("lost.undecided_bytes", self.undecided_bytes),
            ("lost.client_gaps", self.client.gaps),
            ("lost.client_gap_bytes", self.client.gap_bytes),
            ("lost.client_overflow_bytes", self.client.overflow_bytes),
            (
                "lost.client_before_start_bytes",
                self.client.before_start_bytes,
            ),
            ("lost.client_after_end_bytes", self.client.after_end_bytes),
            ("lost.server_gaps", self.server.gaps),
            ("lost.server_gap_bytes", self.server.gap_bytes),
            ("lost.server_overflow_bytes", self.server.overflow_bytes),
            (
                "lost.server_before_start_bytes",
                self.server.before_start_bytes,
            ),
            ("lost.server_after_end_bytes", self.server.after_end_bytes),
            ("lost.requests_gap", d.gap.count),
            ("lost.requests_head_too_large", d.head_too_large.count),
            ("lost.requests_too_many_headers", d.too_many_headers.count),
            ("lost.requests_malformed", d.malformed.count),
            ("lost.requests_truncated", d.truncated.count),
            ("lost.requests_body_too_large", d.body_too_large.count),
            ("lost.midstream_bytes", d.midstream.bytes),
            ("lost.request_bytes", d.lost().bytes),
            ("unserved.requests_after_close", d.after_close.count),
            ("unserved.requests_after_te_and_cl", d.after_te_and_cl.count),
            ("unserved.request_bytes", d.unserved().bytes),
            ("lost.responses_gap", r.gap.count),
            ("lost.responses_head_too_large", r.head_too_large.count),
            ("lost.responses_malformed", r.malformed.count),
            ("lost.responses_truncated", r.truncated.count),
            ("lost.responses_too_many_headers", r.too_many_headers.count),
            ("lost.response_bytes", r.total().bytes),
            (
                "ignored.client_bytes",
                self.client_bytes_ignored + self.client_bytes_framer_ignored,
            ),
            (
                "ignored.server_bytes",
                self.server_bytes_ignored + self.server_bytes_framer_ignored,
            ),
            ("omitted.request_body_bytes", self.client_body_bytes_omitted),
            (
                "anomaly.client_retransmitted_bytes",
                self.client.retransmitted_bytes,
            ),
            (
                "anomaly.client_overlap_conflict_bytes",
                self.client.overlap_conflict_bytes,
            ),
            (
                "anomaly.server_retransmitted_bytes",
                self.server.retransmitted_bytes,
            ),
            (
                "anomaly.server_overlap_conflict_bytes",
                self.server.overlap_conflict_bytes,
            ),
        ];
        for (name, v) in lines {
            writeln!(f, "  {name:<40} {v}")?;
        }
        Ok(())
    }
}
