//! Programs that copy the TCP payload of packets for configured ports into a ring buffer.
//!
//! Two kinds of hook, the same records:
//! - TC classifiers, on interfaces: `mirror_ingress` matches packets whose *destination* port is
//!   in `MIRROR_PORTS` (client requests); `mirror_egress` matches the same ports as *source*
//!   ports (the primary's responses) and is attached only when userspace asks for it. Both
//!   always return `TC_ACT_PIPE`: the packet is never changed, dropped or delayed, and under TCX
//!   later programs on the hook still run. The link-layer header length comes per interface from
//!   `MIRROR_IFACE_SLOTS` or `MIRROR_IFACES` (14 on Ethernet-like devices, 0 on L3 ones).
//! - `cgroup_skb` programs, on cgroup v2 directories: `mirror_cg_ingress` sees the packets
//!   delivered to the sockets of the processes in the cgroup, `mirror_cg_egress` the packets they
//!   send; the same port rules. The skb starts at the IP header. Both return 1 (pass).
//!
//! Records: a [`RecordHeader`] followed by one chunk of the skb's TCP payload, at most
//! [`MAX_PAYLOAD`] bytes. An skb with more payload (BIG TCP, large GRO) takes several records,
//! each with its `chunk_offset`, up to [`MAX_CHUNKS`]; payload beyond that is not copied
//! (counted in `TRUNCATED`).
//!
//! Two variants of each classifier, chosen by userspace at load time:
//! - one copy (`mirror_ingress`, `mirror_egress`): ring space is reserved with
//!   `bpf_ringbuf_reserve` and the skb bytes are loaded straight into it. The reserve size must be
//!   known at verification time, so records come in fixed size classes ([`SIZE_CLASSES`]): full
//!   64 KiB chunks, then the smallest class that holds the rest. The unused tail of a class is
//!   neither written nor read.
//! - scratch copy (`mirror_ingress_copy`, `mirror_egress_copy`), the fallback: each chunk is
//!   loaded into a per-CPU scratch value and copied into the ring with `bpf_ringbuf_output`, whose
//!   length may vary at run time. Same records, exactly `HEADER_LEN + captured_len` bytes long.
//!
//! The cgroup programs exist in the one-copy variant only: the egress hook runs in process context
//! with softirqs enabled, so a softirq on the same CPU could run a program in the middle of
//! another one and overwrite its per-CPU scratch record. For the same reason their counters are
//! added atomically ([`Hook::shared_cpu`]); the TC hooks run with softirqs off and add plainly.
//!
//! A full ring stops the skb: the chunk that failed and the ones after it are counted in
//! `CHUNKS_LOST`, the skb in `RING_FULL` (see the accounting identity in `mirror_common::counter`).
//!
//! [`tls`]: uprobes on libssl's read/write calls and syscall tracepoints, which copy TLS
//! plaintext into a ring of their own (loaded only by `capture::ebpf::tls`).
#![no_std]
#![no_main]
// BPF inline assembly, for the one atomic add (`core`'s atomic read-modify-write methods are
// compiled out for the BPF target).
#![feature(asm_experimental_arch)]

mod parse;
mod tls;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_PIPE},
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, TcContext, sk_buff::SkBuff},
};
use mirror_common::{
    EndpointKey, FlowKey, HEADER_LEN, IFACE_ENTRIES, IFACE_SLOTS, IGNORE_ENTRIES,
    IGNORE_PORT_WORDS, MAX_CHUNKS, MAX_PAYLOAD, PORT_SLOTS, RecordHeader, SIZE_CLASSES,
    SKIP_ENTRIES, config, counter, crosses_step, direction, flow_hash, ignore_port_bit, port_state,
    record_flags, sampled,
};

use crate::parse::Packet;

