//! TLS plaintext as flow segments (issue 14 B): the records the TLS programs write
//! ([`TlsChunk`], decoded by `super::ebpf::tls`) become ordinary segments of their TCP connection's flow, so
//! reassembly, framing, sampling, replay, compare, recording and the loss ledger are the TC
//! path's.
//!
//! Owns one small state per TLS connection `(process, SSL*)`: its endpoints (from the record,
//! where the kernel knew the socket from its establishment, else resolved once by the caller's
//! resolver from the process and fd: connections established before the programs were
//! attached), whether this side is the server (its local port is a captured one; the client
//! side of the same connection, e.g. curl on the same node, also uses libssl and is counted and
//! left out), and each direction's own byte sequence: `READ` records are the client's bytes,
//! `WRITE` records the server's. Bytes the ring lost (a chunk that never came, a call's tail,
//! user memory that could not be read) advance the sequence without payload, so reassembly sees
//! a hole, counts it, and the framer resyncs.
//!
//! Every connection starts with a SYN each way, so the pipeline treats it as a new connection,
//! replacing a flow the classifiers began on the same addresses before the port was known to
//! carry TLS. A connection seen from its first TLS call (the record's `FIRST` flag) starts at
//! its first request; one picked up later (open before the agent started) starts where the
//! server next reads, normally a request line (inside a body, that partial request is counted
//! as malformed and the framer resyncs). The kernel's close record gives the flow a FIN each
//! way.
//! Connections are bounded ([`MAX_CONNECTIONS`]); one evicted is resolved again on its next
//! chunk and starts a new sequence (counted). Connections resolved here are sampled with the
//! classifiers' flow hash (the kernel samples those it knows).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mirror_common::tls::{MAX_CHUNK, header_flags, kind};
use mirror_common::{TlsRecordHeader, family, flow_hash, sampled};

use super::{SegmentDirection, SegmentRef, TcpFlags};

/// One record: a chunk of what one SSL call read or wrote, or a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsChunk<'a> {
    pub header: TlsRecordHeader,
    pub data: &'a [u8],
}

impl TlsChunk<'_> {
    /// Plaintext the process read (for a server: requests).
    pub fn is_read(&self) -> bool {
        self.header.kind == kind::READ
    }
}

/// TLS connections followed at once.
pub const MAX_CONNECTIONS: usize = 65536;

/// Processes whose plaintext is counted one by one (the rest are summed under pid 0).
pub const MAX_PROCESSES: usize = 1024;

/// What one process's TLS connections (server side) gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStats {
    pub connections: u64,
    /// Plaintext bytes that became segments.
    pub bytes: u64,
}

/// The first sequence number of each direction's data (the SYN of a connection seen from its
/// start takes the one before).
const ISN: u32 = 1;

/// Where each chunk went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsStreamStats {
    pub chunks: u64,
    /// Plaintext bytes of chunks, whatever became of them.
    pub bytes: u64,
    /// Bytes that became segment payload.
    pub segment_bytes: u64,
    /// Chunks and bytes of the client side of a connection (the process's local port is not a
    /// captured one).
    pub client_side_chunks: u64,
    pub client_side_bytes: u64,
    /// Chunks and bytes whose connection could not be found (no fd: a call served from
    /// OpenSSL's buffer on a connection whose fd was never seen).
    pub unresolved_chunks: u64,
    pub unresolved_bytes: u64,
    /// Chunks and bytes of connections that are not a captured port's: neither noted by the
    /// kernel when established nor open when the agent started (another service's outbound
    /// HTTPS, a listener on another port).
    pub other_chunks: u64,
    pub other_bytes: u64,
    /// Chunks and bytes of connections resolved here (established before the programs were
    /// attached) outside the sampled share of flows. (The kernel leaves out those it knows.)
    pub sampled_out_chunks: u64,
    pub sampled_out_bytes: u64,
    /// Bytes the ring lost, passed on as holes in the sequence.
    pub lost_bytes: u64,
    pub connections: u64,
    /// Connections seen from their first TLS call (their segments start with a SYN).
    pub connections_from_start: u64,
    /// Connections whose endpoints came from procfs (established before the programs were
    /// attached, or the kernel's socket table was full).
    pub connections_resolved_procfs: u64,
    pub connections_evicted: u64,
    /// Connections ended by the kernel's close record (their flows get a FIN each way).
    pub connections_closed: u64,
    /// Connections ended when their process began a new connection on the same `SSL*` (it
    /// freed the old one; its close record, which comes when TCP closes, may come later).
    /// Their flows get a FIN each way too.
    pub connections_replaced: u64,
    /// Close records of connections not followed, or already ended (replaced, evicted).
    pub closes_unmatched: u64,
}

