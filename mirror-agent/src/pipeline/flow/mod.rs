//! One connection: its direction, a reassembly stream per direction, and the framers.
//!
//! Owns the per-connection wiring: segments go to the stream of their direction; in-order
//! client bytes go to the [`RequestFramer`], server bytes to the [`ResponseFramer`] (told what
//! each request was, so HEAD and CONNECT responses frame right); final responses are paired with
//! requests in order ([`pairing`]). A response must not overtake its request: while the client
//! side waits for a hole or is in the middle of a request, server bytes wait (bounded). Late
//! segments of a connection that already closed are the pipeline's business (its TIME_WAIT
//! set), not this module's. Everything it drops it counts in [`PipelineStats`].

mod h2;
mod pairing;

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;

use super::direction::{self, Hint};
use super::stats::{PipelineStats, add_stream};
use super::{PipelineConfig, PipelineEvent};
use crate::capture::{Segment, SegmentRef, TcpFlags};

/// A segment entering a flow: one the caller hands over, or one borrowed from the capture buffer
/// (copied only where it must be kept, see [`Flow::on_segment`]).
pub(super) enum Incoming<'a> {
    Owned(Segment),
    Borrowed(SegmentRef<'a>),
}

impl Incoming<'_> {
    pub(super) fn view(&self) -> SegmentRef<'_> {
        match self {
            Incoming::Owned(s) => s.as_ref(),
            Incoming::Borrowed(s) => *s,
        }
    }

    /// The segment, its payload copied if it was borrowed.
    fn into_owned(self) -> Segment {
        match self {
            Incoming::Owned(s) => s,
            Incoming::Borrowed(s) => s.to_owned(),
        }
    }
}
use crate::http::request::{RequestEvent, RequestFramer};
use crate::http::response::{ResponseEvent, ResponseFramer, ResponseFramerStats};
use crate::reassembly::{Stream, StreamEvent};

/// Scratch buffers reused across calls so the hot path does not allocate.
#[derive(Default)]
pub(super) struct Scratch {
    stream: Vec<StreamEvent>,
    req: Vec<RequestEvent>,
    resp: Vec<ResponseEvent>,
}

/// Client and server once known.
struct Decided {
    client: SocketAddr,
    server: SocketAddr,
    /// [client→server, server→client].
    streams: [Stream; 2],
    req: Option<RequestFramer>,
    /// Only when responses are framed (`--compare`): without them the framer would be a third
    /// of this struct for nothing, on every connection (issue 17's 10000-connection RSS).
    resp: Option<Box<ResponseFramer>>,
    /// Server stream events held while the client stream waits for a hole (see `handle`).
    held_server: VecDeque<StreamEvent>,
    held_server_bytes: usize,
    /// The response framer's `answers_dropped` already accounted for.
    answers_seen: u64,
    /// Answer drops counted by the framer whose Dropped event has not come yet.
    answers_owed: u64,
    /// Sequence numbers (within the flow) of requests still waiting for their response.
    awaiting: VecDeque<u64>,
    next_seq: u64,
    /// The client stream was picked up without its SYN (its framer resyncs by itself).
    client_midstream: bool,
    /// The end of the body capture was last told to skip (so it is told once per body).
    skip_until: Option<u32>,
    client_ignored: bool,
    server_ignored: bool,
    ended: [bool; 2],
    reset: bool,
    /// The client started with the HTTP/2 preface: its bytes go to this decoder.
    h2: Option<Box<h2::H2Flow>>,
    /// The client's first bytes while they could still be the HTTP/2 preface (fewer than its
    /// 24 octets so far).
    h2_probe: Vec<u8>,
    /// The last request asked to upgrade to h2c (`Upgrade: h2c`): if the server switched
    /// protocols, the client's next bytes are the HTTP/2 preface (RFC 9113 3.1 of RFC 7540's
    /// upgrade, which RFC 9113 keeps for existing clients), probed like a connection's first.
    h2c_upgrade: bool,
    /// `seq_in_flow` of the `Upgrade: h2c` request waiting for its response (responses on):
    /// a 101 to it is not its answer, the server's HTTP/2 stream 1 is.
    h2c_upgrade_seq: Option<u64>,
    /// The response framer just read the 101 to that request (`seq_in_flow`): the server
    /// switches to HTTP/2 after its head.
    h2c_switched: Option<u64>,
    /// The server's bytes are HTTP/2 frames for the server-side decoder: from the first byte
    /// (prior knowledge) or from the end of the 101 head (`Upgrade: h2c`).
    server_h2: bool,
    /// Server bytes after a 101 that went to the HTTP/2 decoder, which the response framer
    /// also counted as tunnel bytes (taken off its ignored count at the end).
    server_tunnel_decoded: u64,
    /// The client stream was picked up mid-way and its first bytes were HTTP/2 frames: they
    /// are walked and counted, never decoded (see [`crate::http2::midstream`]).
    h2_mid: Option<Box<crate::http2::midstream::Midstream>>,
}