/// Ring buffer of records; userspace sets the real size at load time.
#[map]
static MIRROR_RING: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Ports to capture: an array indexed by port, valued by [`port_state`] (the TLS programs mark
/// a port whose connections they read as plaintext). See [`PORT_SLOTS`].
#[map]
static MIRROR_PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// The state of `port` ([`port_state`]); `None` when it is not captured.
#[inline(always)]
pub(crate) fn port_state_of(port: u16) -> Option<u8> {
    MIRROR_PORTS
        .get(u32::from(port))
        .copied()
        .filter(|state| *state != port_state::NOT_CAPTURED)
}

/// Marks a captured port as read through TLS; a port not captured stays so.
#[inline(always)]
pub(crate) fn mark_tls(port: u16) {
    if let Some(state) = MIRROR_PORTS.get_ptr_mut(u32::from(port)) {
        // SAFETY: a valid slot of the array; a one-byte store, which the classifiers read
        // whole on other CPUs.
        unsafe {
            if *state != port_state::NOT_CAPTURED {
                *state = port_state::TLS;
            }
        }
    }
}

/// Settings written by userspace before attach, indexed by [`config`].
#[map]
static MIRROR_CONFIG: Array<u64> = Array::with_max_entries(config::LEN, 0);

/// Link-layer header bytes before IP, plus one (0: not attached), for the interfaces the TC
/// classifiers are attached to whose ifindex is below [`IFACE_SLOTS`]: userspace sets an
/// interface's slot before attaching to it and clears it after. An array lookup is a bounds
/// check and an add (the verifier inlines it); a hash lookup costs a hash per packet.
#[map]
static MIRROR_IFACE_SLOTS: Array<u32> = Array::with_max_entries(IFACE_SLOTS, 0);

/// The same for interfaces with a larger ifindex (the kernel hands them out cyclically, so a
/// long-lived node with pod churn gets there): ifindex to link-layer header bytes.
#[map]
static MIRROR_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(IFACE_ENTRIES, 0);

/// Per-CPU counters, indexed by [`counter`].
#[map]
static MIRROR_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Endpoints never to capture: the local ends of the agent's own connections to mirrors. A packet
/// from or to one of them is the agent's own traffic (see [`EndpointKey`]).
#[map]
static MIRROR_IGNORE: LruHashMap<EndpointKey, u8> = LruHashMap::with_max_entries(IGNORE_ENTRIES, 0);

/// The ports of `MIRROR_IGNORE`'s endpoints, one bit each ([`ignore_port_bit`]): userspace sets a
/// port's bit before the endpoint's entry and clears it after the last entry with that port
/// leaves. A packet neither of whose ports has its bit set is nobody's to ignore, and is let
/// through without the two LRU lookups (a helper call each; an array lookup is inlined).
#[map]
static MIRROR_IGNORE_PORTS: Array<u64> = Array::with_max_entries(IGNORE_PORT_WORDS, 0);

/// Client→server flows in the middle of a body nobody needs, with the sequence number where the
/// body ends: the ingress programs record an skb that lies wholly before it as a header without
/// payload ([`record_flags::SKIPPED`]) and delete the entry when they reach the end. Looked up
/// only while `config::SKIP_BODIES` is 1.
#[map]
static MIRROR_SKIP: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(SKIP_ENTRIES, 0);

/// A record being assembled by the scratch-copy programs.
#[repr(C)]
pub struct Scratch {
    hdr: RecordHeader,
    data: [u8; MAX_PAYLOAD],
}

/// One scratch record per CPU, used by the scratch-copy programs only. A plain ARRAY indexed by CPU
/// id because a PERCPU_ARRAY value above 32 KiB fails with E2BIG; userspace sets `max_entries` to
/// the number of possible CPUs for the scratch-copy programs, and to 1 for the one-copy ones.
#[map]
static MIRROR_SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_SYN_FIN_RST: u8 = TCP_SYN | TCP_FIN | TCP_RST;

/// How a classifier moves payload into the ring.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CopyMode {
    /// `bpf_ringbuf_reserve` + load into the reservation.
    Reserve,
    /// Load into the per-CPU scratch value + `bpf_ringbuf_output`.
    Scratch,
}

/// Where a program runs, which decides how it finds the IP header and adds to its counters.
#[derive(Clone, Copy)]
struct Hook {
    dir: u8,
    copy: CopyMode,
    /// TC: the link-layer header length comes from `MIRROR_IFACES`. cgroup_skb: the skb starts
    /// at the IP header.
    tc: bool,
    /// The program can be interrupted on its CPU by another of ours (cgroup_skb egress runs in
    /// process context with softirqs on): counters are added atomically.
    shared_cpu: bool,
}