impl TlsStreamStats {
    /// Copied bytes that went nowhere: every plaintext byte is in one of the outcomes.
    pub fn balanced(&self) -> bool {
        self.bytes
            == self.segment_bytes
                + self.client_side_bytes
                + self.unresolved_bytes
                + self.other_bytes
                + self.sampled_out_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server {
        client: SocketAddr,
        server: SocketAddr,
    },
    Client,
    SampledOut,
}

#[derive(Debug)]
struct Conn {
    fd: i32,
    role: Role,
    /// Next sequence number, [client's bytes, server's bytes].
    next: [u32; 2],
    /// Bytes of the current call not seen yet, per direction.
    call_left: [u32; 2],
    /// Where the next chunk should start in the kernel's count of each direction's plaintext
    /// (`stream_offset`), once known: a chunk further on means calls the ring lost wholly.
    stream_next: [Option<u32>; 2],
}

/// The TLS connections of every traced process (see the module doc).
#[derive(Debug)]
pub struct TlsStreams {
    ports: Vec<u16>,
    /// `(hash seed, basis points)` when only a share of flows is captured.
    sample: Option<(u64, u64)>,
    conns: HashMap<(u32, u64), Conn>,
    /// Server-side connections by (client, server), for the kernel's close records.
    by_endpoints: HashMap<(SocketAddr, SocketAddr), (u32, u64)>,
    /// The processes whose plaintext is read (server side), by pid.
    processes: HashMap<u32, ProcessStats>,
    stats: TlsStreamStats,
}

impl TlsStreams {
    /// `ports`: the captured (server) ports; `sample`: the classifiers' hash seed and basis
    /// points when they sample flows (applied to connections resolved here).
    pub fn new(ports: Vec<u16>, sample: Option<(u64, u64)>) -> Self {
        Self {
            ports,
            sample,
            conns: HashMap::new(),
            by_endpoints: HashMap::new(),
            processes: HashMap::new(),
            stats: TlsStreamStats::default(),
        }
    }

    pub fn stats(&self) -> TlsStreamStats {
        self.stats
    }

    /// The processes whose plaintext is read, by pid (pid 0: those beyond
    /// [`MAX_PROCESSES`]).
    pub fn processes(&self) -> &HashMap<u32, ProcessStats> {
        &self.processes
    }

    fn process(&mut self, pid: u32) -> &mut ProcessStats {
        let pid = if self.processes.len() >= MAX_PROCESSES && !self.processes.contains_key(&pid) {
            0
        } else {
            pid
        };
        self.processes.entry(pid).or_default()
    }