enum State {
    /// Segments held until a segment says who the client is (bounded).
    Undecided {
        pending: Vec<Segment>,
        bytes: usize,
    },
    Decided(Box<Decided>),
}

pub(super) struct Flow {
    pub id: u64,
    /// Last LRU stamp given to this flow (see the pipeline's LRU queue).
    pub touch: u64,
    pub last_ns: u64,
    /// Listed in the pipeline's set of flows with holes.
    pub in_holes: bool,
    /// [`Self::buffered`] and [`Self::has_holes`] as of the last [`Self::update_held`]: the
    /// budget's bookkeeping reads them for every segment, and computing them reads both
    /// streams and the framers, cache lines a client segment does not otherwise touch (4% of
    /// the agent's samples at 10000 connections when computed three times a segment).
    held: usize,
    holed: bool,
    state: State,
}

const C2S: usize = 0;
const S2C: usize = 1;

impl Flow {
    pub fn new(id: u64, now_ns: u64) -> Self {
        Self {
            id,
            touch: 0,
            last_ns: now_ns,
            in_holes: false,
            held: 0,
            holed: false,
            state: State::Undecided {
                pending: Vec::new(),
                bytes: 0,
            },
        }
    }

    /// Asks the CPU for the connection state's cache lines, all at once: called as soon as
    /// the flow is found, they arrive while the table's bookkeeping runs (see
    /// [`crate::prefetch`]).
    pub fn prefetch(&self) {
        if let State::Decided(d) = &self.state {
            crate::prefetch::prefetch(&**d);
        }
    }

    /// Recomputes what the flow holds after a change (call after every change); returns
    /// what it held before.
    pub fn update_held(&mut self) -> usize {
        let before = self.held;
        self.held = self.buffered();
        self.holed = self.has_holes();
        before
    }

    /// Bytes held against the global budget as of the last [`Self::update_held`].
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holes in its reassembly as of the last [`Self::update_held`].
    pub fn holed(&self) -> bool {
        self.holed
    }

