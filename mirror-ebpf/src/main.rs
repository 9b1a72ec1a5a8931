//! TC classifiers that copy the TCP payload of packets for configured ports into a ring buffer.
//!
//! `mirror_ingress` matches packets whose *destination* port is in `MIRROR_PORTS` (client
//! requests); `mirror_egress` matches the same ports as *source* ports (the primary's responses)
//! and is attached only when userspace asks for it. Both always return `TC_ACT_PIPE`: the packet is
//! never changed, dropped or delayed, and under TCX later programs on the hook still run.
//!
//! One record per skb: a [`RecordHeader`] followed by the whole TCP payload, up to
//! [`MAX_PAYLOAD`] (GRO/TSO skbs on lo and veth reach 64 KiB). The record is assembled in a
//! per-CPU scratch value and written with `bpf_ringbuf_output`, because `bpf_ringbuf_reserve`
//! only accepts a size known at verification time.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_PIPE},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use mirror_common::{
    EndpointKey, HEADER_LEN, IGNORE_ENTRIES, MAX_PAYLOAD, MAX_PORTS, RecordHeader, config, counter,
    direction, flow_hash, record_flags, sampled,
};

use crate::parse::Packet;

/// Ring buffer of records; userspace sets the real size at load time.
#[map]
static MIRROR_RING: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Ports to capture (value unused).
#[map]
static MIRROR_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Settings written by userspace before attach, indexed by [`config`].
#[map]
static MIRROR_CONFIG: Array<u64> = Array::with_max_entries(config::LEN, 0);

/// Per-CPU counters, indexed by [`counter`].
#[map]
static MIRROR_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Endpoints never to capture: the local ends of the agent's own connections to mirrors. A packet
/// from or to one of them is the agent's own traffic (see [`EndpointKey`]).
#[map]
static MIRROR_IGNORE: LruHashMap<EndpointKey, u8> =
    LruHashMap::with_max_entries(IGNORE_ENTRIES, 0);

/// A record being assembled.
#[repr(C)]
pub struct Scratch {
    hdr: RecordHeader,
    data: [u8; MAX_PAYLOAD],
}

/// One scratch record per CPU. A plain ARRAY indexed by CPU id because a PERCPU_ARRAY value above
/// 32 KiB fails with E2BIG; userspace sets `max_entries` to the number of possible CPUs.
#[map]
static MIRROR_SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

const TCP_SYN_FIN_RST: u8 = 0x02 | 0x01 | 0x04;

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    process(&ctx, direction::INGRESS);
    TC_ACT_PIPE
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    process(&ctx, direction::EGRESS);
    TC_ACT_PIPE
}

#[inline(always)]
fn count(index: u32, value: u64) {
    if let Some(p) = MIRROR_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; TC programs run with migration disabled, so no other writer.
        unsafe { *p += value };
    }
}

#[inline(always)]
fn setting(index: u32) -> u64 {
    MIRROR_CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn process(ctx: &TcContext, dir: u8) {
    count(counter::SEEN, 1);
    let pkt = match parse::parse(ctx, setting(config::L2_LEN) as usize) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(()) => {
            count(counter::UNPARSEABLE, 1);
            return;
        }
    };
    let port = if dir == direction::INGRESS {
        pkt.dport
    } else {
        pkt.sport
    };
    // SAFETY: read-only lookup of a value we do not keep.
    if unsafe { MIRROR_PORTS.get(&port) }.is_none() {
        return;
    }
    count(counter::MATCHED, 1);

    if is_ignored(&pkt) {
        count(counter::IGNORED, 1);
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
            count(counter::SAMPLED_OUT, 1);
            return;
        }
    }
    if pkt.payload_len == 0 && pkt.tcp_flags & TCP_SYN_FIN_RST == 0 {
        count(counter::EMPTY, 1);
        return;
    }
    emit(ctx, &pkt, dir);
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
    unsafe { MIRROR_IGNORE.get(&src).is_some() || MIRROR_IGNORE.get(&dst).is_some() }
}

#[inline(always)]
fn emit(ctx: &TcContext, pkt: &Packet, dir: u8) {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(scratch) = MIRROR_SCRATCH.get_ptr_mut(cpu) else {
        // Cannot happen when userspace sized the map to the possible CPUs; still a lost record.
        count(counter::RING_FULL, 1);
        return;
    };
    // SAFETY: the slot belongs to this CPU and TC programs do not migrate.
    let scratch = unsafe { &mut *scratch };
    let truncated = pkt.payload_len as usize > MAX_PAYLOAD;
    let captured = if truncated {
        MAX_PAYLOAD as u32
    } else {
        pkt.payload_len
    };
    scratch.hdr = RecordHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport: pkt.sport,
        dport: pkt.dport,
        seq: pkt.seq,
        ack: pkt.ack,
        payload_len: pkt.payload_len,
        captured_len: captured,
        payload_offset: pkt.payload_offset as u16,
        tcp_flags: pkt.tcp_flags,
        family: pkt.family,
        direction: dir,
        flags: if truncated {
            record_flags::TRUNCATED
        } else {
            0
        },
        _pad: [0; 6],
    };
    let mut total = HEADER_LEN as u32;
    if captured > 0 {
        // The verifier rejects a possibly-zero or unbounded length: spell out 1 <= n <= MAX.
        let n = ((captured - 1) & (MAX_PAYLOAD as u32 - 1)) + 1;
        // SAFETY: `data` has MAX_PAYLOAD bytes and n <= MAX_PAYLOAD.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                pkt.payload_offset,
                scratch.data.as_mut_ptr() as *mut _,
                n,
            )
        };
        if r != 0 {
            count(counter::LOAD_ERROR, 1);
            return;
        }
        total += n;
    }
    let total = total as usize;
    // Batched wakeups: waking the reader per record costs ~2.5 us per packet; wake it only when
    // enough is queued, userspace drains periodically for the rest.
    let queued = MIRROR_RING.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if queued + total as u64 >= setting(config::WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: `total` <= size of Scratch, which is repr(C) with the header first.
    let bytes =
        unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, total) };
    match MIRROR_RING.output::<[u8]>(bytes, flags as u64) {
        Ok(()) => {
            count(counter::RECORDS, 1);
            count(counter::PAYLOAD_BYTES, captured as u64);
            if truncated {
                count(counter::TRUNCATED, 1);
            }
        }
        Err(_) => count(counter::RING_FULL, 1),
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
