//! Types the kernel program and the agent must agree on, byte for byte.
//!
//! `#![no_std]`, `#[repr(C)]`, explicit-width integers, no implicit padding.
//! Owns: the ring-buffer record header, the endpoint key of the ignore map, the config and counter
//! indices, the map names and the flow hash used for sampling (so userspace and tests can predict
//! which flows the kernel keeps). Nothing else lives here.
#![no_std]

/// Largest TCP payload of one record (one chunk of an skb). GRO/TSO skbs on lo and veth are up to
/// 64 KiB; a larger skb (BIG TCP, large GRO) is carried in several records, each with its
/// [`RecordHeader::chunk_offset`].
pub const MAX_PAYLOAD: usize = 65536;

/// Most records (chunks) per skb: 8 × 64 KiB covers BIG TCP skbs up to 512 KiB of payload. Payload
/// beyond `MAX_CHUNKS * MAX_PAYLOAD` is not copied, and the skb is counted in
/// [`counter::TRUNCATED`].
pub const MAX_CHUNKS: u32 = 8;

/// Payload sizes of the fixed-size records of the one-copy path (`bpf_ringbuf_reserve` takes only
/// a size known at verification time). The last chunk of an skb uses the smallest class that
/// holds what is left, so a 100-byte request reserves 256 bytes of ring, not 64 KiB: ring space is
/// what runs out under load. Class 0 carries SYN/FIN/RST without payload. Every class is a power
/// of two (the verifier bound on the load length is `((n - 1) & (class - 1)) + 1`).
pub const SIZE_CLASSES: [usize; 5] = [0, 256, 2048, 16384, MAX_PAYLOAD];

/// Upper bound on the ports captured at once (`--port`).
pub const MAX_PORTS: u32 = 64;

/// Entries of the port map `MIRROR_PORTS`: an array indexed by port (64 KiB), valued by
/// [`port_state`] (0: not captured). An array lookup is inlined by the verifier; a hash
/// lookup is a helper call, paid by every packet the classifiers see, captured or not.
pub const PORT_SLOTS: u32 = 65536;

/// Default number of entries of the LRU map of endpoints never to capture (the local ends of the
/// agent's own mirror connections).
pub const IGNORE_ENTRIES: u32 = 16384;

/// Words of the ignore map's port filter (`MIRROR_IGNORE_PORTS`): one bit per port, 8 KiB.
pub const IGNORE_PORT_WORDS: u32 = 65536 / 64;

/// The word of `MIRROR_IGNORE_PORTS` holding `port`'s bit, and the bit.
#[inline(always)]
pub const fn ignore_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

/// Interfaces with an ifindex below this have their link-layer header length in an array slot
/// (`MIRROR_IFACE_SLOTS`, 256 KiB); the others in a hash map.
pub const IFACE_SLOTS: u32 = 65536;

/// Most interfaces with an ifindex of [`IFACE_SLOTS`] or more the TC classifiers are attached to
/// at once (entries of `MIRROR_IFACES`): a node with thousands of pods has thousands of veths.
pub const IFACE_ENTRIES: u32 = 16384;

/// Map names, as they appear in the object file.
pub mod maps {
    pub const RING: &str = "MIRROR_RING";
    pub const PORTS: &str = "MIRROR_PORTS";
    pub const CONFIG: &str = "MIRROR_CONFIG";
    pub const COUNTERS: &str = "MIRROR_COUNTERS";
    pub const SCRATCH: &str = "MIRROR_SCRATCH";
    pub const IGNORE: &str = "MIRROR_IGNORE";
    pub const IGNORE_PORTS: &str = "MIRROR_IGNORE_PORTS";
    pub const IFACE_SLOTS: &str = "MIRROR_IFACE_SLOTS";
    pub const IFACES: &str = "MIRROR_IFACES";
    pub const SKIP: &str = "MIRROR_SKIP";
}