impl Hook {
    const fn tc(dir: u8, copy: CopyMode) -> Self {
        Self {
            dir,
            copy,
            tc: true,
            shared_cpu: false,
        }
    }

    const fn cgroup(dir: u8) -> Self {
        Self {
            dir,
            copy: CopyMode::Reserve,
            tc: false,
            shared_cpu: true,
        }
    }

    #[inline(always)]
    fn count(self, index: u32, value: u64) {
        if let Some(p) = MIRROR_COUNTERS.get_ptr_mut(index) {
            if self.shared_cpu {
                // SAFETY: a valid, aligned per-CPU slot; every writer that can interrupt this
                // one on its CPU adds atomically too. BPF_ATOMIC | BPF_ADD, 64 bits.
                unsafe {
                    core::arch::asm!(
                        "lock *(u64 *)({p} + 0) += {v}",
                        p = in(reg) p,
                        v = in(reg) value,
                    )
                };
            } else {
                // SAFETY: per-CPU slot; TC programs run with softirqs off and migration
                // disabled, so no other writer.
                unsafe { *p += value };
            }
        }
    }
}

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    process(&ctx.skb, Hook::tc(direction::INGRESS, CopyMode::Reserve));
    TC_ACT_PIPE
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    process(&ctx.skb, Hook::tc(direction::EGRESS, CopyMode::Reserve));
    TC_ACT_PIPE
}

#[classifier]
pub fn mirror_ingress_copy(ctx: TcContext) -> i32 {
    process(&ctx.skb, Hook::tc(direction::INGRESS, CopyMode::Scratch));
    TC_ACT_PIPE
}

#[classifier]
pub fn mirror_egress_copy(ctx: TcContext) -> i32 {
    process(&ctx.skb, Hook::tc(direction::EGRESS, CopyMode::Scratch));
    TC_ACT_PIPE
}

/// cgroup_skb: 1 lets the packet pass (0 would drop it).
const CGROUP_PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn mirror_cg_ingress(ctx: SkBuffContext) -> i32 {
    process(&ctx.skb, Hook::cgroup(direction::INGRESS));
    CGROUP_PASS
}

#[cgroup_skb(egress)]
pub fn mirror_cg_egress(ctx: SkBuffContext) -> i32 {
    process(&ctx.skb, Hook::cgroup(direction::EGRESS));
    CGROUP_PASS
}

#[inline(always)]
pub(crate) fn setting(index: u32) -> u64 {
    MIRROR_CONFIG.get(index).copied().unwrap_or(0)
}

/// Link-layer header bytes before IP on the TC hook's interface; `None` for an interface
/// userspace did not register (cannot happen: it registers before attaching).
#[inline(always)]
fn tc_l2_len(skb: &SkBuff) -> Option<usize> {
    // SAFETY: reading a field of the context the kernel passed in.
    let ifindex = unsafe { (*skb.skb).ifindex };
    if ifindex < IFACE_SLOTS {
        match MIRROR_IFACE_SLOTS.get(ifindex).copied() {
            Some(slot) if slot > 0 => Some(slot as usize - 1),
            _ => None,
        }
    } else {
        // SAFETY: read-only lookup of a value copied out at once.
        unsafe { MIRROR_IFACES.get(&ifindex) }.map(|l2| *l2 as usize)
    }
}

