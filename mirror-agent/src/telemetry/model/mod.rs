//! The metrics model: which cumulative counters and gauges the agent exports, under which
//! OpenTelemetry name, unit and attributes, computed from the latest stage snapshots.
//!
//! Owns the one table ([`DEFS`]) that both exporters read: the Prometheus collector
//! (`prometheus.rs`) and the OTLP observable instruments (`otel.rs`). The stages keep their own
//! cumulative counters; the driver hands their snapshots to [`Snapshots`] once a second and the
//! exporters report those values as they are, so nothing is counted twice. Per-request
//! histograms live in `request.rs`. No exporter types here.

use crate::capture::ebpf::Counters;
use crate::output_queue::OutputSnapshot;
use crate::pipeline::PipelineStats;
use crate::reassembly::StreamStats;
use crate::replay::stats::{DropReason, ErrorKind, ReplaySnapshot};

/// Cumulative (monotonic) or point-in-time value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Units that change a Prometheus name (`_bytes`, `_ratio`), or annotations that do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// UCUM `By`; Prometheus suffix `_bytes`.
    Bytes,
    /// UCUM `1`; Prometheus suffix `_ratio`.
    Ratio,
    /// A UCUM annotation such as `{packet}`: no Prometheus suffix.
    Count(&'static str),
}

impl Unit {
    /// The UCUM unit string OpenTelemetry carries.
    pub fn ucum(self) -> &'static str {
        match self {
            Unit::Bytes => "By",
            Unit::Ratio => "1",
            Unit::Count(a) => a,
        }
    }
}

/// One data point: attributes (OpenTelemetry keys) and a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attrs: Vec<(&'static str, String)>,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    U64(u64),
    F64(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::U64(v) => v as f64,
            Value::F64(v) => v,
        }
    }
}

/// The latest snapshot of each stage; `None` where the stage does not run (no kernel capture
/// in pcap mode, no replay when only recording).
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    pub kernel: Option<Counters>,
    pub pipeline: Option<PipelineStats>,
    pub replay: Option<ReplaySnapshot>,
    pub compare: Option<crate::compare::CompareSnapshot>,
    /// The agent's own OTLP exports (only with OTLP on).
    pub otlp: Option<super::export_stats::ExportSnapshot>,
    /// The outputs that run on their own threads (`record`, `pcap`), by name.
    pub outputs: Vec<(&'static str, OutputSnapshot)>,
}

/// One exported metric: its OpenTelemetry name, kind, unit, help, and how to read it.
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    pub read: fn(&Snapshots, &mut Vec<Point>),
}

impl std::fmt::Debug for MetricDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricDef")
            .field("name", &self.name)
            .finish()
    }
}

impl MetricDef {
    /// The name Prometheus shows: dots to underscores, the unit suffix, `_total` for counters
    /// (what prometheus-client's encoder and the Collector's Prometheus exporter both produce).
    pub fn prometheus_name(&self) -> String {
        let mut n = prometheus_base(self.name);
        match self.unit {
            Unit::Bytes => n.push_str("_bytes"),
            Unit::Ratio => n.push_str("_ratio"),
            Unit::Count(_) => {}
        }
        if self.kind == Kind::Counter {
            n.push_str("_total");
        }
        n
    }

    pub fn points(&self, s: &Snapshots) -> Vec<Point> {
        let mut out = Vec::new();
        (self.read)(s, &mut out);
        out
    }
}

/// OpenTelemetry name or attribute key to Prometheus form.
pub fn prometheus_base(name: &str) -> String {
    name.replace('.', "_")
}