/// TLS plaintext (issue 14 B): uprobes on libssl's `SSL_read`, `SSL_read_ex`, `SSL_write` and
/// `SSL_write_ex` copy what each call read or wrote into their own ring (`MIRROR_TLS_RING`), in
/// records of a [`TlsRecordHeader`] and one chunk of the call's bytes. The connection is found
/// without struct offsets: the socket the same thread's read/write syscall touches during the
/// call (the `sock_recv_length`/`sock_send_length` tracepoints give its `struct sock *`), whose
/// endpoints the `inet_sock_set_state` tracepoint noted when it was established
/// (`MIRROR_TLS_SOCKS`); the syscall's fd too, for connections established before the programs
/// were attached (userspace finds those through procfs).
pub mod tls {
    /// Ring of TLS records.
    pub const RING: &str = "MIRROR_TLS_RING";
    /// Calls in progress, by thread (`pid_tgid`): the `SSL*`, buffer, out-length pointer, fd.
    pub const ACTIVE: &str = "MIRROR_TLS_ACTIVE";
    /// The fd and socket last seen for `(tgid, SSL*)`.
    pub const FDS: &str = "MIRROR_TLS_FDS";
    /// Established TCP sockets whose local (server side) or remote (client side) port is a
    /// captured one, by `struct sock *`: their endpoints ([`super::TlsSocket`]).
    pub const SOCKS: &str = "MIRROR_TLS_SOCKS";
    pub const COUNTERS: &str = "MIRROR_TLS_COUNTERS";

    /// Largest chunk of one record; a call's bytes beyond `MAX_CHUNKS * MAX_CHUNK` are not
    /// copied (counted in [`counter::TRUNCATED_BYTES`]). `SSL_read` returns at most one TLS
    /// record (16 KiB); `SSL_write` may carry a whole application buffer.
    pub const MAX_CHUNK: usize = 16384;
    pub const MAX_CHUNKS: u32 = 16;
    /// Chunk sizes of the fixed-size records (`bpf_ringbuf_reserve` takes only sizes known at
    /// verification time): the last chunk uses the smallest that holds it.
    pub const SIZE_CLASSES: [usize; 3] = [256, 2048, MAX_CHUNK];
    /// Calls in progress tracked at once (threads inside an SSL call).
    pub const ACTIVE_ENTRIES: u32 = 16384;
    /// `(tgid, SSL*)` to fd entries (an LRU).
    pub const FD_ENTRIES: u32 = 65536;
    /// Sockets of captured ports followed at once (an LRU; entries leave when they close).
    pub const SOCK_ENTRIES: u32 = 65536;

    /// What a record's bytes are.
    pub mod kind {
        /// Plaintext the process read (`SSL_read`, `SSL_read_ex`): a server's requests.
        pub const READ: u8 = 0;
        /// Plaintext the process wrote (`SSL_write`, `SSL_write_ex`): a server's responses.
        pub const WRITE: u8 = 1;
        /// A socket that carried TLS plaintext closed (no data; endpoints set).
        pub const CLOSE: u8 = 2;
    }

    /// [`super::TlsRecordHeader::flags`].
    pub mod header_flags {
        /// The endpoints are set (the socket was established after the programs were
        /// attached); without it userspace finds them from `pid` and `fd`.
        pub const ENDPOINTS: u8 = 1;
        /// The first call on its socket: the connection's plaintext starts here.
        pub const FIRST: u8 = 2;
        /// `stream_offset` is set (counted from the socket's establishment, or from its first
        /// TLS call for a socket open before the programs were attached).
        pub const STREAM_OFFSET: u8 = 4;
    }

    /// [`super::TlsSocket::flags`].
    pub mod socket_flags {
        /// A TLS call used the socket (its close is reported).
        pub const TLS_SEEN: u8 = 1;
        /// Outside the sampled share of flows: its calls are not copied.
        pub const SAMPLED_OUT: u8 = 2;
        /// The client side of a connection to a captured port (a client on the same node):
        /// its calls are not copied.
        pub const CLIENT: u8 = 4;
        /// Not noted when established (open before the programs were attached, or another
        /// service's), followed from its first TLS call: no endpoints here (userspace resolves
        /// them from the fd); its close is reported with the endpoints the kernel gives then,
        /// when its local port is a captured one.
        pub const UNNOTED: u8 = 8;
    }