    /// Bytes this flow holds that count against the global budget.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Undecided { bytes, .. } => *bytes,
            State::Decided(d) => {
                d.streams[0].buffered_bytes()
                    + d.streams[1].buffered_bytes()
                    + d.h2.as_ref().map_or(0, |h| h.buffered_bytes())
                    + d.h2_probe.len()
                    + d.req.as_ref().map_or(0, RequestFramer::buffered_bytes)
                    + d.resp.as_ref().map_or(0, |r| r.buffered_bytes())
                    + d.held_server_bytes
            }
        }
    }

    /// Nothing unfinished: no bytes waiting in reassembly or held back, no request or response
    /// in the middle of its framing. Ending such a flow loses nothing (a quiet keep-alive
    /// connection whose last request is complete).
    pub fn is_finished(&self) -> bool {
        match &self.state {
            State::Undecided { bytes, .. } => *bytes == 0,
            State::Decided(d) => {
                d.streams[C2S].buffered_bytes() == 0
                    && d.streams[S2C].buffered_bytes() == 0
                    && d.held_server_bytes == 0
                    && d.req
                        .as_ref()
                        .is_none_or(|r| d.client_ignored || r.stats().in_progress() == 0)
                    && (d.server_ignored || d.resp_stats().in_progress() == 0)
            }
        }
    }

    /// Out-of-order bytes waiting in reassembly (what a gap timeout can release).
    pub fn has_holes(&self) -> bool {
        match &self.state {
            State::Undecided { .. } => false,
            State::Decided(d) => d.streams[0].buffered_bytes() + d.streams[1].buffered_bytes() > 0,
        }
    }

    /// FIN seen in both directions, or RST in either; or, when the server's side is not
    /// followed (live capture of requests only, or a flow that is not HTTP), the client's FIN:
    /// every byte it sent has been framed, so nothing more can come that the agent would use,
    /// and the connection must not wait for an idle expiry reported as an eviction.
    /// Whether a pure SYN from `src` with sequence number `seq` starts a new connection on
    /// this flow's addresses, not this connection's SYN again: the client stream started at
    /// another sequence number (a capture source that restarts a connection, such as TLS
    /// plaintext taking over from the ciphertext the classifiers saw, or a quick port reuse).
    pub fn superseded_by(&self, src: std::net::SocketAddr, seq: u32) -> bool {
        match &self.state {
            State::Undecided { .. } => false,
            State::Decided(d) => {
                d.client == src
                    && d.streams[C2S]
                        .start_seq()
                        .is_some_and(|s| s != seq.wrapping_add(1))
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        match &self.state {
            State::Undecided { .. } => false,
            State::Decided(d) => {
                d.reset || (d.ended[0] && d.ended[1]) || (d.ended[C2S] && d.server_ignored)
            }
        }
    }

    pub fn on_segment(
        &mut self,
        seg: Incoming<'_>,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        let v = seg.view();
        self.last_ns = self.last_ns.max(v.ts_ns);
        if let State::Undecided { pending, bytes } = &mut self.state {
            let client = match direction::hint(&v, &cfg.ports) {
                Hint::SenderIsClient => v.src,
                Hint::SenderIsServer => v.dst,
                Hint::Unknown => {
                    // A bare ACK says nothing and carries nothing: not worth a slot.
                    let flags = v.flags.0 & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST);
                    if v.payload.is_empty() && flags == 0 {
                        return;
                    }
                    let seg = seg.into_owned();
                    *bytes += seg.payload.len();
                    pending.push(seg);
                    // Bounded: beyond the cap the oldest held segment is given up (counted).
                    while pending.len() > cfg.max_pending_segments
                        || *bytes > cfg.stream.max_buffered_bytes
                    {
                        let old = pending.remove(0);
                        *bytes -= old.payload.len();
                        stats.undecided_bytes += old.payload.len() as u64;
                    }
                    return;
                }
            };
            let server = if client == v.src { v.dst } else { v.src };
            let held = std::mem::take(pending);
            // Picked up mid-connection (no SYN seen): the server stream may start inside a
            // response, so its framer skips to the first status line.
            let midstream = !v.flags.syn() && !held.iter().any(|s| s.flags.syn());
            let resp = cfg.responses.then(|| {
                Box::new(
                    if midstream {
                        ResponseFramer::new_midstream(cfg.http.clone())
                    } else {
                        ResponseFramer::new(cfg.http.clone())
                    }
                    .with_capture(cfg.capture_responses),
                )
            });
            self.state = State::Decided(Box::new(Decided {
                client,
                server,
                streams: [
                    Stream::new(cfg.stream.clone()),
                    Stream::new(cfg.stream.clone()),
                ],
                req: None,
                resp,
                held_server: VecDeque::new(),
                held_server_bytes: 0,
                answers_seen: 0,
                answers_owed: 0,
                awaiting: VecDeque::new(),
                next_seq: 0,
                client_midstream: false,
                skip_until: None,
                client_ignored: false,
                server_ignored: !cfg.responses,
                ended: [false; 2],
                reset: false,
                h2: None,
                h2_probe: Vec::new(),
                h2c_upgrade: false,
                h2c_upgrade_seq: None,
                h2c_switched: None,
                server_h2: false,
                server_tunnel_decoded: 0,
                h2_mid: None,
            }));
            for s in held {
                self.push(Incoming::Owned(s), cfg, stats, sc, out);
            }
        }
        self.push(seg, cfg, stats, sc, out);
    }

    fn push(
        &mut self,
        seg: Incoming<'_>,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        let State::Decided(d) = &mut self.state else {
            return;
        };
        let v = seg.view();
        let dir = if v.src == d.client { C2S } else { S2C };
        if dir == C2S && d.req.is_none() {
            // The framer learns whether it sees the start of the client stream: without the SYN
            // it skips to the first request line.
            d.client_midstream = !v.flags.syn();
            d.req = Some(RequestFramer::new(cfg.http.clone(), d.client_midstream));
        }
        // The hot path of a live capture read in place: in-order client bytes go from the
        // capture buffer to the request framer, which copies only what it keeps. (The stream
        // taps want `Bytes`; they take the general path.)
        if dir == C2S
            && !cfg.tap_streams
            && d.streams[C2S].deliver_in_place(v.seq, v.flags, v.payload.len(), v.ts_ns)
        {
            d.client_data(self.id, v.payload, None, v.ts_ns, cfg, stats, sc, out);
            if !d.client_busy() {
                d.release_server(self.id, cfg, stats, sc, out);
            }
            return;
        }
        let seg = seg.into_owned();
        let mut evs = std::mem::take(&mut sc.stream);
        d.streams[dir].push(seg.seq, seg.flags, seg.payload, seg.ts_ns, &mut evs);
        d.handle(self.id, dir, &mut evs, cfg, stats, sc, out);
        sc.stream = evs;
    }

    /// Declares holes older than the gap timeout lost.
    pub fn poll(
        &mut self,
        now_ns: u64,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        let State::Decided(d) = &mut self.state else {
            return;
        };
        d.each_stream(self.id, cfg, stats, sc, out, |s, evs| s.poll(now_ns, evs));
    }

    /// Memory budget: gives up the holes of both directions now and releases what waited
    /// behind them (counted by reassembly as bound gaps).
    pub fn shed(
        &mut self,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        let State::Decided(d) = &mut self.state else {
            return;
        };
        let now_ns = self.last_ns;
        d.each_stream(self.id, cfg, stats, sc, out, |s, evs| s.shed(now_ns, evs));
    }

    /// Ends the flow: remaining holes are lost, framers finish, counters are folded in.
    pub fn close(
        mut self,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        match &mut self.state {
            State::Undecided { bytes, .. } => {
                stats.flows_undecided += 1;
                stats.undecided_bytes += *bytes as u64;
            }
            State::Decided(d) => {
                d.each_stream(self.id, cfg, stats, sc, out, |s, evs| s.flush(evs));
                d.h2_end(self.id, self.last_ns, &cfg.http, stats, out);
                d.h2_close(self.id, stats, out);
                // First bytes held as a possible HTTP/2 preface that never completed.
                let probe = std::mem::take(&mut d.h2_probe);
                if !probe.is_empty() {
                    d.client_http1(self.id, &probe, None, self.last_ns, cfg, stats, sc, out);
                }
                if let Some(req) = d.req.as_mut()
                    && !d.client_ignored
                {
                    req.finish(&mut sc.req);
                    d.on_requests(self.id, stats, sc, out);
                }
                d.release_server(self.id, cfg, stats, sc, out);
                if let Some(req) = d.req.as_ref() {
                    stats.client_bytes_framer_ignored += req.stats().ignored_bytes;
                    stats.client_body_bytes_omitted += req.stats().omitted_body_bytes;
                    if d.client_ignored {
                        stats.client_bytes_ignored += req.stats().in_progress();
                    }
                }
                if let Some(resp) = d.resp.as_mut().filter(|_| !d.server_ignored) {
                    resp.finish(self.last_ns, &mut sc.resp);
                    d.on_responses(self.id, stats, sc, out);
                } else {
                    // Framing stopped mid-message when the flow turned out not to be HTTP/1.x.
                    stats.server_bytes_ignored += d.resp_stats().in_progress();
                }
                stats.requests_unanswered += d.awaiting.len() as u64;
                let rs = d.resp_stats();
                stats.response_bytes += rs.response_bytes;
                stats.response_answers_dropped += rs.answers_dropped;
                stats.server_bytes_framer_ignored += rs.ignored_bytes - d.server_tunnel_decoded;
                add_stream(&mut stats.client, d.streams[C2S].stats());
                add_stream(&mut stats.server, d.streams[S2C].stats());
            }
        }
    }
}

