//! Types the kernel program and the agent must agree on, byte for byte.
//!
//! `#![no_std]`, `#[repr(C)]`, explicit-width integers, no implicit padding.
//! Owns: the ring-buffer record header, the endpoint key of the ignore map, the config and counter
//! indices, the map names and the flow hash used for sampling (so userspace and tests can predict
//! which flows the kernel keeps). Nothing else lives here.
#![no_std]

/// Largest TCP payload copied from one skb. GRO/TSO skbs on lo and veth are up to 64 KiB; anything
/// larger (BIG TCP) is truncated to this and counted in [`counter::TRUNCATED`].
pub const MAX_PAYLOAD: usize = 65536;

/// Upper bound on ports in the port map (the kernel map's `max_entries`).
pub const MAX_PORTS: u32 = 64;

/// Default number of entries of the LRU map of endpoints never to capture (the local ends of the
/// agent's own mirror connections).
pub const IGNORE_ENTRIES: u32 = 16384;

/// Map names, as they appear in the object file.
pub mod maps {
    pub const RING: &str = "MIRROR_RING";
    pub const PORTS: &str = "MIRROR_PORTS";
    pub const CONFIG: &str = "MIRROR_CONFIG";
    pub const COUNTERS: &str = "MIRROR_COUNTERS";
    pub const SCRATCH: &str = "MIRROR_SCRATCH";
    pub const IGNORE: &str = "MIRROR_IGNORE";
}

/// Program names, as they appear in the object file (and in `bpftool net`).
pub mod programs {
    pub const INGRESS: &str = "mirror_ingress";
    pub const EGRESS: &str = "mirror_egress";
}

/// Indices into the `MIRROR_CONFIG` array of `u64`.
pub mod config {
    /// Share of flows to capture, in basis points (0..=10000).
    pub const SAMPLE_BASIS_POINTS: u32 = 0;
    /// Bytes queued in the ring buffer above which a record forces a wakeup of the reader.
    pub const WAKEUP_BYTES: u32 = 1;
    /// Seed mixed into the flow hash, so that two agents do not sample the same flows.
    pub const HASH_SEED: u32 = 2;
    /// Bytes of link-layer header before the IP header (14 on Ethernet, lo and veth; 0 on L3
    /// devices such as tun or wireguard).
    pub const L2_LEN: u32 = 3;
    pub const LEN: u32 = 4;
}

/// Indices into the per-CPU `MIRROR_COUNTERS` array of `u64`.
///
/// Accounting identity, checked by the tests:
/// `MATCHED = IGNORED + SAMPLED_OUT + EMPTY + RECORDS + RING_FULL + LOAD_ERROR`.
pub mod counter {
    /// Packets the classifier ran on.
    pub const SEEN: u32 = 0;
    /// IPv4/IPv6 TCP packets whose port is in the port map.
    pub const MATCHED: u32 = 1;
    /// Matched packets of flows outside the sampled share.
    pub const SAMPLED_OUT: u32 = 2;
    /// Records written to the ring buffer.
    pub const RECORDS: u32 = 3;
    /// Records lost because the ring buffer was full.
    pub const RING_FULL: u32 = 4;
    /// TCP payload bytes written to the ring buffer.
    pub const PAYLOAD_BYTES: u32 = 5;
    /// Records whose payload was cut at [`crate::MAX_PAYLOAD`].
    pub const TRUNCATED: u32 = 6;
    /// IP packets the classifier could not parse (IPv6 extension chains too long, bad lengths,
    /// non-first fragments).
    pub const UNPARSEABLE: u32 = 7;
    /// Matched packets without payload and without SYN/FIN/RST (pure ACKs), not recorded.
    pub const EMPTY: u32 = 8;
    /// Matched packets from or to an endpoint in the ignore map (the agent's own mirror traffic).
    pub const IGNORED: u32 = 9;
    /// Matched packets whose payload could not be copied out of the skb (should stay 0).
    pub const LOAD_ERROR: u32 = 10;
    pub const LEN: u32 = 11;
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
    /// The payload was cut at [`crate::MAX_PAYLOAD`]; `payload_len` holds the real length.
    pub const TRUNCATED: u8 = 1;
}

/// Header of every ring-buffer record; `captured_len` payload bytes follow it.
///
/// Addresses are in network byte order as on the wire; IPv4 uses the first 4 bytes of the
/// 16-byte fields. Ports, seq and ack are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the classifier ran.
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload length of the skb.
    pub payload_len: u32,
    /// Payload bytes that follow this header (`min(payload_len, MAX_PAYLOAD)`).
    pub captured_len: u32,
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
    pub _pad: [u8; 6],
}

/// Size of [`RecordHeader`]; checked at compile time to rule out implicit padding.
pub const HEADER_LEN: usize = 72;
const _: () = assert!(core::mem::size_of::<RecordHeader>() == HEADER_LEN);

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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), made only of integers and byte arrays, with no padding (the size assert
    // next to the struct equals the sum of its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RecordHeader {}
    // SAFETY: as for `RecordHeader`: repr(C), integers and a byte array, no padding (size
    // asserted to be 20, the sum of its fields), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::EndpointKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&a);
        out
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