    /// Per-CPU counters of the TLS programs.
    pub mod counter {
        /// Calls that returned plaintext.
        pub const CALLS: u32 = 0;
        /// Records written.
        pub const RECORDS: u32 = 1;
        /// Chunks lost to a full ring (their calls are incomplete).
        pub const RING_FULL: u32 = 2;
        /// Bytes of calls beyond `MAX_CHUNKS * MAX_CHUNK`, not copied.
        pub const TRUNCATED_BYTES: u32 = 3;
        /// Calls whose socket and fd were not known (no socket work during the call and none
        /// seen before for the same `SSL*`): recorded without endpoints and with fd -1.
        pub const NO_FD: u32 = 4;
        /// Chunks whose user memory could not be read (recorded with `captured_len` 0).
        pub const READ_ERRORS: u32 = 5;
        /// Returns without a matching entry (the call began before the probes were attached,
        /// or the tracking map was full).
        pub const UNMATCHED: u32 = 6;
        /// Calls on sockets outside the sampled share of flows, not copied.
        pub const SAMPLED_OUT: u32 = 7;
        /// Close records lost to a full ring (userspace ends those flows by idle expiry).
        pub const CLOSE_LOST: u32 = 8;
        /// Sockets of captured ports noted when established.
        pub const SOCKETS: u32 = 9;
        /// Calls on the client side of a connection to a captured port, not copied.
        pub const CLIENT_SIDE: u32 = 10;
        /// Calls on sockets the programs do not know once `config::TLS_OPEN_BEFORE` is clear,
        /// not copied: no captured port's (another service's HTTPS), or a connection open
        /// before the probes were attached that userspace stopped waiting for
        /// (`--tls-open-wait-secs`).
        pub const OTHER: u32 = 11;
        /// Server-side sockets of a port known to carry TLS that closed without a TLS call
        /// that returned plaintext: connections that never sent a request (TCP-only health
        /// checks, clients closing connections they opened ahead), or served by a process
        /// whose TLS library is not probed (another libssl file, a statically linked or
        /// non-OpenSSL TLS stack): their plaintext was not read.
        pub const UNREAD: u32 = 12;
        pub const LEN: u32 = 13;
    }
}

/// Header of a TLS ring record; `captured_len` bytes of plaintext follow it (a record may be
/// longer, its size class: the tail is not written and not read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsRecordHeader {
    /// `bpf_ktime_get_ns()` at the call's return.
    pub ts_ns: u64,
    /// The `SSL*` of the call: one TLS connection within the process.
    pub ssl: u64,
    /// Process (tgid) and thread of the call.
    pub pid: u32,
    pub tid: u32,
    /// The socket's fd in that process, -1 when not known.
    pub fd: i32,
    /// Plaintext bytes of the whole call.
    pub call_len: u32,
    /// Offset of this chunk in the call's bytes.
    pub chunk_offset: u32,
    /// Bytes of this chunk following the header.
    pub captured_len: u32,
    /// Where the call's first byte sits in its direction of the connection (bytes of the
    /// socket's earlier calls in that direction, from 0 at its establishment, wrapping), when
    /// [`tls::header_flags::STREAM_OFFSET`] is set: a call the ring lost wholly shows as a
    /// jump, so userspace leaves a hole instead of splicing the calls around it.
    pub stream_offset: u32,
    /// The socket's endpoints when [`tls::header_flags::ENDPOINTS`] is set (as in
    /// [`TlsSocket`]).
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// [`family`] of the addresses (0 when unknown).
    pub family: u8,
    /// [`tls::kind`].
    pub kind: u8,
    /// [`tls::header_flags`].
    pub flags: u8,
    pub _pad: u8,
    pub _pad2: u32,
}

/// Size of [`TlsRecordHeader`].
pub const TLS_HEADER_LEN: usize = 88;
const _: () = assert!(core::mem::size_of::<TlsRecordHeader>() == TLS_HEADER_LEN);

