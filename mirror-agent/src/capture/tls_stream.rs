//! TLS plaintext as flow segments (issue 14 B, second stage; not wired to live capture yet):
//! the chunks the TLS uprobes copy ([`super::ebpf::tls::TlsChunk`]) become ordinary segments of
//! their TCP connection's flow, so reassembly, framing, sampling, replay and the loss ledger are
//! the TC path's.
//!
//! Owns one small state per TLS connection `(process, SSL*)`: its endpoints (resolved once, by
//! the caller's resolver, from the process and fd), whether this side is the server (its local
//! port is a captured one; the client side of the same connection, e.g. curl on the same node,
//! also uses libssl and is counted and left out), and each direction's own byte sequence:
//! `READ` chunks are the client's bytes, `WRITE` chunks the server's. Bytes the ring lost (a
//! chunk that never came, a call's tail, user memory that could not be read) advance the
//! sequence without payload, so reassembly sees a hole, counts it, and the framer resyncs.
//!
//! Segments carry no SYN: a connection is seen from its first TLS call after the agent started,
//! which may be in the middle of a request; the HTTP/1 framer resynchronises as it does for a
//! connection picked up mid-stream (a fresh TLS connection's first plaintext is a request line).
//! Connections are bounded ([`MAX_CONNECTIONS`]); one evicted is resolved again on its next
//! chunk and starts a new sequence (counted).

use std::collections::HashMap;
use std::net::SocketAddr;

use mirror_common::tls::{MAX_CHUNK, kind};

use super::ebpf::tls::TlsChunk;
use super::{SegmentDirection, SegmentRef, TcpFlags};

/// TLS connections followed at once.
pub const MAX_CONNECTIONS: usize = 65536;

/// The first sequence number of each direction (any value works: reassembly starts where the
/// first segment of a flow without SYN starts).
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
    /// Chunks and bytes whose connection could not be found (no fd, or the fd no longer a TCP
    /// socket when resolved).
    pub unresolved_chunks: u64,
    pub unresolved_bytes: u64,
    /// Bytes the ring lost, passed on as holes in the sequence.
    pub lost_bytes: u64,
    pub connections: u64,
    pub connections_evicted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server {
        client: SocketAddr,
        server: SocketAddr,
    },
    Client,
}

#[derive(Debug)]
struct Conn {
    fd: i32,
    role: Role,
    /// Next sequence number, [client's bytes, server's bytes].
    next: [u32; 2],
    /// Bytes of the current call not seen yet, per direction.
    call_left: [u32; 2],
}

/// The TLS connections of every traced process (see the module doc).
#[derive(Debug)]
pub struct TlsStreams {
    ports: Vec<u16>,
    conns: HashMap<(u32, u64), Conn>,
    stats: TlsStreamStats,
}

impl TlsStreams {
    /// `ports`: the captured (server) ports.
    pub fn new(ports: Vec<u16>) -> Self {
        Self {
            ports,
            conns: HashMap::new(),
            stats: TlsStreamStats::default(),
        }
    }

    pub fn stats(&self) -> TlsStreamStats {
        self.stats
    }

    /// One chunk, stamped `ts_ns` (wall clock): its segment, if any, goes to `out`. `resolve`
    /// gives a process's socket fd as (local, remote) endpoints.
    pub fn on_chunk(
        &mut self,
        chunk: &TlsChunk<'_>,
        ts_ns: u64,
        resolve: &mut impl FnMut(u32, i32) -> Option<(SocketAddr, SocketAddr)>,
        out: &mut impl FnMut(SegmentRef<'_>),
    ) {
        let h = chunk.header;
        let len = chunk.data.len() as u64;
        self.stats.chunks += 1;
        self.stats.bytes += len;
        let key = (h.pid, h.ssl);
        let known = self
            .conns
            .get(&key)
            .is_some_and(|c| h.fd < 0 || c.fd == h.fd);
        if !known {
            let Some((local, remote)) = (h.fd >= 0).then(|| resolve(h.pid, h.fd)).flatten() else {
                self.stats.unresolved_chunks += 1;
                self.stats.unresolved_bytes += len;
                return;
            };
            let role = if self.ports.contains(&local.port()) {
                Role::Server {
                    client: remote,
                    server: local,
                }
            } else {
                Role::Client
            };
            if self.conns.len() >= MAX_CONNECTIONS
                && let Some(&victim) = self.conns.keys().next()
            {
                self.conns.remove(&victim);
                self.stats.connections_evicted += 1;
            }
            self.stats.connections += 1;
            self.conns.insert(
                key,
                Conn {
                    fd: h.fd,
                    role,
                    next: [ISN; 2],
                    call_left: [0; 2],
                },
            );
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        let Role::Server { client, server } = conn.role else {
            self.stats.client_side_chunks += 1;
            self.stats.client_side_bytes += len;
            return;
        };
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
            self.stats.segment_bytes += payload.len() as u64;
        }
        conn.next[dir] = conn.next[dir]
            .wrapping_add(payload.len() as u32)
            .wrapping_add(tail_lost);
    }
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
                kind,
                _pad: [0; 7],
            },
            data,
        }
    }

    /// Segments seen: direction, sequence number, payload.
    type Seen = Vec<(SegmentDirection, u32, Vec<u8>)>;

    /// Runs chunks through, resolving fd 4 as the server's socket and fd 9 as a client's.
    fn run(chunks: &[TlsChunk<'_>]) -> (Seen, TlsStreamStats, u32) {
        let mut s = TlsStreams::new(vec![443]);
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
                assert!(!seg.flags.syn());
                segs.push((seg.direction.unwrap(), seg.seq, seg.payload.to_vec()));
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
        assert_eq!(
            st.bytes,
            st.segment_bytes + st.client_side_bytes + st.unresolved_bytes,
            "every copied byte is somewhere"
        );
    }

    /// The segments through the pipeline: a keep-alive connection's two requests, the first
    /// split over two SSL reads, each paired with its response; the ledger balances.
    #[test]
    fn the_pipeline_frames_the_plaintext_as_any_flow() {
        use crate::pipeline::{Pipeline, PipelineConfig, PipelineEvent};
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
        let mut streams = TlsStreams::new(vec![443]);
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
        p.finish(&mut out);
        let st = p.stats();
        st.check_balance_at_end()
            .unwrap_or_else(|e| panic!("{e}\n{st}"));
        let requests: Vec<&[u8]> = out
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::Request(r) => Some(r.request.raw.as_ref()),
                _ => None,
            })
            .collect();
        let first = [&r1a[..], &r1b[..]].concat();
        assert_eq!(requests, [&first[..], &r2[..]], "{st}");
        assert_eq!(st.responses, 2, "{st}");
    }
}