#[inline(always)]
fn process(skb: &SkBuff, hook: Hook) {
    hook.count(counter::SEEN, 1);
    let l2_len = if hook.tc {
        match tc_l2_len(skb) {
            Some(l2) => l2,
            None => {
                hook.count(counter::UNPARSEABLE, 1);
                return;
            }
        }
    } else {
        0
    };
    // The headers in place when they are (see `parse`), else field by field.
    let linear = match l2_len {
        14 => parse::parse_linear::<14>(skb),
        0 => parse::parse_linear::<0>(skb),
        _ => None,
    };
    let pkt = match linear.unwrap_or_else(|| parse::parse(skb, l2_len)) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(()) => {
            hook.count(counter::UNPARSEABLE, 1);
            return;
        }
    };
    let dir = hook.dir;
    let port = if dir == direction::INGRESS {
        pkt.dport
    } else {
        pkt.sport
    };
    let Some(state) = port_state_of(port) else {
        return;
    };
    hook.count(counter::MATCHED, 1);
    if state == port_state::TLS {
        hook.count(counter::TLS_CIPHERTEXT, 1);
        return;
    }

    if is_ignored(&pkt) {
        hook.count(counter::IGNORED, 1);
        return;
    }
    let basis_points = setting(config::SAMPLE_BASIS_POINTS);
    if basis_points < 10000 {
        let h = flow_hash(
            setting(config::HASH_SEED),
            &pkt.saddr,
            pkt.sport,
            &pkt.daddr,
            pkt.dport,
        );
        if !sampled(h, basis_points) {
            hook.count(counter::SAMPLED_OUT, 1);
            return;
        }
    }
    if pkt.payload_len == 0 && pkt.tcp_flags & TCP_SYN_FIN_RST == 0 {
        hook.count(counter::EMPTY, 1);
        return;
    }
    if dir == direction::INGRESS && setting(config::SKIP_BODIES) != 0 {
        if pkt.tcp_flags & (TCP_SYN | TCP_RST) != 0 {
            // A new connection on the same ports, or the end of this one: an entry left by a
            // body that never ended must not skip the next connection's bytes.
            let _ = MIRROR_SKIP.remove(&flow_key(&pkt));
        } else if pkt.payload_len > 0 && skip_body(&pkt, hook) {
            return;
        }
    }
    match hook.copy {
        CopyMode::Reserve => emit_reserve(skb, &pkt, hook),
        CopyMode::Scratch => emit_scratch(skb, &pkt, hook),
    }
}

/// Whether either end of the packet is the local end of one of the agent's own connections.
/// Both ends are looked up on both hooks: the agent's request has its endpoint as source, the
/// mirror's answer as destination, and NAT may have changed the other end.
#[inline(always)]
fn is_ignored(pkt: &Packet) -> bool {
    let src = EndpointKey {
        addr: pkt.saddr,
        port: pkt.sport,
        family: pkt.family,
        _pad: 0,
    };
    let dst = EndpointKey {
        addr: pkt.daddr,
        port: pkt.dport,
        family: pkt.family,
        _pad: 0,
    };
    // SAFETY: read-only lookups of values we do not keep.
    (may_be_ignored(pkt.sport) && unsafe { MIRROR_IGNORE.get(&src).is_some() })
        || (may_be_ignored(pkt.dport) && unsafe { MIRROR_IGNORE.get(&dst).is_some() })
}

/// Whether some endpoint in `MIRROR_IGNORE` has this port (`MIRROR_IGNORE_PORTS`).
#[inline(always)]
fn may_be_ignored(port: u16) -> bool {
    let (word, bit) = ignore_port_bit(port);
    MIRROR_IGNORE_PORTS
        .get(word)
        .is_some_and(|bits| bits & bit != 0)
}

/// A packet of a flow in `MIRROR_SKIP`: one that lies wholly before the body's end becomes a
/// header-only record (true: done); one that reaches past it is copied as usual (false), and
/// either way the entry goes once the end (or a FIN) is reached. Sequence numbers compare by
/// wrapping distance. A SYN or RST on the flow removes the entry before this is asked (see
/// `process`), so a connection reusing the ports is never skipped by a stale entry.
#[inline(always)]
fn skip_body(pkt: &Packet, hook: Hook) -> bool {
    let key = flow_key(pkt);
    // SAFETY: read-only lookup of a value copied out at once.
    let Some(until) = (unsafe { MIRROR_SKIP.get(&key) }).copied() else {
        return false;
    };
    let end = pkt.seq.wrapping_add(pkt.payload_len);
    let left = until.wrapping_sub(end) as i32;
    if left <= 0 || pkt.tcp_flags & TCP_FIN != 0 {
        // Reaches the end of the body (or beyond: the next request starts in it), or the
        // client's last packet.
        let _ = MIRROR_SKIP.remove(&key);
        if left < 0 {
            return false;
        }
    }
    let mut hdr = header(pkt, hook);
    hdr.flags = record_flags::SKIPPED;
    if MIRROR_RING
        .output::<RecordHeader>(&hdr, wakeup_flags(HEADER_LEN as u64, false))
        .is_err()
    {
        lost(hook, Lost::RingFull, 0, 1);
        return true;
    }
    written(hook, &hdr);
    hook.count(counter::CAPTURED, 1);
    hook.count(counter::SKIPPED, 1);
    hook.count(counter::SKIPPED_BYTES, pkt.payload_len as u64);
    true
}