    /// One record, stamped `ts_ns` (wall clock): its segments, if any, go to `out`. `resolve`
    /// gives a process's socket fd as (local, remote) endpoints (used for connections the
    /// kernel has no endpoints for).
    pub fn on_chunk(
        &mut self,
        chunk: &TlsChunk<'_>,
        ts_ns: u64,
        resolve: &mut impl FnMut(u32, i32) -> Option<(SocketAddr, SocketAddr)>,
        out: &mut impl FnMut(SegmentRef<'_>),
    ) {
        let h = chunk.header;
        if h.kind == kind::CLOSE {
            self.close(&h, ts_ns, out);
            return;
        }
        let len = chunk.data.len() as u64;
        self.stats.chunks += 1;
        self.stats.bytes += len;
        let key = (h.pid, h.ssl);
        let kernel_endpoints = header_endpoints(&h);
        let first = h.flags & header_flags::FIRST != 0 && h.chunk_offset == 0;
        let known = self.conns.get(&key).is_some_and(|c| {
            !first
                && match (kernel_endpoints, c.role) {
                    (Some((local, remote)), Role::Server { client, server }) => {
                        (server, client) == (local, remote)
                    }
                    (Some(_), _) => false,
                    (None, _) => h.fd < 0 || c.fd == h.fd,
                }
        });
        if !known {
            let endpoints = match kernel_endpoints {
                Some(e) => e,
                None if h.fd >= 0 => match resolve(h.pid, h.fd) {
                    Some((l, r)) => {
                        self.stats.connections_resolved_procfs += 1;
                        (unmapped(l), unmapped(r))
                    }
                    None => {
                        self.stats.other_chunks += 1;
                        self.stats.other_bytes += len;
                        return;
                    }
                },
                None => {
                    self.stats.unresolved_chunks += 1;
                    self.stats.unresolved_bytes += len;
                    return;
                }
            };
            let (local, remote) = endpoints;
            let role = if !self.ports.contains(&local.port()) {
                Role::Client
            } else if kernel_endpoints.is_none() && !self.sampled(remote, local) {
                Role::SampledOut
            } else {
                Role::Server {
                    client: remote,
                    server: local,
                }
            };
            if self.end(key, ts_ns, out) {
                // The process reuses the SSL* of a connection whose close has not come yet
                // (it comes when TCP closes, after the server freed the SSL): that one is over.
                self.stats.connections_replaced += 1;
            }
            if self.conns.len() >= MAX_CONNECTIONS
                && let Some(&victim) = self.conns.keys().next()
            {
                self.end(victim, ts_ns, out);
                self.stats.connections_evicted += 1;
            }
            self.stats.connections += 1;
            if let Role::Server { client, server } = role {
                self.process(h.pid).connections += 1;
                self.by_endpoints.insert((client, server), key);
                if first {
                    self.stats.connections_from_start += 1;
                }
                // A SYN each way, so the pipeline frames it as a new connection and replaces a
                // flow the classifiers began on the same addresses with its ciphertext (before
                // the port was known to carry TLS). Also for a connection picked up after its
                // start: its TLS reads begin where the server next reads, normally a request
                // line; one picked up inside a body has that partial request counted as
                // malformed, and the framer resyncs at the next request line.
                for (src, dst, direction, flags) in [
                    (client, server, SegmentDirection::FromClient, TcpFlags::SYN),
                    (
                        server,
                        client,
                        SegmentDirection::FromServer,
                        TcpFlags::SYN | TcpFlags::ACK,
                    ),
                ] {
                    out(SegmentRef {
                        src,
                        dst,
                        seq: ISN.wrapping_sub(1),
                        ack: 0,
                        flags: TcpFlags(flags),
                        direction: Some(direction),
                        ts_ns,
                        payload: &[],
                    });
                }
            }
            self.conns.insert(
                key,
                Conn {
                    fd: h.fd,
                    role,
                    next: [ISN; 2],
                    call_left: [0; 2],
                    // The kernel counts a socket it noted from its establishment: its plaintext
                    // starts at 0 (a first call the ring lost is a hole at the start).
                    stream_next: if h.flags & header_flags::STREAM_OFFSET != 0 {
                        [Some(0); 2]
                    } else {
                        [None; 2]
                    },
                },
            );
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        let (client, server) = match conn.role {
            Role::Server { client, server } => (client, server),
            Role::Client => {
                self.stats.client_side_chunks += 1;
                self.stats.client_side_bytes += len;
                return;
            }
            Role::SampledOut => {
                self.stats.sampled_out_chunks += 1;
                self.stats.sampled_out_bytes += len;
                return;
            }
        };
        if h.fd >= 0 {
            conn.fd = h.fd;
        }
        let dir = usize::from(h.kind != kind::READ);
        // Where this chunk sits in its call, and what of the call the ring lost before it.
        let mut lost = 0u32;
        if h.chunk_offset == 0 {
            // A new call: the previous one's unseen tail is lost.
            lost += conn.call_left[dir];
            conn.call_left[dir] = h.call_len;
        } else {
            let seen = h.call_len.saturating_sub(conn.call_left[dir]);
            lost += h.chunk_offset.saturating_sub(seen);
            conn.call_left[dir] = h.call_len.saturating_sub(h.chunk_offset);
        }
        // The chunk's own size in the call; what of it was not copied is lost too.
        let size = conn.call_left[dir].min(MAX_CHUNK as u32);
        conn.call_left[dir] -= size;
        if h.flags & header_flags::STREAM_OFFSET != 0 {
            // The kernel's count also covers calls of which no chunk came (the ring was full
            // at their first): without it their neighbours would be spliced together.
            let at = h.stream_offset.wrapping_add(h.chunk_offset);
            if let Some(expected) = conn.stream_next[dir] {
                let ahead = at.wrapping_sub(expected);
                // Behind (never written by the kernel): nothing known lost.
                lost = if ahead < 1 << 31 { ahead } else { 0 };
            }
            conn.stream_next[dir] = Some(at.wrapping_add(size));
        }
        let payload = &chunk.data[..chunk.data.len().min(size as usize)];
        let tail_lost = size - payload.len() as u32;
        conn.next[dir] = conn.next[dir].wrapping_add(lost);
        self.stats.lost_bytes += u64::from(lost) + u64::from(tail_lost);
        if !payload.is_empty() {
            let (src, dst, direction) = if dir == 0 {
                (client, server, SegmentDirection::FromClient)
            } else {
                (server, client, SegmentDirection::FromServer)
            };
            out(SegmentRef {
                src,
                dst,
                seq: conn.next[dir],
                ack: conn.next[1 - dir],
                flags: TcpFlags(TcpFlags::ACK | TcpFlags::PSH),
                direction: Some(direction),
                ts_ns,
                payload,
            });
        }
        conn.next[dir] = conn.next[dir]
            .wrapping_add(payload.len() as u32)
            .wrapping_add(tail_lost);
        self.stats.segment_bytes += payload.len() as u64;
        self.process(h.pid).bytes += payload.len() as u64;
        // A record carrying more than its call has left (a malformed record; the kernel never
        // writes one): the excess is no segment's, counted as unresolved so the ledger balances.
        self.stats.unresolved_bytes += (chunk.data.len() - payload.len()) as u64;
    }

    /// The kernel's close record: a FIN each way for the connection's flow, and it is
    /// forgotten.
    fn close(&mut self, h: &TlsRecordHeader, ts_ns: u64, out: &mut impl FnMut(SegmentRef<'_>)) {
        let key = header_endpoints(h)
            .and_then(|(local, remote)| self.by_endpoints.get(&(remote, local)).copied());
        match key {
            Some(key) if self.end(key, ts_ns, out) => self.stats.connections_closed += 1,
            _ => self.stats.closes_unmatched += 1,
        }
    }

    /// Forgets the connection `key`; a server-side one's flow gets a FIN each way. Whether
    /// there was one.
    fn end(&mut self, key: (u32, u64), ts_ns: u64, out: &mut impl FnMut(SegmentRef<'_>)) -> bool {
        let Some(conn) = self.conns.remove(&key) else {
            return false;
        };
        let Role::Server { client, server } = conn.role else {
            return true;
        };
        if self.by_endpoints.get(&(client, server)) == Some(&key) {
            self.by_endpoints.remove(&(client, server));
        }
        for (dir, src, dst, direction) in [
            (0, client, server, SegmentDirection::FromClient),
            (1, server, client, SegmentDirection::FromServer),
        ] {
            out(SegmentRef {
                src,
                dst,
                seq: conn.next[dir].wrapping_add(conn.call_left[dir]),
                ack: conn.next[1 - dir],
                flags: TcpFlags(TcpFlags::FIN | TcpFlags::ACK),
                direction: Some(direction),
                ts_ns,
                payload: &[],
            });
        }
        true
    }

    fn sampled(&self, client: SocketAddr, server: SocketAddr) -> bool {
        let Some((seed, basis_points)) = self.sample else {
            return true;
        };
        let (c, s) = (addr_bytes(client.ip()), addr_bytes(server.ip()));
        sampled(
            flow_hash(seed, &c, client.port(), &s, server.port()),
            basis_points,
        )
    }
}

/// The record's (local, remote) endpoints when the kernel set them.
pub fn header_endpoints(h: &TlsRecordHeader) -> Option<(SocketAddr, SocketAddr)> {
    if h.flags & header_flags::ENDPOINTS == 0 {
        return None;
    }
    let ip = |a: &[u8; 16]| -> Option<IpAddr> {
        match h.family {
            family::IPV4 => Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()),
            family::IPV6 => Some(Ipv6Addr::from(*a).into()),
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(&h.local_addr)?, h.local_port),
        SocketAddr::new(ip(&h.remote_addr)?, h.remote_port),
    ))
}

/// An IPv4 peer of an IPv6 socket as IPv4 (the classifiers see its packets so).
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// An address as the kernel programs hash it: IPv4 in the first 4 bytes (an IPv4-mapped IPv6
/// address as IPv4, as the classifiers see its packets).
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => b[..4].copy_from_slice(&v4.octets()),
            None => b = v6.octets(),
        },
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_common::TlsRecordHeader;