impl Decided {
    /// The response framer's counts (all zero when responses are not framed).
    fn resp_stats(&self) -> ResponseFramerStats {
        self.resp.as_ref().map(|r| *r.stats()).unwrap_or_default()
    }

    /// Runs `op` on the stream of each direction (client's first) and frames what it releases.
    fn each_stream(
        &mut self,
        flow_id: u64,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
        mut op: impl FnMut(&mut Stream, &mut Vec<StreamEvent>),
    ) {
        let mut evs = std::mem::take(&mut sc.stream);
        for dir in [C2S, S2C] {
            op(&mut self.streams[dir], &mut evs);
            self.handle(flow_id, dir, &mut evs, cfg, stats, sc, out);
        }
        sc.stream = evs;
    }

    #[allow(clippy::too_many_arguments)] // the pipeline's parts, borrowed separately
    fn handle(
        &mut self,
        flow_id: u64,
        dir: usize,
        evs: &mut Vec<StreamEvent>,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        for ev in evs.drain(..) {
            if let StreamEvent::Data { bytes, .. } = &ev
                && cfg.tap_streams
            {
                out.push(PipelineEvent::StreamData {
                    flow_id,
                    from_client: dir == C2S,
                    bytes: bytes.clone(),
                });
            }
            match ev {
                StreamEvent::End { reset } => {
                    self.ended[dir] = true;
                    self.reset |= reset;
                }
                ev if dir == C2S => self.client_event(flow_id, ev, cfg, stats, sc, out),
                ev => {
                    // A response must not overtake the request it answers, or it is paired
                    // with the wrong one (or none): while the client side waits for a hole or
                    // is in the middle of a request, server bytes wait too (bounded by the
                    // per-direction buffer; beyond it they are framed at once).
                    if self.client_busy()
                        && !self.server_ignored
                        && self.held_server_bytes < cfg.stream.max_buffered_bytes
                    {
                        if let StreamEvent::Data { bytes, .. } = &ev {
                            self.held_server_bytes += bytes.len();
                        }
                        self.held_server.push_back(ev);
                    } else {
                        self.release_server(flow_id, cfg, stats, sc, out);
                        self.server_event(flow_id, ev, cfg, stats, sc, out);
                    }
                }
            }
        }
        if dir == C2S && !self.client_busy() {
            self.release_server(flow_id, cfg, stats, sc, out);
        }
    }