/// `MIRROR_SKIP`'s key for the packet's flow (client to server on ingress).
#[inline(always)]
fn flow_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        family: pkt.family,
        _pad: 0,
        _pad2: 0,
    }
}

/// Why a chunk did not reach the ring.
#[derive(Clone, Copy)]
enum Lost {
    RingFull,
    LoadError,
}

/// What an skb turns into: its header (with `chunk_offset`/`captured_len`/`flags` to fill per
/// chunk), the payload bytes to copy in all, and how many records they take.
struct Plan {
    hdr: RecordHeader,
    total: u32,
    chunks: u32,
}

#[inline(always)]
fn plan(pkt: &Packet, hook: Hook) -> Plan {
    const MAX_TOTAL: u32 = MAX_CHUNKS * MAX_PAYLOAD as u32;
    let truncated = pkt.payload_len > MAX_TOTAL;
    let total = if truncated {
        MAX_TOTAL
    } else {
        pkt.payload_len
    };
    if truncated {
        hook.count(counter::TRUNCATED, 1);
    }
    if let Some(p) = MIRROR_COUNTERS.get_ptr_mut(counter::MAX_SKB_PAYLOAD) {
        // SAFETY: per-CPU slot. A maximum: where programs can interrupt each other on a CPU
        // (cgroup egress), a lost update only keeps a smaller maximum for a moment.
        unsafe {
            if *p < pkt.payload_len as u64 {
                *p = pkt.payload_len as u64;
            }
        }
    }
    Plan {
        hdr: header(pkt, hook),
        total,
        // At least one record (SYN/FIN/RST without payload), at most MAX_CHUNKS.
        chunks: if total == 0 {
            1
        } else {
            total.div_ceil(MAX_PAYLOAD as u32)
        },
    }
}

/// The record header of `pkt`, before chunking (`captured_len`, `chunk_offset`, `flags` 0).
#[inline(always)]
fn header(pkt: &Packet, hook: Hook) -> RecordHeader {
    // SAFETY: helpers without arguments.
    let ts_ns = unsafe {
        if setting(config::PRECISE_CLOCK) != 0 {
            bpf_ktime_get_ns()
        } else {
            bpf_ktime_get_coarse_ns()
        }
    };
    RecordHeader {
        ts_ns,
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        seq: pkt.seq,
        ack: pkt.ack,
        payload_len: pkt.payload_len,
        captured_len: 0,
        chunk_offset: 0,
        payload_offset: pkt.payload_offset as u16,
        tcp_flags: pkt.tcp_flags,
        family: pkt.family,
        direction: hook.dir,
        flags: 0,
        _pad: [0; 2],
    }
}

/// Counts a written record.
#[inline(always)]
fn written(hook: Hook, hdr: &RecordHeader) {
    hook.count(counter::RECORDS, 1);
    hook.count(counter::PAYLOAD_BYTES, hdr.captured_len as u64);
    if hdr.chunk_offset > 0 {
        hook.count(counter::CHUNKED_RECORDS, 1);
    }
}

/// Counts the outcome of an skb that lost chunk `index` and every later one of `chunks`.
#[inline(always)]
fn lost(hook: Hook, why: Lost, index: u32, chunks: u32) {
    hook.count(
        match why {
            Lost::RingFull => counter::RING_FULL,
            Lost::LoadError => counter::LOAD_ERROR,
        },
        1,
    );
    hook.count(counter::CHUNKS_LOST, chunks.saturating_sub(index) as u64);
}