fn p(out: &mut Vec<Point>, attrs: &[(&'static str, &str)], v: u64) {
    out.push(Point {
        attrs: attrs.iter().map(|(k, v)| (*k, (*v).to_string())).collect(),
        value: Value::U64(v),
    });
}

fn kernel(s: &Snapshots, out: &mut Vec<Point>, f: fn(&Counters, &mut Vec<Point>)) {
    if let Some(k) = &s.kernel {
        f(k, out)
    }
}
fn tls(
    s: &Snapshots,
    out: &mut Vec<Point>,
    f: fn(&crate::capture::ebpf::tls::TlsCounters, &mut Vec<Point>),
) {
    if let Some(t) = s.kernel.as_ref().and_then(|k| k.tls.as_ref()) {
        f(t, out)
    }
}
fn pipeline(s: &Snapshots, out: &mut Vec<Point>, f: fn(&PipelineStats, &mut Vec<Point>)) {
    if let Some(ps) = &s.pipeline {
        f(ps, out)
    }
}
fn per_mirror(
    s: &Snapshots,
    out: &mut Vec<Point>,
    f: fn(&crate::replay::stats::MirrorSnapshot, &str, &mut Vec<Point>),
) {
    if let Some(r) = &s.replay {
        for m in &r.mirrors {
            f(m, &m.name, out)
        }
    }
}
fn per_compare(
    s: &Snapshots,
    out: &mut Vec<Point>,
    f: fn(&crate::compare::MirrorCompare, &str, &mut Vec<Point>),
) {
    if let Some(c) = &s.compare {
        for m in &c.mirrors {
            f(m, &m.name, out)
        }
    }
}
fn per_output(s: &Snapshots, out: &mut Vec<Point>, f: fn(&OutputSnapshot, &str, &mut Vec<Point>)) {
    for (name, o) in &s.outputs {
        f(o, name, out)
    }
}
fn directions(ps: &PipelineStats) -> [(&'static str, &StreamStats); 2] {
    [("client", &ps.client), ("server", &ps.server)]
}

const MIRROR: &str = "mirror.name";
const OUTPUT: &str = "output";
const REASON: &str = "reason";
const CHANGE: &str = "change";
const DIRECTION: &str = "direction";
const ERROR_TYPE: &str = "error.type";
const KIND: &str = "kind";
const METHOD: &str = "http.request.method";
const ROUTE: &str = "http.route";
const RESULT: &str = "result";
const OUTCOME: &str = "outcome";
const STATUS_CLASS: &str = "http.response.status_class";

const DROP_REASONS: [(DropReason, &str); 5] = [
    (DropReason::Filtered, "filtered"),
    (DropReason::BodyTooLarge, "body_too_large"),
    (DropReason::QueueFull, "queue_full"),
    (DropReason::Backoff, "backoff"),
    (DropReason::Shutdown, "shutdown"),
];
/// OpenTelemetry's RPC semantic conventions name the gRPC status attribute so.
const GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
const GRPC_CODES: [&str; crate::replay::stats::GRPC_STATUS_SLOTS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];
const ERROR_KINDS: [(ErrorKind, &str); 4] = [
    (ErrorKind::Connect, "connect"),
    (ErrorKind::Io, "io"),
    (ErrorKind::BadResponse, "bad_response"),
    (ErrorKind::Untranslatable, "untranslatable"),
];

const PACKET: Unit = Unit::Count("{packet}");
const REQUEST: Unit = Unit::Count("{request}");
const FLOW: Unit = Unit::Count("{flow}");

/// Every snapshot-driven metric the agent exports. Histograms are in `request.rs`.
pub static DEFS: &[MetricDef] = &[
    // ---- kernel classifier (per-CPU counters summed) ----
    MetricDef {
        name: "mirror.kernel.packets.seen",
        kind: Kind::Counter,
        unit: PACKET,
        help: "Packets the TC classifier looked at.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.seen)),
    },
    MetricDef {
        name: "mirror.kernel.packets.matched",
        kind: Kind::Counter,
        unit: PACKET,
        help: "TCP packets to a configured port.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.matched)),
    },
    MetricDef {
        name: "mirror.kernel.packets.sampled_out",
        kind: Kind::Counter,
        unit: PACKET,
        help: "Matched packets of flows not sampled (capture percent).",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.sampled_out)),
    },
    MetricDef {
        name: "mirror.kernel.records",
        kind: Kind::Counter,
        unit: Unit::Count("{record}"),
        help: "Records written to the ring buffer (one per chunk of up to 64 KiB of an skb's payload).",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.records)),
    },
    MetricDef {
        name: "mirror.kernel.records.malformed",
        kind: Kind::Counter,
        unit: Unit::Count("{record}"),
        help: "Ring buffer records the agent could not decode (counted, their payload lost).",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.malformed_records)),
    },
    MetricDef {
        name: "mirror.kernel.packets.dropped",
        kind: Kind::Counter,
        unit: PACKET,
        help: "Matched packets meant for userspace that did not reach it, by reason (ring_full: ring buffer reserve failed).",
        read: |s, o| {
            kernel(s, o, |k, o| {
                p(o, &[(REASON, "ring_full")], k.ring_full);
                p(o, &[(REASON, "load_error")], k.load_error);
            })
        },
    },
    MetricDef {
        name: "mirror.kernel.packets.truncated",
        kind: Kind::Counter,
        unit: PACKET,
        help: "Packets whose payload went beyond 8 records of 64 KiB; the rest was not copied.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.truncated)),
    },
    MetricDef {
        name: "mirror.kernel.packets.skipped",
        kind: Kind::Counter,
        unit: PACKET,
        help: "Packets deliberately not recorded, by reason (ignored: the agent's own flows; empty: no payload; unparseable headers; tls_ciphertext: a port read as TLS plaintext).",
        read: |s, o| {
            kernel(s, o, |k, o| {
                p(o, &[(REASON, "ignored")], k.ignored);
                p(o, &[(REASON, "empty")], k.empty);
                p(o, &[(REASON, "unparseable")], k.unparseable);
                p(o, &[(REASON, "tls_ciphertext")], k.tls_ciphertext);
            })
        },
    },
    MetricDef {
        name: "mirror.kernel.payload.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "TCP payload bytes written to the ring buffer.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.payload_bytes)),
    },
    MetricDef {
        name: "mirror.kernel.body_skipped.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "TCP payload bytes not copied because they lay inside request bodies no output needs (mirrorBody false or over maxBodySize, no --record, --compare or --write-pcap).",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.skipped_bytes)),
    },
    // ---- TLS plaintext (--tls) ----
    MetricDef {
        name: "mirror.tls.calls",
        kind: Kind::Counter,
        unit: Unit::Count("{call}"),
        help: "SSL_read/SSL_write calls the uprobes saw return data, by result (copied; client_side: the client's end of a connection to a captured port; sampled_out; other: no captured port's connection).",
        read: |s, o| {
            tls(s, o, |t, o| {
                p(o, &[(RESULT, "copied")], t.kernel.calls);
                p(o, &[(RESULT, "client_side")], t.kernel.client_side);
                p(o, &[(RESULT, "sampled_out")], t.kernel.sampled_out);
                p(o, &[(RESULT, "other")], t.kernel.other);
            })
        },
    },
    MetricDef {
        name: "mirror.tls.lost",
        kind: Kind::Counter,
        unit: Unit::Count("{record}"),
        help: "TLS records lost, by reason (ring_full: chunks of calls; close: close reports; unmatched: returns without their call; read_error: user memory not readable).",
        read: |s, o| {
            tls(s, o, |t, o| {
                p(o, &[(REASON, "ring_full")], t.kernel.ring_full);
                p(o, &[(REASON, "close")], t.kernel.close_lost);
                p(o, &[(REASON, "unmatched")], t.kernel.unmatched);
                p(o, &[(REASON, "read_error")], t.kernel.read_errors);
            })
        },
    },
    MetricDef {
        name: "mirror.tls.plaintext.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "TLS plaintext bytes, by outcome (segment: passed to the pipeline; lost: holes from lost records; client_side: the client's end of a captured connection; unresolved: no fd to tell; other: not a captured port's connection; sampled_out).",
        read: |s, o| {
            tls(s, o, |t, o| {
                let st = &t.streams;
                p(o, &[(OUTCOME, "segment")], st.segment_bytes);
                p(o, &[(OUTCOME, "lost")], st.lost_bytes);
                p(o, &[(OUTCOME, "client_side")], st.client_side_bytes);
                p(o, &[(OUTCOME, "unresolved")], st.unresolved_bytes);
                p(o, &[(OUTCOME, "other")], st.other_bytes);
                p(o, &[(OUTCOME, "sampled_out")], st.sampled_out_bytes);
            })
        },
    },
    MetricDef {
        name: "mirror.tls.connections",
        kind: Kind::Counter,
        unit: FLOW,
        help: "TLS connections, by source (kernel: read, seen established; procfs: read, open before the agent started; unread: a TLS port's connection that closed without plaintext read: no request sent, or a process whose TLS library is not probed; given_up: open before the agent started and still idle after --tls-open-wait-secs, its later requests not read).",
        read: |s, o| {
            tls(s, o, |t, o| {
                let st = &t.streams;
                p(o, &[("source", "kernel")], st.connections_from_start);
                p(o, &[("source", "procfs")], st.connections_resolved_procfs);
                p(o, &[("source", "unread")], t.kernel.unread);
                p(o, &[("source", "given_up")], t.open_before_given_up);
            })
        },
    },
    MetricDef {
        name: "mirror.tls.process.connections",
        kind: Kind::Counter,
        unit: FLOW,
        help: "TLS connections whose plaintext is read, by process (the answer to: is this service being read?).",
        read: |s, o| {
            tls(s, o, |t, o| {
                for pr in &t.processes {
                    let pid = pr.pid.to_string();
                    p(
                        o,
                        &[("process.pid", &pid), ("process.executable.name", &pr.name)],
                        pr.connections,
                    );
                }
            })
        },
    },
    MetricDef {
        name: "mirror.tls.process.plaintext.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "TLS plaintext bytes passed to the pipeline, by process.",
        read: |s, o| {
            tls(s, o, |t, o| {
                for pr in &t.processes {
                    let pid = pr.pid.to_string();
                    p(
                        o,
                        &[("process.pid", &pid), ("process.executable.name", &pr.name)],
                        pr.plaintext_bytes,
                    );
                }
            })
        },
    },
    // ---- interfaces followed (--iface globs) ----
    MetricDef {
        name: "mirror.capture.interfaces",
        kind: Kind::Gauge,
        unit: Unit::Count("{interface}"),
        help: "Interfaces the classifiers are attached to now.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.interfaces)),
    },
    MetricDef {
        name: "mirror.capture.interface.changes",
        kind: Kind::Counter,
        unit: Unit::Count("{interface}"),
        help: "Interfaces attached to, detached from (gone or renamed), or that matched --iface and could not be attached to (attach_error), by change.",
        read: |s, o| {
            kernel(s, o, |k, o| {
                p(o, &[(CHANGE, "attached")], k.iface.attached);
                p(o, &[(CHANGE, "detached")], k.iface.detached);
                p(o, &[(CHANGE, "attach_error")], k.iface.attach_errors);
            })
        },
    },
    MetricDef {
        name: "mirror.capture.interface.resyncs",
        kind: Kind::Counter,
        unit: Unit::Count("{resync}"),
        help: "Times link notifications were lost and every interface was compared again.",
        read: |s, o| kernel(s, o, |k, o| p(o, &[], k.iface.resyncs)),
    },
    // ---- outputs on their own threads (--record, --write-pcap) ----
    MetricDef {
        name: "mirror.output.items.written",
        kind: Kind::Counter,
        unit: Unit::Count("{item}"),
        help: "Items an output wrote (record: requests; pcap: segments).",
        read: |s, o| per_output(s, o, |x, name, o| p(o, &[(OUTPUT, name)], x.written)),
    },
    MetricDef {
        name: "mirror.output.items.dropped",
        kind: Kind::Counter,
        unit: Unit::Count("{item}"),
        help: "Items an output dropped, for itself only, by reason (queue_full: the sink fell \
               behind; write_error: after the first write error; at_exit: still queued when the \
               run ended).",
        read: |s, o| {
            per_output(s, o, |x, name, o| {
                for (reason, n) in x.drops_by_reason() {
                    p(o, &[(OUTPUT, name), (REASON, reason)], n);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.output.queue.size",
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        help: "Bytes waiting in an output's queue.",
        read: |s, o| per_output(s, o, |x, name, o| p(o, &[(OUTPUT, name)], x.queued_bytes)),
    },
    // ---- flow table and reassembly ----
    MetricDef {
        name: "mirror.pipeline.segments",
        kind: Kind::Counter,
        unit: Unit::Count("{segment}"),
        help: "Segments handed to the pipeline.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.segments)),
    },
    MetricDef {
        name: "mirror.flows.opened",
        kind: Kind::Counter,
        unit: FLOW,
        help: "Connections tracked.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.flows)),
    },
    MetricDef {
        name: "mirror.flows.active",
        kind: Kind::Gauge,
        unit: FLOW,
        help: "Connections tracked now.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.flows_active)),
    },
    MetricDef {
        name: "mirror.flows.closed",
        kind: Kind::Counter,
        unit: FLOW,
        help: "Connections ended by FIN in both directions or by RST.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.flows_closed)),
    },
    MetricDef {
        name: "mirror.flows.idle_finished",
        kind: Kind::Counter,
        unit: FLOW,
        help: "Connections retired after the idle timeout with nothing unfinished (their last \
               request complete): not a loss.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.flows_idle_finished)),
    },
    MetricDef {
        name: "mirror.flows.evicted",
        kind: Kind::Counter,
        unit: FLOW,
        help: "Connections the flow table gave up with something unfinished, by reason (idle \
               timeout, max_flows, memory budget, a new connection's SYN on the same addresses).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(o, &[(REASON, "idle")], ps.flows_idle_expired);
                p(o, &[(REASON, "max_flows")], ps.flows_evicted_max_flows);
                p(o, &[(REASON, "memory")], ps.flows_evicted_memory);
                p(o, &[(REASON, "superseded")], ps.flows_superseded);
            })
        },
    },
    MetricDef {
        name: "mirror.flows.skipped",
        kind: Kind::Counter,
        unit: FLOW,
        help: "Connections not framed as HTTP/1.x, by reason.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(o, &[(REASON, "not_http")], ps.flows_not_http);
                p(o, &[(REASON, "h2")], ps.flows_h2);
                p(o, &[(REASON, "tunnel")], ps.flows_tunnel);
                p(o, &[(REASON, "undecided")], ps.flows_undecided);
            })
        },
    },
    MetricDef {
        name: "mirror.h2.connections",
        kind: Kind::Counter,
        unit: FLOW,
        help: "HTTP/2 connections, by result (decoded from their first byte: prior knowledge or an h2c upgrade; failed: decoding stopped on a connection error or a gap, the rest of the connection counted as dropped bytes; midstream: picked up after their start, counted, never decoded).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(
                    o,
                    &[(RESULT, "decoded")],
                    ps.h2_flows - ps.h2_flows_failed.min(ps.h2_flows),
                );
                p(o, &[(RESULT, "failed")], ps.h2_flows_failed);
                p(o, &[(RESULT, "midstream")], ps.h2_midstream_flows);
            })
        },
    },
    MetricDef {
        name: "mirror.h2.streams",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "HTTP/2 streams, by result (request: mirrored; dropped: reset by the client, malformed, over a bound, unfinished, or not expressible in HTTP/1.1; midstream: opened on a connection picked up after its start, not mirrorable).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(o, &[(RESULT, "request")], ps.h2_requests);
                p(o, &[(RESULT, "dropped")], ps.h2_streams_dropped);
                p(o, &[(RESULT, "midstream")], ps.h2_midstream_streams);
            })
        },
    },
    MetricDef {
        name: "mirror.h2.dropped.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "Bytes of HTTP/2 connections not decoded into requests or responses, by direction: dropped streams, bytes after decoding stopped, connections picked up after their start (client), pushed streams (server).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(
                    o,
                    &[(DIRECTION, "client")],
                    ps.h2_dropped_bytes + ps.h2_midstream_bytes,
                );
                p(o, &[(DIRECTION, "server")], ps.h2_server_dropped_bytes);
            })
        },
    },
    MetricDef {
        name: "mirror.h2.responses",
        kind: Kind::Counter,
        unit: Unit::Count("{response}"),
        help: "HTTP/2 responses decoded for comparison, by result (paired: with its request; dropped: reset by the server, malformed or unfinished; lost: a dropped one whose request was mirrored, so it has nothing to compare with).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(o, &[(RESULT, "paired")], ps.h2_responses);
                p(o, &[(RESULT, "dropped")], ps.h2_response_streams_dropped);
                p(o, &[(RESULT, "lost")], ps.h2_responses_lost);
            })
        },
    },
    MetricDef {
        name: "mirror.reassembly.gaps",
        kind: Kind::Counter,
        unit: Unit::Count("{gap}"),
        help: "Holes in a TCP stream declared lost, by direction and reason (timeout, bound: out-of-order buffer full, end: flow ended).",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                for (d, st) in directions(ps) {
                    p(o, &[(DIRECTION, d), (REASON, "timeout")], st.gaps_timeout);
                    p(o, &[(DIRECTION, d), (REASON, "bound")], st.gaps_bound);
                    p(o, &[(DIRECTION, d), (REASON, "end")], st.gaps_end);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.reassembly.gap.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "Stream bytes lost in gaps, by direction.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                for (d, st) in directions(ps) {
                    p(o, &[(DIRECTION, d)], st.gap_bytes);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.reassembly.discarded.size",
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "Payload bytes the reassembler discarded, by direction and reason.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                for (d, st) in directions(ps) {
                    p(
                        o,
                        &[(DIRECTION, d), (REASON, "overflow")],
                        st.overflow_bytes,
                    );
                    p(
                        o,
                        &[(DIRECTION, d), (REASON, "retransmitted")],
                        st.retransmitted_bytes,
                    );
                    p(
                        o,
                        &[(DIRECTION, d), (REASON, "before_start")],
                        st.before_start_bytes,
                    );
                    p(
                        o,
                        &[(DIRECTION, d), (REASON, "after_end")],
                        st.after_end_bytes,
                    );
                }
            })
        },
    },
    // ---- HTTP framing ----
    MetricDef {
        name: "mirror.http.requests",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Requests framed from client streams.",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.requests)),
    },
    MetricDef {
        name: "mirror.http.request.parse_errors",
        kind: Kind::Counter,
        unit: Unit::Count("{error}"),
        help: "Client byte runs that did not become requests, by error type.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                let d = &ps.request_drops;
                for (t, c) in [
                    ("gap", d.gap),
                    ("head_too_large", d.head_too_large),
                    ("too_many_headers", d.too_many_headers),
                    ("malformed", d.malformed),
                    ("truncated", d.truncated),
                    ("body_too_large", d.body_too_large),
                    ("midstream", d.midstream),
                ] {
                    p(o, &[(ERROR_TYPE, t)], c.count);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.http.requests.unserved",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Requests a client sent after the connection ended for the server (after \
               Connection: close, or after a request with both Transfer-Encoding and \
               Content-Length), which the primary never served: not mirrored, by reason.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                let d = &ps.request_drops;
                for (r, c) in [
                    ("after_close", d.after_close),
                    ("after_te_and_cl", d.after_te_and_cl),
                ] {
                    p(o, &[(REASON, r)], c.count);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.http.responses",
        kind: Kind::Counter,
        unit: Unit::Count("{response}"),
        help: "Primary's final responses paired with their request (egress capture).",
        read: |s, o| pipeline(s, o, |ps, o| p(o, &[], ps.responses)),
    },
    MetricDef {
        name: "mirror.http.response.parse_errors",
        kind: Kind::Counter,
        unit: Unit::Count("{error}"),
        help: "Server byte runs that did not become responses, by error type.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                let d = &ps.response_drops;
                for (t, c) in [
                    ("gap", d.gap),
                    ("head_too_large", d.head_too_large),
                    ("malformed", d.malformed),
                    ("truncated", d.truncated),
                    ("too_many_headers", d.too_many_headers),
                ] {
                    p(o, &[(ERROR_TYPE, t)], c.count);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.http.pairing.misses",
        kind: Kind::Counter,
        unit: Unit::Count("{message}"),
        help: "Requests and responses that could not be paired, by reason.",
        read: |s, o| {
            pipeline(s, o, |ps, o| {
                p(o, &[(REASON, "unpaired_response")], ps.responses_unpaired);
                p(o, &[(REASON, "unanswered_request")], ps.requests_unanswered);
                p(o, &[(REASON, "lost_response")], ps.responses_lost);
            })
        },
    },
    // ---- replay, per mirror ----
    MetricDef {
        name: "mirror.replay.captured",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Requests handed to the replayer.",
        read: |s, o| {
            if let Some(r) = &s.replay {
                p(o, &[], r.captured)
            }
        },
    },
    MetricDef {
        name: "mirror.requests.sampled",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies a mirror's sampler took.",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.sampled)),
    },
    MetricDef {
        name: "mirror.requests.sent",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies fully written to a mirror.",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.sent)),
    },
    MetricDef {
        name: "mirror.requests.responses",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies answered by a mirror, by status class.",
        read: |s, o| {
            per_mirror(s, o, |m, n, o| {
                for (i, c) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    p(o, &[(MIRROR, n), (STATUS_CLASS, c)], m.status[i]);
                }
            })
        },
    },
    MetricDef {
        name: "mirror.requests.grpc_status",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies a mirror answered over HTTP/2 with a grpc-status (trailers, or a trailers-only answer), by code (0-16, other); only codes seen.",
        read: |s, o| {
            per_mirror(s, o, |m, n, o| {
                for (code, count) in GRPC_CODES.iter().zip(m.grpc_status) {
                    if count > 0 {
                        p(o, &[(MIRROR, n), (GRPC_STATUS_CODE, code)], count);
                    }
                }
            })
        },
    },
    MetricDef {
        name: "mirror.tls.handshake_failures",
        kind: Kind::Counter,
        unit: Unit::Count("{handshake}"),
        help: "Failed TLS handshakes with an https:// mirror, by reason (certificate: the mirror's certificate was refused; alert: the mirror refused us; other); each is also a connect error.",
        read: |s, o| {
            per_mirror(s, o, |m, n, o| {
                for why in crate::replay::tls::HandshakeFailure::ALL {
                    p(
                        o,
                        &[(MIRROR, n), (REASON, why.as_str())],
                        m.tls_failures[why as usize],
                    );
                }
            })
        },
    },
    MetricDef {
        name: "mirror.requests.errors",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies that failed at the mirror, by error type.",
        read: |s, o| {
            per_mirror(s, o, |m, n, o| {
                for (k, t) in ERROR_KINDS {
                    p(o, &[(MIRROR, n), (ERROR_TYPE, t)], m.error(k));
                }
            })
        },
    },
    MetricDef {
        name: "mirror.requests.timeouts",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies without a complete response within the per-request timeout.",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.timeouts)),
    },
    MetricDef {
        name: "mirror.requests.dropped",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Sampled copies not sent, by reason.",
        read: |s, o| {
            per_mirror(s, o, |m, n, o| {
                for (r, t) in DROP_REASONS {
                    p(o, &[(MIRROR, n), (REASON, t)], m.drop_count(r));
                }
            })
        },
    },
    MetricDef {
        name: "mirror.requests.retries",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Copies re-sent once on a fresh connection after a kept-alive one was found closed.",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.retries)),
    },
    MetricDef {
        name: "mirror.connections.opened",
        kind: Kind::Counter,
        unit: Unit::Count("{connection}"),
        help: "Connections opened to a mirror.",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.connects)),
    },
    MetricDef {
        name: "mirror.queue.depth",
        kind: Kind::Gauge,
        unit: REQUEST,
        help: "Copies sampled for a mirror and not yet resolved (queued or in flight).",
        read: |s, o| per_mirror(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.in_flight)),
    },
    MetricDef {
        name: "mirror.completeness",
        kind: Kind::Gauge,
        unit: Unit::Ratio,
        help: "Requests delivered to the best 100% mirror over requests captured.",
        read: |s, o| {
            if let Some((name, c)) = s.replay.as_ref().and_then(|r| r.completeness_of()) {
                o.push(Point {
                    attrs: vec![(MIRROR, name.to_string())],
                    value: Value::F64(c),
                });
            }
        },
    },
    // ---- primary vs mirror comparison (`--compare`) ----
    MetricDef {
        name: "mirror.compare.requests",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Mirrored requests compared with the primary's response.",
        read: |s, o| per_compare(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.compared)),
    },
    MetricDef {
        name: "mirror.compare.mismatches",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Compared requests whose mirror answer differed from the primary's, by kind.",
        read: |s, o| {
            per_compare(s, o, |m, n, o| {
                p(o, &[(MIRROR, n), (KIND, "status_class")], m.status_class);
                p(o, &[(MIRROR, n), (KIND, "status_code")], m.status_code);
                p(o, &[(MIRROR, n), (KIND, "no_response")], m.no_response);
                p(o, &[(MIRROR, n), (KIND, "header")], m.header);
                p(o, &[(MIRROR, n), (KIND, "body")], m.body);
            })
        },
    },
    MetricDef {
        name: "mirror.compare.body_truncated",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Bodies compared on their first --compare-body-limit bytes only.",
        read: |s, o| per_compare(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.body_truncated)),
    },
    MetricDef {
        name: "mirror.compare.content_skipped",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Requests with equal statuses whose headers and body were not compared (a capture over the memory budget, or the comparison queue full).",
        read: |s, o| per_compare(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.content_skipped)),
    },
    MetricDef {
        name: "mirror.compare.captures_dropped",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Captured responses or verdicts the comparison could not keep, by reason (over_budget: capture memory budget; queue_full: comparison thread queue).",
        read: |s, o| {
            if let Some(c) = &s.compare {
                p(o, &[(REASON, "over_budget")], c.captures_over_budget);
                p(o, &[(REASON, "queue_full")], c.content_queue_full);
            }
        },
    },
    MetricDef {
        name: "mirror.compare.diff_log.lines",
        kind: Kind::Counter,
        unit: Unit::Count("{line}"),
        help: "--diff-log lines written.",
        read: |s, o| {
            if let Some(c) = &s.compare {
                p(o, &[], c.diff_log.lines);
            }
        },
    },
    MetricDef {
        name: "mirror.compare.diff_log.suppressed",
        kind: Kind::Counter,
        unit: Unit::Count("{line}"),
        help: "--diff-log lines not written because of --diff-log-rate (diff_log_suppressed).",
        read: |s, o| {
            if let Some(c) = &s.compare {
                p(o, &[], c.diff_log.suppressed);
            }
        },
    },
    MetricDef {
        name: "mirror.compare.diff_log.errors",
        kind: Kind::Counter,
        unit: Unit::Count("{line}"),
        help: "--diff-log lines that could not be written.",
        read: |s, o| {
            if let Some(c) = &s.compare {
                p(o, &[], c.diff_log.errors);
            }
        },
    },
    MetricDef {
        name: "mirror.compare.noise_only",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Compared requests whose header and body differences were all noise learned from the baseline mirror (role=baseline): not counted as mismatches.",
        read: |s, o| per_compare(s, o, |m, n, o| p(o, &[(MIRROR, n)], m.noise_only)),
    },
    MetricDef {
        name: "mirror.compare.baseline_waits_expired",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Candidate verdicts that stopped waiting for the baseline's answer to the same request and were judged with the noise learned so far.",
        read: |s, o| {
            if s.compare.as_ref().is_some_and(|c| c.noise.is_some()) {
                per_compare(s, o, |m, n, o| {
                    p(o, &[(MIRROR, n)], m.baseline_wait_expired)
                })
            }
        },
    },
    MetricDef {
        name: "mirror.compare.endpoint.requests",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "With a baseline mirror: compared requests per mirror and endpoint (method and path template), by result (real: a real difference; noise_only: only noise differed; same).",
        read: |s, o| {
            if let Some(c) = &s.compare {
                for ((endpoint, mirror), k) in &c.endpoints {
                    let name = c.mirrors.get(*mirror).map_or("", |m| m.name.as_str());
                    let (method, route) = endpoint.split_once(' ').unwrap_or(("", endpoint));
                    let method = crate::telemetry::semconv::normalize_method(method);
                    let at = |result| {
                        [
                            (MIRROR, name),
                            (METHOD, method),
                            (ROUTE, route),
                            (RESULT, result),
                        ]
                    };
                    p(o, &at("real"), k.real);
                    p(o, &at("noise_only"), k.noise_only);
                    p(o, &at("same"), k.compared - k.real - k.noise_only);
                }
            }
        },
    },
    MetricDef {
        name: "mirror.compare.noise.fields",
        kind: Kind::Gauge,
        unit: Unit::Count("{field}"),
        help: "Noise fields (headers, JSON paths, whole bodies) learned from the baseline mirror per endpoint.",
        read: |s, o| {
            if let Some(n) = s.compare.as_ref().and_then(|c| c.noise.as_ref()) {
                for e in &n.endpoints {
                    let (method, route) = e.endpoint.split_once(' ').unwrap_or(("", &e.endpoint));
                    let method = crate::telemetry::semconv::normalize_method(method);
                    p(
                        o,
                        &[(METHOD, method), (ROUTE, route)],
                        e.fields.len() as u64,
                    );
                }
            }
        },
    },
    MetricDef {
        name: "mirror.compare.noise.not_learned",
        kind: Kind::Counter,
        unit: Unit::Count("{field}"),
        help: "What the noise table had no room for, by reason (endpoints_full: primary/baseline pairs of endpoints over the table's bound; fields_full: fields of an endpoint over its bound).",
        read: |s, o| {
            if let Some(n) = s.compare.as_ref().and_then(|c| c.noise.as_ref()) {
                p(o, &[(REASON, "endpoints_full")], n.losses.endpoints_full);
                p(o, &[(REASON, "fields_full")], n.losses.fields_full);
            }
        },
    },
    MetricDef {
        name: "mirror.compare.unpaired",
        kind: Kind::Counter,
        unit: REQUEST,
        help: "Comparisons that could not be made, by reason (primary_missing: the primary's response never came; evicted: table full; primary_only: the primary answered but no outcome came for a copy that was queued (copies not sampled or dropped unsent are not waited for); request_evicted: request forgotten unanswered; response_unknown: response to an unknown request).",
        read: |s, o| {
            if let Some(c) = &s.compare {
                for m in &c.mirrors {
                    p(
                        o,
                        &[(MIRROR, &m.name), (REASON, "primary_missing")],
                        m.primary_missing,
                    );
                }
                p(o, &[(REASON, "evicted")], c.evicted);
                p(o, &[(REASON, "primary_only")], c.primary_unmatched);
                p(
                    o,
                    &[(REASON, "request_evicted")],
                    c.primary_requests_evicted,
                );
                p(
                    o,
                    &[(REASON, "response_unknown")],
                    c.primary_responses_unknown,
                );
            }
        },
    },
    // ---- the agent's own OTLP export ----
    MetricDef {
        name: "mirror.otlp.exports",
        kind: Kind::Counter,
        unit: Unit::Count("{export}"),
        help: "OTLP metric export attempts by outcome (ok, failed: the collector refused or was unreachable).",
        read: |s, o| {
            if let Some(e) = &s.otlp {
                p(
                    o,
                    &[("signal", "metrics"), ("outcome", "ok")],
                    e.metric_exports_ok,
                );
                p(
                    o,
                    &[("signal", "metrics"), ("outcome", "failed")],
                    e.metric_exports_failed,
                );
            }
        },
    },
    MetricDef {
        name: "mirror.otlp.spans",
        kind: Kind::Counter,
        unit: Unit::Count("{span}"),
        help: "Mirror spans by outcome: started, exported, failed (batch refused); started minus both is pending or dropped by the SDK's queue.",
        read: |s, o| {
            if let Some(e) = &s.otlp {
                p(o, &[("outcome", "started")], e.spans_started);
                p(o, &[("outcome", "exported")], e.spans_exported);
                p(o, &[("outcome", "failed")], e.spans_failed);
            }
        },
    },
];

#[cfg(test)]
mod tests;

/// Snapshots with every stage present and non-trivial values (tests of the exporters).
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn full() -> super::Snapshots {
        super::tests::all()
    }
}