    /// The client side has a hole or a request in progress, or has not said yet whether it
    /// speaks HTTP/2 (a server sends its SETTINGS without waiting for the client's preface:
    /// they must reach the HTTP/2 decoder, not the HTTP/1 response framer).
    fn client_busy(&self) -> bool {
        !self.client_ignored
            && (self.streams[C2S].buffered_bytes() > 0
                || self
                    .req
                    .as_ref()
                    .is_some_and(|r| r.stats().in_progress() > 0)
                || self.client_undecided())
    }

    /// No client byte has told yet whether this connection is HTTP/2 with prior knowledge.
    fn client_undecided(&self) -> bool {
        self.h2.is_none()
            && self.h2_mid.is_none()
            && (!self.h2_probe.is_empty()
                || (!self.client_midstream
                    && self
                        .req
                        .as_ref()
                        .is_none_or(|r| r.stats().pushed_bytes == 0)))
    }

    /// Frames server bytes held while the client side was busy.
    fn release_server(
        &mut self,
        flow_id: u64,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        while let Some(ev) = self.held_server.pop_front() {
            if let StreamEvent::Data { bytes, .. } = &ev {
                self.held_server_bytes -= bytes.len();
            }
            self.server_event(flow_id, ev, cfg, stats, sc, out);
        }
    }

