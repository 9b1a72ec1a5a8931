//! Pipeline: segments in, requests (and responses) out.
//!
//! Owns the flow table and the per-flow wiring of reassembly ([`crate::reassembly`]) and framing
//! ([`crate::http`]). Plain state machine: no I/O, no clock of its own (time comes with segments
//! and ticks). Memory is bounded three ways, each counted when it bites: at most `max_flows`
//! connections (the least recently active is evicted), a global byte budget over everything
//! the flows hold (the least recently active flow holding bytes is evicted), and idle expiry.

mod direction;
mod flow;
mod stats;
mod table;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;

pub use direction::starts_like_request;
pub use stats::{Counted, PipelineStats, RequestDrops, ResponseDrops};
pub use table::FlowKey;

use crate::capture::{Segment, SegmentRef};
use crate::http::Request;
use crate::http::request::HttpLimits;
use crate::http::response::Response;
use crate::reassembly::StreamConfig;
use flow::{Flow, Incoming, Scratch};
use table::{FlowTable, Slot};

/// Identifies one captured request in a run: `(flow_id, seq_in_flow)`.
pub type RequestKey = (u64, u64);

/// A request with the connection it was seen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRequest {
    /// Client address (the side that sent the request).
    pub src: SocketAddr,
    /// Server address (the primary).
    pub dst: SocketAddr,
    /// Identifies the connection within one run (stable for all its requests).
    pub flow_id: u64,
    /// Position of this request on its connection, from 0.
    pub seq_in_flow: u64,
    pub request: Request,
}

impl CapturedRequest {
    /// This request's identity in the run.
    pub fn key(&self) -> RequestKey {
        (self.flow_id, self.seq_in_flow)
    }
}

/// The primary's final response to the request `(flow_id, seq_in_flow)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedResponse {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub flow_id: u64,
    /// `seq_in_flow` of the [`CapturedRequest`] this answers.
    pub seq_in_flow: u64,
    pub response: Response,
}

/// What the pipeline emits, in capture order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineEvent {
    Request(CapturedRequest),
    Response(CapturedResponse),
    /// Capture need not copy the client's bytes of this connection before `until_seq`: the
    /// rest of a body nobody needs (only with [`PipelineConfig::skip_omitted_bodies`]). What
    /// capture still delivers of them is counted and dropped as before.
    SkipClientBytes {
        client: std::net::SocketAddr,
        server: std::net::SocketAddr,
        until_seq: u32,
    },
    /// In-order stream bytes, only with [`PipelineConfig::tap_streams`] (tests, debugging).
    StreamData {
        flow_id: u64,
        from_client: bool,
        bytes: Bytes,
    },
}

/// Pipeline bounds and switches.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Server ports; empty: every connection whose client starts with a request line.
    pub ports: Vec<u16>,
    pub max_flows: usize,
    /// Global budget of bytes held by all flows (out-of-order data, partial requests).
    pub memory_budget: usize,
    pub stream: StreamConfig,
    pub http: HttpLimits,
    /// A flow without a segment for this long is expired.
    pub flow_idle_ns: u64,
    /// Frame the server side and pair responses with requests.
    pub responses: bool,
    /// Emit [`PipelineEvent::StreamData`] for every in-order chunk.
    pub tap_streams: bool,
    /// Segments held per flow while its direction is unknown.
    pub max_pending_segments: usize,
    /// With `responses`: keep each response's head and this many decoded body bytes
    /// ([`crate::http::response::ResponseSample`], for `--compare`); `None` keeps nothing.
    pub capture_responses: Option<usize>,
    /// Emit [`PipelineEvent::SkipClientBytes`] for bodies the framer omits (live capture that
    /// can skip them).
    pub skip_omitted_bodies: bool,
}

/// A body is worth a skip request only when this much of it is still to come: below, the
/// skb carrying the head usually holds the rest already.
pub const MIN_SKIP_BYTES: u64 = 64 * 1024;

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            max_flows: 65536,
            memory_budget: 256 << 20,
            stream: StreamConfig::default(),
            http: HttpLimits::default(),
            flow_idle_ns: 120_000_000_000,
            responses: true,
            tap_streams: false,
            max_pending_segments: 64,
            capture_responses: None,
            skip_omitted_bodies: false,
        }
    }
}

/// How long a closed connection's late segments are recognised (Linux TIME_WAIT: 60 s).
const TIME_WAIT_NS: u64 = 60_000_000_000;

/// At most this many closed connections are remembered.
const MAX_CLOSED: usize = 65536;