/// An established socket of a captured port (`MIRROR_TLS_SOCKS`' value). Addresses as in
/// [`EndpointKey`] (an IPv4 peer of an IPv6 socket is stored as IPv4, as the classifiers see
/// its packets); ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSocket {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    /// [`tls::socket_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Plaintext bytes of the calls on this socket so far: [read, written] (wrapping). The
    /// next call's [`TlsRecordHeader::stream_offset`].
    pub offsets: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<TlsSocket>() == 48);

/// A call in progress (`MIRROR_TLS_ACTIVE`'s value), kept from the uprobe at its entry to the
/// one at its return, where the arguments are gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsActiveCall {
    pub ssl: u64,
    /// The plaintext buffer (user memory).
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the call stores its byte count; 0 otherwise.
    pub out_len: u64,
    /// The socket of the first read/write syscall of the call, 0 until one is seen.
    pub sk: u64,
    /// The fd of the first read/write syscall of the call, -1 until one is seen.
    pub fd: i32,
    /// [`tls::kind`].
    pub kind: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<TlsActiveCall>() == 40);

/// `MIRROR_TLS_FDS`' value: the fd and socket last seen for a `(tgid, SSL*)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsConnSocket {
    pub sk: u64,
    pub fd: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsConnSocket>() == 16);

/// Key of `MIRROR_TLS_FDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsConnKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsConnKey>() == 16);

/// Program names, as they appear in the object file (and in `bpftool net`; the kernel keeps the
/// first 15 bytes of a name).
///
/// Two variants of each classifier, the same in what they match and record, different in how
/// the payload reaches the ring: `INGRESS`/`EGRESS` reserve fixed-size records in the ring and
/// load the skb bytes straight into them (one copy); `INGRESS_COPY`/`EGRESS_COPY` load into a
/// per-CPU scratch buffer and copy that into the ring with `bpf_ringbuf_output` (two copies), the
/// fallback for a kernel whose verifier refuses the first pair.
pub mod programs {
    pub const INGRESS: &str = "mirror_ingress";
    pub const EGRESS: &str = "mirror_egress";
    pub const INGRESS_COPY: &str = "mirror_ingress_copy";
    pub const EGRESS_COPY: &str = "mirror_egress_copy";
    /// `cgroup_skb` programs (one-copy only): packets of the sockets of a cgroup's processes.
    pub const CGROUP_INGRESS: &str = "mirror_cg_ingress";
    pub const CGROUP_EGRESS: &str = "mirror_cg_egress";
}

/// Values of `MIRROR_PORTS`.
pub mod port_state {
    /// Not captured (what an array slot holds until userspace sets it).
    pub const NOT_CAPTURED: u8 = 0;
    /// The classifiers capture the port.
    pub const CAPTURED: u8 = 1;
    /// The port's connections are read as TLS plaintext (set by the TLS programs on the first
    /// TLS call of a connection to it): the classifiers leave its ciphertext alone, counted.
    pub const TLS: u8 = 2;
}

/// Indices into the `MIRROR_CONFIG` array of `u64`.
pub mod config {
    /// Share of flows to capture, in basis points (0..=10000).
    pub const SAMPLE_BASIS_POINTS: u32 = 0;
    /// A record that makes the bytes queued in the ring buffer cross a multiple of this (a
    /// power of two) forces a wakeup of the reader.
    pub const WAKEUP_BYTES: u32 = 1;
    /// Seed mixed into the flow hash, so that two agents do not sample the same flows.
    pub const HASH_SEED: u32 = 2;
    /// 1: userspace may put flows in `MIRROR_SKIP` (bodies nobody needs), so the ingress
    /// programs look them up; 0 spares them the lookup.
    pub const SKIP_BODIES: u32 = 3;
    /// 1: connections of the captured ports were open when the TLS programs attached (or
    /// nobody knows yet), so a TLS call on a socket the kernel did not note when established may
    /// be one of them: it is copied for userspace to tell. 0: such a call is no captured
    /// connection's (every socket of a captured port established since is noted): counted
    /// `OTHER`, not copied.
    pub const TLS_OPEN_BEFORE: u32 = 4;
    /// 1: records are stamped with `bpf_ktime_get_ns` (an output shows the stamps: `--compare`'s
    /// primary latency, `--record`, `--write-pcap`). 0: with `bpf_ktime_get_coarse_ns`, the
    /// time of the last timer tick (up to 1/HZ behind, 4 ms at HZ=250), which costs a memory
    /// read instead of a clock read (~50 ns a packet under load on a VM, a sixth of the
    /// classifier's time there).
    pub const PRECISE_CLOCK: u32 = 5;
    pub const LEN: u32 = 6;
}