    fn client_event(
        &mut self,
        flow_id: u64,
        ev: StreamEvent,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        match ev {
            StreamEvent::Data { bytes, ts_ns } => {
                self.client_data(flow_id, &bytes, Some(&bytes), ts_ns, cfg, stats, sc, out)
            }
            StreamEvent::Gap { .. } if self.h2_mid.is_some() => {
                if let Some(m) = self.h2_mid.as_mut() {
                    m.gap();
                }
            }
            StreamEvent::Gap { .. } if self.h2.is_some() => {
                // The header table cannot be rebuilt after a hole.
                self.h2_end(flow_id, 0, &cfg.http, stats, out);
            }
            StreamEvent::Gap { len, .. } => {
                if let Some(req) = self.req.as_mut().filter(|_| !self.client_ignored) {
                    req.gap(len, &mut sc.req);
                    self.on_requests(flow_id, stats, sc, out);
                }
            }
            StreamEvent::End { .. } => {}
        }
    }

    fn server_event(
        &mut self,
        flow_id: u64,
        ev: StreamEvent,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        match ev {
            StreamEvent::Data { bytes, ts_ns } => {
                if self.server_ignored {
                    stats.server_bytes_ignored += bytes.len() as u64;
                } else if self.server_h2 {
                    self.h2_server_data(flow_id, &bytes, ts_ns, stats, out);
                } else if let Some(resp) = self.resp.as_mut() {
                    let tunnel_before = resp.stats().tunnel_bytes;
                    resp.push(&bytes, ts_ns, &mut sc.resp);
                    self.on_responses(flow_id, stats, sc, out);
                    if let Some(seq) = self.h2c_switched.take() {
                        self.switch_server_to_h2(seq, cfg, stats);
                        // The 101 to `Upgrade: h2c` ended within these bytes: what followed
                        // its head is the server's first HTTP/2 frames.
                        let n = (self.resp_stats().tunnel_bytes - tunnel_before) as usize;
                        self.server_tunnel_decoded += n as u64;
                        let rest = &bytes[bytes.len() - n..];
                        self.h2_server_data(flow_id, rest, ts_ns, stats, out);
                    }
                } else {
                    // Not reached: the server side is ignored whenever responses are not framed.
                    stats.server_bytes_ignored += bytes.len() as u64;
                }
            }
            // The server's header table cannot be rebuilt after a hole.
            StreamEvent::Gap { .. } if self.server_h2 => self.h2_server_end(flow_id, stats, out),
            StreamEvent::Gap { len, .. } => {
                if let Some(resp) = self.resp.as_mut().filter(|_| !self.server_ignored) {
                    resp.gap(len, &mut sc.resp);
                    self.on_responses(flow_id, stats, sc, out);
                }
            }
            StreamEvent::End { .. } => {}
        }
    }