    const SERVER: &str = "10.0.0.2:443";
    const CLIENT: &str = "10.0.0.1:50000";

    fn chunk<'a>(
        kind: u8,
        ssl: u64,
        fd: i32,
        call_len: u32,
        off: u32,
        data: &'a [u8],
    ) -> TlsChunk<'a> {
        TlsChunk {
            header: TlsRecordHeader {
                ts_ns: 0,
                ssl,
                pid: 7,
                tid: 7,
                fd,
                call_len,
                chunk_offset: off,
                captured_len: data.len() as u32,
                stream_offset: 0,
                local_addr: [0; 16],
                remote_addr: [0; 16],
                local_port: 0,
                remote_port: 0,
                family: 0,
                kind,
                flags: 0,
                _pad: 0,
                _pad2: 0,
            },
            data,
        }
    }

    /// Ends the pipeline: its ledger must balance; the requests it emitted, and its stats.
    fn finish(
        p: &mut crate::pipeline::Pipeline,
        out: &mut Vec<crate::pipeline::PipelineEvent>,
    ) -> (Vec<Vec<u8>>, crate::pipeline::PipelineStats) {
        p.finish(out);
        let st = p.stats();
        st.check_balance_at_end()
            .unwrap_or_else(|e| panic!("{e}\n{st}"));
        let requests = out
            .iter()
            .filter_map(|e| match e {
                crate::pipeline::PipelineEvent::Request(r) => Some(r.request.raw.to_vec()),
                _ => None,
            })
            .collect();
        (requests, st)
    }

    /// Segments seen: direction, sequence number, payload.
    type Seen = Vec<(SegmentDirection, u32, Vec<u8>)>;

    /// Runs chunks through, resolving fd 4 as the server's socket and fd 9 as a client's.
    fn run(chunks: &[TlsChunk<'_>]) -> (Seen, TlsStreamStats, u32) {
        let mut s = TlsStreams::new(vec![443], None);
        let mut resolved = 0;
        let mut resolve = |_pid: u32, fd: i32| {
            resolved += 1;
            match fd {
                4 => Some((SERVER.parse().unwrap(), CLIENT.parse().unwrap())),
                9 => Some((CLIENT.parse().unwrap(), SERVER.parse().unwrap())),
                _ => None,
            }
        };
        let mut segs = Vec::new();
        for c in chunks {
            s.on_chunk(c, 1, &mut resolve, &mut |seg: SegmentRef<'_>| {
                let from_client = seg.direction == Some(SegmentDirection::FromClient);
                assert_eq!(
                    (seg.src.to_string(), seg.dst.to_string()),
                    if from_client {
                        (CLIENT.to_string(), SERVER.to_string())
                    } else {
                        (SERVER.to_string(), CLIENT.to_string())
                    }
                );
                if seg.flags.syn() {
                    // A new connection's opening: empty, just before its first byte.
                    assert!(seg.payload.is_empty());
                    assert_eq!(seg.seq, ISN - 1);
                } else {
                    segs.push((seg.direction.unwrap(), seg.seq, seg.payload.to_vec()));
                }
            });
        }
        (segs, s.stats(), resolved)
    }

    #[test]
    fn reads_and_writes_become_the_two_directions_of_the_servers_flow() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (segs, st, resolved) = run(&[
            chunk(kind::READ, 1, 4, req.len() as u32, 0, req),
            chunk(kind::WRITE, 1, 4, resp.len() as u32, 0, resp),
            // A call served from OpenSSL's buffer: no fd of its own, the connection is known.
            chunk(kind::READ, 1, -1, 3, 0, b"GET"),
        ]);
        assert_eq!(
            segs,
            [
                (SegmentDirection::FromClient, ISN, req.to_vec()),
                (SegmentDirection::FromServer, ISN, resp.to_vec()),
                (
                    SegmentDirection::FromClient,
                    ISN + req.len() as u32,
                    b"GET".to_vec()
                ),
            ]
        );
        assert_eq!(resolved, 1, "resolved once");
        assert_eq!(
            (st.chunks, st.segment_bytes, st.lost_bytes),
            (3, (req.len() + resp.len() + 3) as u64, 0)
        );
    }

    #[test]
    fn lost_chunks_and_tails_become_holes_and_the_client_side_is_left_out() {
        let a = vec![b'a'; MAX_CHUNK];
        let c = vec![b'c'; 100];
        let call = (2 * MAX_CHUNK + 100) as u32;
        let (segs, st, _) = run(&[
            // Chunk 1 of 3 lost: the third lands after a hole of MAX_CHUNK.
            chunk(kind::WRITE, 1, 4, call, 0, &a),
            chunk(kind::WRITE, 1, 4, call, 2 * MAX_CHUNK as u32, &c),
            // A call whose second chunk never came, then the next call.
            chunk(kind::READ, 1, 4, MAX_CHUNK as u32 + 10, 0, &a),
            chunk(kind::READ, 1, 4, 2, 0, b"ok"),
            // A chunk whose memory could not be read: all of it is a hole.
            chunk(kind::READ, 1, 4, 5, 0, b""),
            chunk(kind::READ, 1, 4, 1, 0, b"z"),
            // The client side of a connection (its local port is not a captured one).
            chunk(kind::WRITE, 2, 9, 4, 0, b"GET "),
            // No fd and unknown connection: unresolved.
            chunk(kind::READ, 3, -1, 4, 0, b"GET "),
            // An fd that is no captured port's connection (another service's HTTPS).
            chunk(kind::WRITE, 5, 12, 3, 0, b"GET"),
        ]);
        let seqs: Vec<(SegmentDirection, u32, usize)> =
            segs.iter().map(|(d, s, p)| (*d, *s, p.len())).collect();
        let m = MAX_CHUNK as u32;
        assert_eq!(
            seqs,
            [
                (SegmentDirection::FromServer, ISN, MAX_CHUNK),
                (SegmentDirection::FromServer, ISN + 2 * m, 100),
                (SegmentDirection::FromClient, ISN, MAX_CHUNK),
                (SegmentDirection::FromClient, ISN + m + 10, 2),
                (SegmentDirection::FromClient, ISN + m + 10 + 2 + 5, 1),
            ]
        );
        assert_eq!(st.lost_bytes, u64::from(m) + 10 + 5);
        assert_eq!((st.client_side_chunks, st.client_side_bytes), (1, 4));
        assert_eq!((st.unresolved_chunks, st.unresolved_bytes), (1, 4));
        assert_eq!((st.other_chunks, st.other_bytes), (1, 3));
        assert!(st.balanced(), "every copied byte is somewhere: {st:?}");
    }

    /// The segments through the pipeline: a keep-alive connection's two requests, the first
    /// split over two SSL reads, each paired with its response; the ledger balances.
    #[test]
    fn the_pipeline_frames_the_plaintext_as_any_flow() {
        use crate::pipeline::{Pipeline, PipelineConfig};
        let r1a = b"POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhe";
        let r1b = b"llo";
        let r2 = b"GET /b HTTP/1.1\r\nHost: s\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let chunks = [
            chunk(kind::READ, 1, 4, r1a.len() as u32, 0, r1a),
            chunk(kind::READ, 1, 4, r1b.len() as u32, 0, r1b),
            chunk(kind::WRITE, 1, 4, ok.len() as u32, 0, ok),
            chunk(kind::READ, 1, 4, r2.len() as u32, 0, r2),
            chunk(kind::WRITE, 1, 4, ok.len() as u32, 0, ok),
        ];
        let mut streams = TlsStreams::new(vec![443], None);
        let mut p = Pipeline::new(PipelineConfig {
            ports: vec![443],
            ..PipelineConfig::default()
        });
        let mut out = Vec::new();
        let mut resolve = |_: u32, _: i32| Some((SERVER.parse().unwrap(), CLIENT.parse().unwrap()));
        for c in &chunks {
            streams.on_chunk(c, 1_000, &mut resolve, &mut |seg| {
                p.on_segment_ref(seg, &mut out)
            });
        }
        let (requests, st) = finish(&mut p, &mut out);
        let first = [&r1a[..], &r1b[..]].concat();
        assert_eq!(requests, [first, r2.to_vec()], "{st}");
        assert_eq!(st.responses, 2, "{st}");
    }

    /// A record with the endpoints the kernel knew (server 10.0.0.2:443, client
    /// 10.0.0.1:50000).
    fn known<'a>(kind: u8, flags: u8, data: &'a [u8]) -> TlsChunk<'a> {
        let mut c = chunk(kind, 1, 4, data.len() as u32, 0, data);
        c.header.local_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        c.header.remote_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        c.header.local_port = 443;
        c.header.remote_port = 50000;
        c.header.family = family::IPV4;
        c.header.flags = header_flags::ENDPOINTS | flags;
        c
    }

    /// A connection seen from its first call starts with SYNs, which replace the flow the
    /// classifiers began with its ciphertext before the port was known to carry TLS; the
    /// kernel's close record ends it; the pipeline's ledger balances.
    #[test]
    fn a_connection_from_its_start_replaces_the_ciphertext_flow_and_closes() {
        use crate::capture::Segment;
        use crate::pipeline::{Pipeline, PipelineConfig};
        let req = b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut p = Pipeline::new(PipelineConfig {
            ports: vec![443],
            ..PipelineConfig::default()
        });
        let mut out = Vec::new();
        let (client, server): (SocketAddr, SocketAddr) =
            (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        // What the classifiers saw first: the handshake's SYN and a ClientHello.
        for (src, dst, seq, flags, payload) in [
            (client, server, 7000u32, TcpFlags::SYN, &[][..]),
            (server, client, 9000, TcpFlags::SYN | TcpFlags::ACK, &[][..]),
            (
                client,
                server,
                7001,
                TcpFlags::ACK,
                &[0x16, 3, 1, 0, 40, 1, 0][..],
            ),
        ] {
            let direction = Some(if src == client {
                SegmentDirection::FromClient
            } else {
                SegmentDirection::FromServer
            });
            p.on_segment(
                Segment {
                    src,
                    dst,
                    seq,
                    ack: 0,
                    flags: TcpFlags(flags),
                    direction,
                    ts_ns: 1_000,
                    payload: bytes::Bytes::copy_from_slice(payload),
                },
                &mut out,
            );
        }
        let mut streams = TlsStreams::new(vec![443], None);
        let mut resolve = |_: u32, _: i32| -> Option<(SocketAddr, SocketAddr)> {
            panic!("the kernel gave the endpoints")
        };
        for c in [
            known(kind::READ, header_flags::FIRST, req),
            known(kind::WRITE, 0, ok),
            known(kind::CLOSE, 0, b""),
        ] {
            streams.on_chunk(&c, 2_000, &mut resolve, &mut |seg| {
                p.on_segment_ref(seg, &mut out)
            });
        }
        let ts = streams.stats();
        assert_eq!(
            (
                ts.connections,
                ts.connections_from_start,
                ts.connections_closed
            ),
            (1, 1, 1),
            "{ts:?}"
        );
        assert!(ts.balanced(), "{ts:?}");
        let st = p.stats();
        assert_eq!(st.flows_superseded, 1, "{st}");
        assert_eq!(
            st.flows_closed, 1,
            "closed by the FINs, not at the end: {st}"
        );
        let (requests, st) = finish(&mut p, &mut out);
        assert_eq!(requests, [req.to_vec()], "{st}");
        assert_eq!(st.responses, 1, "{st}");
    }

    /// A call the ring lost wholly (full at its first chunk) leaves no record; the kernel's
    /// count of each direction's bytes (`stream_offset`) shows the jump, so the calls around
    /// it are not spliced: a body lost between its head and the next request becomes a hole,
    /// that request is dropped (counted), and the next one is framed whole. Also a lost first
    /// call: a hole at the start.
    #[test]
    fn a_call_lost_wholly_is_a_hole_not_a_splice() {
        use crate::pipeline::{Pipeline, PipelineConfig};
        let head = b"POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 10\r\n\r\n";
        let body = b"0123456789";
        let next = b"GET /c HTTP/1.1\r\nHost: s\r\n\r\n";
        let at = |kind: u8, flags: u8, data: &'static [u8], offset: u32| {
            let mut c = known(kind, header_flags::STREAM_OFFSET | flags, data);
            c.header.stream_offset = offset;
            c
        };
        let mut p = Pipeline::new(PipelineConfig {
            ports: vec![443],
            ..PipelineConfig::default()
        });
        let mut out = Vec::new();
        let mut streams = TlsStreams::new(vec![443], None);
        let mut resolve = |_: u32, _: i32| -> Option<(SocketAddr, SocketAddr)> {
            panic!("the kernel gave the endpoints")
        };
        let mut seqs = Vec::new();
        for c in [
            at(kind::READ, header_flags::FIRST, head, 0),
            // The body's call: lost in the kernel, no record.
            at(kind::READ, 0, next, (head.len() + body.len()) as u32),
        ] {
            streams.on_chunk(&c, 2_000, &mut resolve, &mut |seg| {
                if !seg.payload.is_empty() {
                    seqs.push(seg.seq);
                }
                p.on_segment_ref(seg, &mut out)
            });
        }
        assert_eq!(seqs, [ISN, ISN + (head.len() + body.len()) as u32]);
        let ts = streams.stats();
        assert_eq!(ts.lost_bytes, body.len() as u64, "{ts:?}");
        assert!(ts.balanced(), "{ts:?}");
        let (requests, st) = finish(&mut p, &mut out);
        assert_eq!(
            requests,
            [next.to_vec()],
            "only what the client sent, whole: {st}"
        );

        // The connection's first call lost: its first record starts after a hole.
        let mut streams = TlsStreams::new(vec![443], None);
        let mut seqs = Vec::new();
        streams.on_chunk(&at(kind::READ, 0, next, 7), 1, &mut resolve, &mut |seg| {
            if !seg.payload.is_empty() {
                seqs.push(seg.seq);
            }
        });
        assert_eq!(seqs, [ISN + 7]);
        assert_eq!(streams.stats().lost_bytes, 7);
    }

    /// Connections resolved in userspace are sampled with the classifiers' flow hash.
    /// One connection more than [`MAX_CONNECTIONS`]: one is evicted (its flow ends with a FIN
    /// each way, counted), and its next chunk resolves it again as a new connection (a SYN each
    /// way), which evicts another. Every byte stays in the ledger.
    #[test]
    fn connections_over_the_bound_are_evicted_and_resolved_again() {
        let server: SocketAddr = SERVER.parse().unwrap();
        let client_of = |fd: i32| {
            let i = fd as u32;
            SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1024 + (i >> 16) as u16))
        };
        let mut s = TlsStreams::new(vec![443], None);
        // Resolutions, SYN segments, and the client ends of the flows ended by a FIN.
        #[derive(Default)]
        struct Observed {
            resolved: u64,
            syns: u64,
            fins: Vec<SocketAddr>,
        }
        let mut seen = Observed::default();
        let feed = |s: &mut TlsStreams, fd: i32, seen: &mut Observed| {
            let mut resolved = 0;
            s.on_chunk(
                &chunk(kind::READ, fd as u64, fd, 3, 0, b"GET"),
                1,
                &mut |_, fd| {
                    resolved += 1;
                    Some((server, client_of(fd)))
                },
                &mut |seg: SegmentRef<'_>| {
                    if seg.flags.syn() {
                        seen.syns += 1;
                    } else if seg.flags.fin() && seg.direction == Some(SegmentDirection::FromClient)
                    {
                        seen.fins.push(seg.src);
                    }
                },
            );
            seen.resolved += resolved;
        };
        let n = MAX_CONNECTIONS as i32 + 1;
        for fd in 1..=n {
            feed(&mut s, fd, &mut seen);
        }
        let st = s.stats();
        assert_eq!((st.connections, st.connections_evicted), (n as u64, 1));
        assert_eq!(seen.resolved, n as u64);
        assert_eq!(seen.fins.len(), 1, "the evicted connection's flow ends");
        let evicted = seen.fins[0];
        let fd = (1..=n).find(|fd| client_of(*fd) == evicted).unwrap();
        // The evicted connection's next chunk: resolved again, a new connection.
        feed(&mut s, fd, &mut seen);
        let st = s.stats();
        assert_eq!(seen.resolved, n as u64 + 1);
        assert_eq!((st.connections, st.connections_evicted), (n as u64 + 1, 2));
        assert_eq!(seen.fins.len(), 2);
        assert_ne!(seen.fins[1], evicted, "another connection made room");
        assert_eq!(seen.syns, 2 * (n as u64 + 1));
        assert_eq!(st.segment_bytes, 3 * (n as u64 + 1));
        assert!(st.balanced(), "{st:?}");
    }

    #[test]
    fn connections_resolved_here_are_sampled_as_the_kernel_would() {
        let (client, server): (SocketAddr, SocketAddr) =
            (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
        let h = flow_hash(
            42,
            &addr_bytes(client.ip()),
            client.port(),
            &addr_bytes(server.ip()),
            server.port(),
        );
        let kept = h % 10000;
        for (basis_points, expect_kept) in [(kept + 1, true), (kept, false)] {
            let mut s = TlsStreams::new(vec![443], Some((42, basis_points)));
            let mut n = 0;
            s.on_chunk(
                &chunk(kind::READ, 1, 4, 3, 0, b"GET"),
                1,
                &mut |_, _| Some((server, client)),
                &mut |seg| n += usize::from(!seg.payload.is_empty()),
            );
            assert_eq!(n == 1, expect_kept);
            assert_eq!(s.stats().sampled_out_bytes, if expect_kept { 0 } else { 3 });
            assert!(s.stats().balanced());
        }
        // An IPv4 peer of an IPv6 socket hashes as IPv4.
        assert_eq!(
            addr_bytes("::ffff:10.0.0.1".parse().unwrap()),
            addr_bytes("10.0.0.1".parse().unwrap())
        );
    }
}