/// Indices into the per-CPU `MIRROR_COUNTERS` array of `u64`.
///
/// Every matched skb ends in exactly one outcome, so, checked by the tests:
/// `MATCHED = TLS_CIPHERTEXT + IGNORED + SAMPLED_OUT + EMPTY + CAPTURED + RING_FULL + LOAD_ERROR`.
/// An skb's payload may take several records ([`crate::MAX_CHUNKS`]): [`RECORDS`] counts
/// records (what userspace reads, one segment each), the outcomes count skbs. A skb counted in
/// `RING_FULL` or `LOAD_ERROR` may have written its first chunks before the failure (those are in
/// `RECORDS`); its later chunks are not attempted and are counted in [`CHUNKS_LOST`].
pub mod counter {
    /// Packets the classifier ran on.
    pub const SEEN: u32 = 0;
    /// IPv4/IPv6 TCP packets whose port is in the port map.
    pub const MATCHED: u32 = 1;
    /// Matched packets of flows outside the sampled share.
    pub const SAMPLED_OUT: u32 = 2;
    /// Records written to the ring buffer (one per chunk).
    pub const RECORDS: u32 = 3;
    /// Matched skbs lost, wholly or from one chunk on, because the ring buffer was full.
    pub const RING_FULL: u32 = 4;
    /// TCP payload bytes written to the ring buffer.
    pub const PAYLOAD_BYTES: u32 = 5;
    /// Skbs whose payload went beyond `MAX_CHUNKS * MAX_PAYLOAD`; the rest was not copied (the
    /// skb is still counted in `CAPTURED` when every chunk it was allowed was written).
    pub const TRUNCATED: u32 = 6;
    /// IP packets the classifier could not parse (IPv6 extension chains too long, bad lengths,
    /// non-first fragments), and packets on an interface the agent has not registered (should stay
    /// 0).
    pub const UNPARSEABLE: u32 = 7;
    /// Matched packets without payload and without SYN/FIN/RST (pure ACKs), not recorded.
    pub const EMPTY: u32 = 8;
    /// Matched packets from or to an endpoint in the ignore map (the agent's own mirror traffic).
    pub const IGNORED: u32 = 9;
    /// Matched skbs whose payload could not be copied out (should stay 0); the failed chunk's
    /// reservation is discarded.
    pub const LOAD_ERROR: u32 = 10;
    /// Matched skbs whose every record was written.
    pub const CAPTURED: u32 = 11;
    /// Records with a chunk offset above 0 (the second and later chunks of large skbs).
    pub const CHUNKED_RECORDS: u32 = 12;
    /// Records not written because of `RING_FULL` or `LOAD_ERROR`: the failed chunk and every
    /// later chunk of the same skb.
    pub const CHUNKS_LOST: u32 = 13;
    /// Largest TCP payload of a matched skb seen on this CPU: a maximum, not a sum (userspace
    /// takes the maximum over CPUs).
    pub const MAX_SKB_PAYLOAD: u32 = 14;
    /// Matched skbs whose payload lay wholly inside a body nobody needs (`MIRROR_SKIP`): recorded
    /// as a header without payload ([`crate::record_flags::SKIPPED`]); among `CAPTURED`.
    pub const SKIPPED: u32 = 15;
    /// Payload bytes of those skbs, not copied.
    pub const SKIPPED_BYTES: u32 = 16;
    /// Matched packets of a port whose connections are read as TLS plaintext (the port's
    /// [`crate::port_state::TLS`]): their ciphertext is not recorded.
    pub const TLS_CIPHERTEXT: u32 = 17;
    pub const LEN: u32 = 18;
}