/// The ring's own header before each record.
const RING_RECORD_HEADER: u64 = 8;

/// Submit flags for a record of `len` bytes, `reserved` when its space is already queued
/// (reserve path) rather than about to be (`output`). Batched wakeups: waking the reader
/// per record costs ~2.5 us per packet; userspace drains periodically, and the kernel wakes it
/// early when the queue grows past a multiple of `config::WAKEUP_BYTES` (a power of two):
/// once per crossing, not on every record above it, since a wakeup raises an interrupt on this
/// CPU (the primary's) and a late reader would otherwise cost one per packet until it drains.
/// Two CPUs adding at once may both miss a crossing; the next multiple, or the periodic drain,
/// catches it.
#[inline(always)]
fn wakeup_flags(len: u64, reserved: bool) -> u64 {
    let queued = MIRROR_RING.query(BPF_RB_AVAIL_DATA as u64);
    let size = len + RING_RECORD_HEADER;
    let (before, after) = if reserved {
        (queued.saturating_sub(size), queued)
    } else {
        (queued, queued + size)
    };
    if crosses_step(before, after, setting(config::WAKEUP_BYTES)) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The last chunk's flags: TRUNCATED when payload was left uncopied.
#[inline(always)]
fn last_flags(pkt: &Packet, plan: &Plan) -> u8 {
    if pkt.payload_len > plan.total {
        record_flags::TRUNCATED
    } else {
        0
    }
}

/// One-copy path: full 64 KiB chunks while more than one chunk is left, then the last chunk in the
/// smallest size class that holds it.
#[inline(always)]
fn emit_reserve(skb: &SkBuff, pkt: &Packet, hook: Hook) {
    let mut plan = plan(pkt, hook);
    let mut off = 0u32;
    let mut index = 0u32;
    // Bounded: at most MAX_CHUNKS - 1 full chunks before the last one.
    while index < MAX_CHUNKS - 1 {
        if plan.total - off <= MAX_PAYLOAD as u32 {
            break;
        }
        plan.hdr.chunk_offset = off;
        plan.hdr.captured_len = MAX_PAYLOAD as u32;
        if let Err(why) = reserve_chunk::<MAX_PAYLOAD>(skb, &plan.hdr, MAX_PAYLOAD as u32) {
            lost(hook, why, index, plan.chunks);
            return;
        }
        written(hook, &plan.hdr);
        off += MAX_PAYLOAD as u32;
        index += 1;
    }
    let left = plan.total - off;
    plan.hdr.chunk_offset = off;
    plan.hdr.captured_len = left;
    plan.hdr.flags = last_flags(pkt, &plan);
    const C1: usize = SIZE_CLASSES[1];
    const C2: usize = SIZE_CLASSES[2];
    const C3: usize = SIZE_CLASSES[3];
    const C4: usize = SIZE_CLASSES[4];
    let result = if left == 0 {
        reserve_chunk::<0>(skb, &plan.hdr, 0)
    } else if left <= C1 as u32 {
        reserve_chunk::<C1>(skb, &plan.hdr, left)
    } else if left <= C2 as u32 {
        reserve_chunk::<C2>(skb, &plan.hdr, left)
    } else if left <= C3 as u32 {
        reserve_chunk::<C3>(skb, &plan.hdr, left)
    } else {
        reserve_chunk::<C4>(skb, &plan.hdr, left)
    };
    match result {
        Ok(()) => {
            written(hook, &plan.hdr);
            hook.count(counter::CAPTURED, 1);
        }
        Err(why) => lost(hook, why, index, plan.chunks),
    }
}

/// A one-copy record: the header and a payload area of size class `N`.
#[repr(C)]
struct Chunk<const N: usize> {
    hdr: RecordHeader,
    data: [u8; N],
}

/// Reserves a record of class `N`, writes `hdr`, loads `len` (1..=N, or 0 when N is 0) payload
/// bytes from offset `hdr.chunk_offset` of the payload straight into it and submits it.
#[inline(always)]
fn reserve_chunk<const N: usize>(skb: &SkBuff, hdr: &RecordHeader, len: u32) -> Result<(), Lost> {
    let Some(mut entry) = MIRROR_RING.reserve::<Chunk<N>>(0) else {
        return Err(Lost::RingFull);
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to the reserved, writable ring memory of a Chunk<N>.
    unsafe { (&raw mut (*record).hdr).write(*hdr) };
    if N > 0 {
        let n = load_len::<N>(len);
        // SAFETY: the data area of the reservation has N bytes and n <= N.
        let r = unsafe {
            bpf_skb_load_bytes(
                skb.skb as *const _,
                payload_offset(hdr),
                (&raw mut (*record).data).cast(),
                n,
            )
        };
        if r != 0 {
            entry.discard(BPF_RB_NO_WAKEUP as u64);
            return Err(Lost::LoadError);
        }
    }
    entry.submit(wakeup_flags(core::mem::size_of::<Chunk<N>>() as u64, true));
    Ok(())
}

/// `len` (1..=N) in a form the verifier can bound for `bpf_skb_load_bytes`, which rejects a
/// possibly-zero or unbounded length: `((len - 1) & (N - 1)) + 1`, which is `len` itself when
/// 1 <= len <= N (N a power of two). The volatile read hides `len`'s range from LLVM: knowing the
/// caller's branch, it would see that the mask changes nothing and drop it, leaving the verifier
/// a register it cannot bound.
#[inline(always)]
pub(crate) fn load_len<const N: usize>(len: u32) -> u32 {
    // SAFETY: reads a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    (len.wrapping_sub(1) & (N as u32).wrapping_sub(1)) + 1
}

/// Offset in the skb of the chunk's first payload byte.
#[inline(always)]
fn payload_offset(hdr: &RecordHeader) -> u32 {
    hdr.payload_offset as u32 + hdr.chunk_offset
}

/// Scratch-copy path: each chunk (up to 64 KiB) is loaded into this CPU's scratch record and
/// copied into the ring with `bpf_ringbuf_output`.
#[inline(always)]
fn emit_scratch(skb: &SkBuff, pkt: &Packet, hook: Hook) {
    let mut plan = plan(pkt, hook);
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = MIRROR_SCRATCH.get_ptr_mut(cpu) else {
        // Cannot happen when userspace sized the map to the possible CPUs; still a lost skb.
        lost(hook, Lost::RingFull, 0, plan.chunks);
        return;
    };
    // SAFETY: the slot belongs to this CPU and TC programs do not migrate.
    let scratch = unsafe { &mut *scratch };
    let mut off = 0u32;
    let mut index = 0u32;
    // Bounded: at most MAX_CHUNKS records.
    while index < MAX_CHUNKS {
        let left = plan.total - off;
        let last = left <= MAX_PAYLOAD as u32;
        let captured = if last { left } else { MAX_PAYLOAD as u32 };
        plan.hdr.chunk_offset = off;
        plan.hdr.captured_len = captured;
        plan.hdr.flags = if last { last_flags(pkt, &plan) } else { 0 };
        scratch.hdr = plan.hdr;
        let mut size = HEADER_LEN as u32;
        if captured > 0 {
            let n = load_len::<MAX_PAYLOAD>(captured);
            // SAFETY: `data` has MAX_PAYLOAD bytes and n <= MAX_PAYLOAD.
            let r = unsafe {
                bpf_skb_load_bytes(
                    skb.skb as *const _,
                    payload_offset(&plan.hdr),
                    scratch.data.as_mut_ptr() as *mut _,
                    n,
                )
            };
            if r != 0 {
                lost(hook, Lost::LoadError, index, plan.chunks);
                return;
            }
            size += n;
        }
        let size = size as usize;
        // SAFETY: `size` <= size of Scratch, which is repr(C) with the header first.
        let bytes =
            unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, size) };
        if MIRROR_RING
            .output::<[u8]>(bytes, wakeup_flags(size as u64, false))
            .is_err()
        {
            lost(hook, Lost::RingFull, index, plan.chunks);
            return;
        }
        written(hook, &plan.hdr);
        if last {
            hook.count(counter::CAPTURED, 1);
            return;
        }
        off += MAX_PAYLOAD as u32;
        index += 1;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