/// Why a flow left the table.
#[derive(Clone, Copy)]
enum EndReason {
    Closed,
    Idle,
    MaxFlows,
    Memory,
    AtEnd,
    /// A new connection's SYN on the same addresses.
    Superseded,
}

/// The flow table and everything downstream of capture up to requests.
pub struct Pipeline {
    cfg: PipelineConfig,
    flows: FlowTable,
    next_flow_id: u64,
    /// Sum of `Flow::buffered` over all flows.
    held_bytes: usize,
    /// Flows with out-of-order bytes (their `in_holes` is set), polled on ticks for gap
    /// timeouts. May hold slots of ended flows; those are skipped.
    with_holes: Vec<Slot>,
    /// Connections closed by FIN/FIN or RST, with their close time: their late retransmissions
    /// must not start a new, mid-stream flow (that would produce a request twice). Bounded
    /// (oldest forgotten first) and forgotten after `TIME_WAIT_NS`.
    closed: HashMap<FlowKey, u64>,
    closed_order: VecDeque<(FlowKey, u64)>,
    stats: PipelineStats,
    scratch: Scratch,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig) -> Self {
        Self {
            cfg,
            flows: FlowTable::default(),
            next_flow_id: 0,
            held_bytes: 0,
            with_holes: Vec::new(),
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            stats: PipelineStats::default(),
            scratch: Scratch::default(),
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Counters so far (reassembly counters of open flows are added when they end).
    pub fn stats(&self) -> PipelineStats {
        let mut s = self.stats.clone();
        s.flows_active = self.flows.len() as u64;
        s
    }

    /// Bytes held by all flows right now (bounded by the memory budget).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Flows tracked right now (at most `max_flows`).
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// One segment the caller is done with (a pcap file's): its payload is kept without a copy
    /// where reassembly or framing must keep it.
    pub fn on_segment(&mut self, seg: Segment, out: &mut Vec<PipelineEvent>) {
        self.dispatch(Incoming::Owned(seg), out);
    }

    /// One segment whose payload is borrowed (live capture reading the ring in place): in-order
    /// client bytes go straight to the request framer, which copies only the requests it
    /// frames; anything kept otherwise (out-of-order bytes, undecided flows, responses) is
    /// copied here.
    pub fn on_segment_ref(&mut self, seg: SegmentRef<'_>, out: &mut Vec<PipelineEvent>) {
        self.dispatch(Incoming::Borrowed(seg), out);
    }

    fn dispatch(&mut self, seg: Incoming<'_>, out: &mut Vec<PipelineEvent>) {
        let v = seg.view();
        let (src, dst, flags, ts_ns, len) = (v.src, v.dst, v.flags, v.ts_ns, v.payload.len());
        self.stats.segments += 1;
        self.stats.payload_bytes += len as u64;
        let ports = &self.cfg.ports;
        if !ports.is_empty() && !ports.contains(&dst.port()) && !ports.contains(&src.port()) {
            self.stats.segments_other_port += 1;
            self.stats.other_port_bytes += len as u64;
            return;
        }
        let key = FlowKey::new(src, dst);
        if flags.syn()
            && !flags.ack()
            && let Some(old) = self.flows.lookup(&key)
            && self
                .flows
                .get(old)
                .is_some_and(|f| f.superseded_by(src, v.seq))
        {
            self.end_flow(old, EndReason::Superseded, out);
            self.closed.remove(&key);
        }
        let slot = match self.flows.lookup(&key) {
            Some(slot) => {
                if let Some(flow) = self.flows.get(slot) {
                    flow.prefetch();
                }
                slot
            }
            None => {
                if len == 0 && !flags.syn() {
                    self.stats.segments_no_flow += 1;
                    return;
                }
                if let Some(&closed_at) = self.closed.get(&key) {
                    if !flags.syn() && ts_ns.saturating_sub(closed_at) < TIME_WAIT_NS {
                        self.stats.segments_after_close += 1;
                        self.stats.after_close_bytes += len as u64;
                        return;
                    }
                    // A new connection on the same addresses (or TIME_WAIT is over).
                    self.closed.remove(&key);
                }
                while self.flows.len() >= self.cfg.max_flows {
                    let Some(old) = self.flows.oldest() else {
                        break;
                    };
                    self.end_flow(old, EndReason::MaxFlows, out);
                }
                self.stats.flows += 1;
                self.next_flow_id += 1;
                self.flows
                    .insert(key, Flow::new(self.next_flow_id - 1, ts_ns))
            }
        };
        self.stats.segments_to_flows += 1;
        self.flows.touch(slot);
        let flow = self.flows.get_mut(slot).expect("slot just looked up");
        flow.on_segment(seg, &self.cfg, &mut self.stats, &mut self.scratch, out);
        self.after_update(slot, out);
        self.flows.note_held(slot);
        // Over budget: the least recently active flow holding out-of-order bytes gives up its
        // holes (cheap, the connection goes on); if only partial requests are left, the least
        // recently active flow holding bytes is ended.
        while self.held_bytes > self.cfg.memory_budget {
            if let Some(victim) = self.flows.oldest_with_holes() {
                let flow = self.flows.get_mut(victim).expect("current slot");
                flow.shed(&self.cfg, &mut self.stats, &mut self.scratch, out);
                self.stats.memory_sheds += 1;
                self.after_update(victim, out);
                continue;
            }
            let Some(victim) = self.flows.oldest_holding() else {
                break;
            };
            self.end_flow(victim, EndReason::Memory, out);
        }
    }

    /// Time passes (capture time): gap timeouts and idle expiry.
    pub fn on_tick(&mut self, now_ns: u64, out: &mut Vec<PipelineEvent>) {
        for slot in std::mem::take(&mut self.with_holes) {
            let Some(flow) = self.flows.get_mut(slot) else {
                continue;
            };
            if !flow.in_holes {
                continue;
            }
            // Re-listed by `after_update` if it still has holes.
            flow.in_holes = false;
            flow.poll(now_ns, &self.cfg, &mut self.stats, &mut self.scratch, out);
            self.after_update(slot, out);
        }
        while let Some(slot) = self.flows.oldest() {
            let f = self.flows.get(slot).expect("current slot");
            if now_ns.saturating_sub(f.last_ns) < self.cfg.flow_idle_ns {
                break;
            }
            self.end_flow(slot, EndReason::Idle, out);
        }
    }

    /// End of input: every flow ends, holes are declared lost, partial requests counted.
    pub fn finish(&mut self, out: &mut Vec<PipelineEvent>) {
        // Oldest first, so events come out in a stable order.
        for slot in self.flows.all_by_id() {
            self.end_flow(slot, EndReason::AtEnd, out);
        }
        self.with_holes.clear();
    }

    fn remember_closed(&mut self, key: FlowKey, at_ns: u64) {
        self.closed.insert(key, at_ns);
        self.closed_order.push_back((key, at_ns));
        while let Some(&(k, t)) = self.closed_order.front() {
            let stale = at_ns.saturating_sub(t) >= TIME_WAIT_NS;
            if !stale && self.closed_order.len() <= MAX_CLOSED.min(self.cfg.max_flows.max(16)) {
                break;
            }
            self.closed_order.pop_front();
            if self.closed.get(&k) == Some(&t) {
                self.closed.remove(&k);
            }
        }
    }

    /// Budget bookkeeping after a flow changed; ends it if it closed.
    fn after_update(&mut self, slot: Slot, out: &mut Vec<PipelineEvent>) {
        let Some(flow) = self.flows.get_mut(slot) else {
            return;
        };
        let before = flow.update_held();
        self.held_bytes = (self.held_bytes + flow.held()).saturating_sub(before);
        if flow.holed() && !flow.in_holes {
            flow.in_holes = true;
            self.with_holes.push(slot);
        }
        if flow.is_closed() {
            self.end_flow(slot, EndReason::Closed, out);
        }
    }

    fn end_flow(&mut self, slot: Slot, why: EndReason, out: &mut Vec<PipelineEvent>) {
        let Some(key) = self.flows.key(slot) else {
            return;
        };
        let Some(flow) = self.flows.remove(slot) else {
            return;
        };
        if matches!(why, EndReason::Closed) {
            self.remember_closed(key, flow.last_ns);
        }
        self.held_bytes = self.held_bytes.saturating_sub(flow.held());
        let s = &mut self.stats;
        match why {
            EndReason::Closed => s.flows_closed += 1,
            EndReason::Idle if flow.is_finished() => s.flows_idle_finished += 1,
            EndReason::Idle => s.flows_idle_expired += 1,
            EndReason::MaxFlows => s.flows_evicted_max_flows += 1,
            EndReason::Memory => s.flows_evicted_memory += 1,
            EndReason::AtEnd => s.flows_open_at_end += 1,
            EndReason::Superseded => s.flows_superseded += 1,
        }
        flow.close(&self.cfg, &mut self.stats, &mut self.scratch, out);
    }
}

#[cfg(test)]
mod tests;