/// Direction of a record.
pub mod direction {
    /// Ingress hook, destination port matched: a request from a client.
    pub const INGRESS: u8 = 0;
    /// Egress hook, source port matched: a response of the primary.
    pub const EGRESS: u8 = 1;
}

/// Address family of a record.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Record flags.
pub mod record_flags {
    /// The last record of an skb whose payload went beyond `MAX_CHUNKS * MAX_PAYLOAD`: the rest
    /// was not copied; `payload_len` holds the real length.
    pub const TRUNCATED: u8 = 1;
    /// The skb's payload lay wholly inside a body nobody needs: not copied (`captured_len` 0),
    /// `payload_len` holds its length. The only record of its skb.
    pub const SKIPPED: u8 = 2;
}

/// Header of every ring-buffer record; `captured_len` payload bytes follow it (a one-copy record
/// may be longer, its size class: the tail after `captured_len` is not written and not read).
///
/// One record carries one chunk of an skb's TCP payload: bytes `chunk_offset ..
/// chunk_offset + captured_len` of it. Every record of an skb repeats the skb's header fields
/// (`seq` is the skb's first sequence number, `tcp_flags` its flags); the reader advances `seq` by
/// the offset and keeps SYN for the first chunk and FIN/RST/PSH for the last.
///
/// Addresses are in network byte order as on the wire; IPv4 uses the first 4 bytes of the
/// 16-byte fields. Ports, seq and ack are in host byte order. Fields are ordered by alignment so
/// that there is no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// CLOCK_MONOTONIC when the classifier ran: precise, or up to a timer tick behind
    /// (see [`config::PRECISE_CLOCK`]).
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload length of the skb (all chunks).
    pub payload_len: u32,
    /// Payload bytes of this record's chunk, which follow this header (at most
    /// [`MAX_PAYLOAD`]).
    pub captured_len: u32,
    /// Offset of this chunk in the skb's TCP payload (0 for the first record of an skb).
    pub chunk_offset: u32,
    /// Offset of the TCP payload from the start of the skb data (link-layer header included).
    pub payload_offset: u16,
    /// Low byte of the TCP flags field (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    pub tcp_flags: u8,
    /// [`family::IPV4`] or [`family::IPV6`].
    pub family: u8,
    /// [`direction::INGRESS`] or [`direction::EGRESS`].
    pub direction: u8,
    /// [`record_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl RecordHeader {
    /// Whether this record holds the skb's last copied byte (always true for an skb of one
    /// chunk): `chunk_offset + captured_len` reaches `payload_len`, or the skb was truncated here.
    #[inline(always)]
    pub fn is_last_chunk(&self) -> bool {
        self.flags & (record_flags::TRUNCATED | record_flags::SKIPPED) != 0
            || self.chunk_offset as u64 + self.captured_len as u64 >= self.payload_len as u64
    }
}

/// Size of [`RecordHeader`]; checked at compile time to rule out implicit padding.
pub const HEADER_LEN: usize = 72;
const _: () = assert!(core::mem::size_of::<RecordHeader>() == HEADER_LEN);
// Ring records are 8-byte aligned; a one-copy record is the header plus a size class.
const _: () = assert!(core::mem::align_of::<RecordHeader>() == 8);
const _: () = {
    let mut i = 1;
    while i < SIZE_CLASSES.len() {
        assert!(SIZE_CLASSES[i].is_power_of_two() && SIZE_CLASSES[i] > SIZE_CLASSES[i - 1]);
        i += 1;
    }
    assert!(SIZE_CLASSES[0] == 0 && SIZE_CLASSES[SIZE_CLASSES.len() - 1] == MAX_PAYLOAD);
};

/// Key of the ignore map: the *local* end of one of the agent's own mirror connections (its
/// address and the ephemeral port it is bound to).
///
/// Keyed by the local end, not the 4-tuple, because NAT rewrites the other end: a mirror URL
/// DNAT-ed (output hook) to a local service on the captured port reaches the ingress hook with
/// the post-NAT destination, which the agent's socket never sees; its own address and port are
/// unchanged. The classifiers look up both ends of every matched packet (source and destination),
/// so requests and responses of such a connection are skipped on either hook.
///
/// No other socket of this host holds the same local endpoint while the agent's is open (the
/// agent `bind`s it, which is exclusive), so a match is the agent's own traffic; userspace removes
/// the entry shortly after the connection is closed, before the port can be reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// [`family::IPV4`] or [`family::IPV6`]: `7f00:2::` and `127.0.0.2` have the same bytes.
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);