    #[allow(clippy::too_many_arguments)] // the pipeline's parts, borrowed separately
    /// In-order client bytes for the request framer: `owner` is the `Bytes` they are, when they
    /// are one (requests inside it are then slices of it); without it they are borrowed.
    #[allow(clippy::too_many_arguments)]
    fn client_data(
        &mut self,
        flow_id: u64,
        bytes: &[u8],
        owner: Option<&Bytes>,
        ts_ns: u64,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        if self.client_ignored {
            stats.client_bytes_ignored += bytes.len() as u64;
            return;
        }
        if self.h2.is_some() {
            return self.h2_data(flow_id, bytes, ts_ns, &cfg.http, stats, out);
        }
        let fresh = self
            .req
            .as_ref()
            .is_none_or(|r| r.stats().pushed_bytes == 0);
        // An HTTP/2 connection picked up mid-way: counted, never decoded.
        if fresh
            && self.client_midstream
            && self.h2_mid.is_none()
            && crate::http2::midstream::looks_like_frames(bytes)
        {
            stats.h2_midstream_flows += 1;
            self.server_ignored = true;
            self.h2_mid = Some(Box::default());
        }
        if let Some(m) = self.h2_mid.as_mut() {
            let before = m.streams;
            m.push(bytes);
            stats.h2_midstream_bytes += bytes.len() as u64;
            stats.h2_midstream_streams += m.streams - before;
            return;
        }
        // HTTP/2 with prior knowledge, seen from its first byte, or after an `Upgrade: h2c`
        // request the server took: decoded. First bytes that could still be the preface are
        // held (at most its 24 octets) until they tell.
        if (fresh && !self.client_midstream) || self.h2c_upgrade {
            let probe = std::mem::take(&mut self.h2_probe);
            // Usually nothing is held: the segment alone tells, without a copy.
            let told = if probe.is_empty() {
                crate::http2::decoder::starts_with_preface(bytes)
            } else {
                let mut first = probe.clone();
                first.extend_from_slice(bytes);
                crate::http2::decoder::starts_with_preface(&first)
            };
            match told {
                None => {
                    let mut held = probe.clone();
                    held.extend_from_slice(bytes);
                    self.h2_probe = held;
                    return;
                }
                Some(true) => {
                    stats.h2_flows += 1;
                    let upgraded = std::mem::take(&mut self.h2c_upgrade);
                    if upgraded {
                        stats.h2_upgrades += 1;
                    }
                    // Its responses are HTTP/2 frames, decoded when responses are on: from the
                    // server's first byte, or after an upgrade from the end of the 101 the
                    // response framer reads (see `h2c_switched`).
                    let h2 = h2::H2Flow::new(&cfg.http, cfg.responses, cfg.capture_responses);
                    self.server_ignored = !h2.decodes_responses();
                    self.server_h2 = h2.decodes_responses() && !upgraded;
                    self.h2 = Some(h2);
                    if !probe.is_empty() {
                        self.h2_data(flow_id, &probe, ts_ns, &cfg.http, stats, out);
                    }
                    return self.h2_data(flow_id, bytes, ts_ns, &cfg.http, stats, out);
                }
                Some(false) if !probe.is_empty() => {
                    // Not HTTP/2 (or the upgrade was declined): the held bytes go first, as
                    // they came.
                    self.h2c_upgrade = false;
                    self.client_http1(flow_id, &probe, None, ts_ns, cfg, stats, sc, out);
                }
                Some(false) => self.h2c_upgrade = false,
            }
        }
        self.client_http1(flow_id, bytes, owner, ts_ns, cfg, stats, sc, out);
    }

    /// In-order client bytes of an HTTP/1.x flow (or one not known to be HTTP yet).
    #[allow(clippy::too_many_arguments)]
    fn client_http1(
        &mut self,
        flow_id: u64,
        bytes: &[u8],
        owner: Option<&Bytes>,
        ts_ns: u64,
        cfg: &PipelineConfig,
        stats: &mut PipelineStats,
        sc: &mut Scratch,
        out: &mut Vec<PipelineEvent>,
    ) {
        let fresh = self
            .req
            .as_ref()
            .is_none_or(|r| r.stats().pushed_bytes == 0);
        if cfg.ports.is_empty() && fresh {
            // Without --port only connections whose client starts with a request line are HTTP.
            // A short first chunk that is still a method prefix gets the benefit of the doubt.
            let prefix = bytes.len() < 24
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
            if !direction::starts_like_request(bytes) && !prefix && !self.client_midstream {
                stats.flows_not_http += 1;
                self.client_ignored = true;
                self.server_ignored = true;
                stats.client_bytes_ignored += bytes.len() as u64;
                return;
            }
        }
        let Some(req) = self.req.as_mut() else {
            return;
        };
        match owner {
            Some(b) => req.push(b, ts_ns, &mut sc.req),
            None => req.push_slice(bytes, ts_ns, &mut sc.req),
        }
        if cfg.skip_omitted_bodies
            && let Some(left) = req.omitted_body_remaining()
            && left >= crate::pipeline::MIN_SKIP_BYTES
        {
            // The framer has consumed every byte the stream delivered, and every gap: its
            // position is the stream's, and the body ends `left` bytes further.
            let s = req.stats();
            let until = self.streams[C2S].seq_at(s.pushed_bytes + s.gap_bytes + left);
            if self.skip_until != Some(until) {
                self.skip_until = Some(until);
                out.push(PipelineEvent::SkipClientBytes {
                    client: self.client,
                    server: self.server,
                    until_seq: until,
                });
            }
        }
        self.on_requests(flow_id, stats, sc, out);
    }
}