/// A client→server flow as the ingress programs see it (`MIRROR_SKIP`'s key): source is the
/// client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network byte order; IPv4 in the first 4 bytes, the rest zero.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`family::IPV4`] or [`family::IPV6`].
    pub family: u8,
    // Two fields rather than `[u8; 3]`: zeroing an array compiles to a byte loop over a stack
    // pointer, which the verifier refuses without CAP_PERFMON (pointer arithmetic "for !root").
    pub _pad: u8,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Entries of `MIRROR_SKIP` (an LRU map: the oldest entry goes when it is full, and its flow's
/// bytes are then simply copied).
pub const SKIP_ENTRIES: u32 = 16384;

/// Direction-independent hash of a flow, used for per-flow sampling.
///
/// Each endpoint is hashed on its own and the two results are added, so swapping source and
/// destination gives the same value: both directions of a connection are kept or dropped
/// together. Kept simple (a few multiply/xor rounds per 32-bit word) because it runs per packet
/// in the kernel; not a cryptographic hash.
#[inline(always)]
pub fn flow_hash(seed: u64, saddr: &[u8; 16], sport: u16, daddr: &[u8; 16], dport: u16) -> u64 {
    endpoint_hash(seed, saddr, sport).wrapping_add(endpoint_hash(seed, daddr, dport))
}

#[inline(always)]
fn endpoint_hash(seed: u64, addr: &[u8; 16], port: u16) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15 ^ (port as u64);
    let mut i = 0;
    while i < 16 {
        let w = u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]) as u64;
        h = mix(h ^ w);
        i += 4;
    }
    mix(h)
}

/// splitmix64 finalizer.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether a flow with hash `hash` is inside a sample of `basis_points` / 10000.
#[inline(always)]
pub fn sampled(hash: u64, basis_points: u64) -> bool {
    hash % 10000 < basis_points
}

/// Whether the ring's queued bytes going from `before` to `after` (more) crossed a multiple of
/// `step`, a power of two ([`config::WAKEUP_BYTES`]): the two then differ in a bit at or above
/// the step's. No division: it runs per captured packet.
#[inline(always)]
pub fn crosses_step(before: u64, after: u64, step: u64) -> bool {
    before ^ after >= step
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), made only of integers and byte arrays, with no padding (the size assert
    // next to the struct equals the sum of its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RecordHeader {}
    // SAFETY: as for `RecordHeader`: repr(C), integers and a byte array, no padding (size
    // asserted to be 20, the sum of its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: repr(C), byte arrays and integers, no padding (size asserted to be 40, the sum of
    // its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: repr(C), integers and a byte array, no padding (size asserted to be 80, the sum
    // of its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::TlsRecordHeader {}
    // SAFETY: repr(C), integers and a byte array, no padding (8+8+8+8+4+1+3 = 40 bytes).
    unsafe impl aya::Pod for super::TlsActiveCall {}
    // SAFETY: repr(C), byte arrays and integers, no padding (16+16+2+2+1+1+2 = 40 bytes).
    unsafe impl aya::Pod for super::TlsSocket {}
    // SAFETY: repr(C), integers, no padding (8+4+4 = 16 bytes).
    unsafe impl aya::Pod for super::TlsConnSocket {}
    // SAFETY: repr(C), integers, no padding (8+4+4 = 16 bytes).
    unsafe impl aya::Pod for super::TlsConnKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn chunk(payload_len: u32, chunk_offset: u32, captured_len: u32, flags: u8) -> RecordHeader {
        RecordHeader {
            ts_ns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 1,
            dport: 2,
            seq: 0,
            ack: 0,
            payload_len,
            captured_len,
            chunk_offset,
            payload_offset: 54,
            tcp_flags: 0,
            family: family::IPV4,
            direction: direction::INGRESS,
            flags,
            _pad: [0; 2],
        }
    }

    #[test]
    fn a_wakeup_step_is_crossed_once_per_multiple() {
        let step = 1 << 20;
        assert!(!crosses_step(0, 500, step));
        assert!(!crosses_step(step - 600, step - 100, step));
        assert!(crosses_step(step - 100, step + 200, step));
        assert!(
            crosses_step(step - 100, step, step),
            "reaching the multiple is crossing it"
        );
        // Above the step, only the next multiple wakes again: not every record.
        assert!(!crosses_step(step, step + 300, step));
        assert!(!crosses_step(step + 300, 2 * step - 1, step));
        assert!(crosses_step(2 * step - 1, 2 * step + 335, step));
        // Against division, over many sizes and positions.
        for before in (0..5 * step).step_by(4099) {
            for size in [8, 336, 4096, 70_000] {
                let after = before + size;
                assert_eq!(
                    crosses_step(before, after, step),
                    before / step != after / step,
                    "{before} + {size}"
                );
            }
        }
    }

    #[test]
    fn last_chunk_is_the_one_reaching_the_payload_end_or_truncated() {
        assert!(chunk(0, 0, 0, 0).is_last_chunk());
        assert!(chunk(100, 0, 100, 0).is_last_chunk());
        let big = 3 * MAX_PAYLOAD as u32 / 2;
        assert!(!chunk(big, 0, MAX_PAYLOAD as u32, 0).is_last_chunk());
        assert!(chunk(big, MAX_PAYLOAD as u32, big - MAX_PAYLOAD as u32, 0).is_last_chunk());
        // Truncated: the last record written stops short of payload_len.
        assert!(chunk(u32::MAX, 7 << 16, 1 << 16, record_flags::TRUNCATED).is_last_chunk());
        assert!(!chunk(u32::MAX, 7 << 16, 1 << 16, 0).is_last_chunk());
    }

    #[test]
    fn the_chunk_offset_field_sits_after_captured_len() {
        let h = chunk(0, 0x0102_0304, 0, 0);
        // SAFETY: RecordHeader is repr(C) plain data of HEADER_LEN bytes.
        let raw = unsafe {
            core::slice::from_raw_parts((&h as *const RecordHeader).cast::<u8>(), HEADER_LEN)
        };
        assert_eq!(raw[60..64], 0x0102_0304u32.to_ne_bytes());
        assert_eq!(raw[64..66], 54u16.to_ne_bytes());
    }

    #[test]
    fn flow_hash_is_the_same_in_both_directions() {
        let (c, s) = (v4([10, 0, 0, 2]), v4([10, 0, 0, 1]));
        for port in [1u16, 80, 40000, 65535] {
            assert_eq!(
                flow_hash(7, &c, port, &s, 8080),
                flow_hash(7, &s, 8080, &c, port)
            );
        }
    }

    #[test]
    fn flow_hash_depends_on_seed_ports_and_addresses() {
        let (c, s) = (v4([10, 0, 0, 2]), v4([10, 0, 0, 1]));
        let base = flow_hash(7, &c, 40000, &s, 80);
        assert_ne!(base, flow_hash(8, &c, 40000, &s, 80));
        assert_ne!(base, flow_hash(7, &c, 40001, &s, 80));
        assert_ne!(base, flow_hash(7, &v4([10, 0, 0, 3]), 40000, &s, 80));
    }

    #[test]
    fn sampling_share_follows_basis_points() {
        let s = v4([10, 0, 0, 1]);
        let kept = (0..10_000u16)
            .filter(|p| sampled(flow_hash(1, &v4([10, 0, 0, 2]), 1024 + p, &s, 80), 2500))
            .count();
        // 10000 flows at 25%: mean 2500, sd ~43; 6 sd margin.
        assert!((2240..=2760).contains(&kept), "kept {kept}");
        assert!(!sampled(12345, 0));
        assert!((0..1000u64).all(|h| sampled(h.wrapping_mul(0x9e37_79b9), 10000)));
    }
}
