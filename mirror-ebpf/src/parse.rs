//! Header parsing for the classifiers: link layer (optional VLAN tags), IPv4 or IPv6 (with a
//! bounded walk over extension headers), TCP.
//!
//! Two readers of the same fields:
//! - [`parse_linear`], the fast path: reads the headers in place from the skb's linear area, with
//!   one bounds check against `data_end` per header. Taken when the headers lie there, which is
//!   the usual case (the stack builds a packet's headers in its head, and GRO leaves them linear),
//!   for IPv4 without options and IPv6 without extension headers, at constant offsets (see
//!   [`parse_linear`] for why).
//! - [`parse`], every other packet: each field through `bpf_skb_load_bytes` (`SkBuff::load`),
//!   which also reads the non-linear part, IPv4 options and IPv6 extension headers. A helper
//!   call per field: on the bench host (AMD EPYC, SRSO "safe RET" mitigation) the ten calls
//!   cost about 170 ns a packet, most of the classifier's time before the copy
//!   (BENCHMARKS.md, "The classifier's time per packet").
//!
//! Both give the same `Packet` or the same verdict for a packet (`capture` tests cover IPv4,
//! IPv6, VLAN tags, loopback and large GRO skbs).

use aya_ebpf::programs::sk_buff::SkBuff;
use mirror_common::family;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers are walked at most this many times (verifier needs a bound).
const MAX_EXT_HEADERS: usize = 4;

/// The fields of a TCP packet the classifier needs.
pub struct Packet {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    pub family: u8,
    /// Offset of the TCP payload from the start of the skb data.
    pub payload_offset: u32,
    pub payload_len: u32,
}

#[inline(always)]
fn be16(ctx: &SkBuff, off: usize) -> Result<u16, ()> {
    ctx.load::<u16>(off).map(u16::from_be).map_err(|_| ())
}

#[inline(always)]
fn be32(ctx: &SkBuff, off: usize) -> Result<u32, ()> {
    ctx.load::<u32>(off).map(u32::from_be).map_err(|_| ())
}

#[inline(always)]
fn byte(ctx: &SkBuff, off: usize) -> Result<u8, ()> {
    ctx.load::<u8>(off).map_err(|_| ())
}

/// The headers read in place, on a device with `L2` bytes of link-layer header (14 or 0). Up
/// to two VLAN tags are stepped over as [`parse`] does. `None`: the packet needs [`parse`] (IPv4
/// options, IPv6 extension headers, or headers reaching past the linear area). Otherwise the
/// same verdict as [`parse`].
///
/// Every offset from `data` is a constant (one instance of [`ip_at`] per place IP can start):
/// without CAP_PERFMON (the agent runs with CAP_BPF and CAP_NET_ADMIN only) the verifier
/// refuses packet-pointer arithmetic with a register, so a header length read from the packet
/// may not move the pointer. That is also why IPv4 options go to [`parse`].
#[inline(always)]
pub fn parse_linear<const L2: usize>(ctx: &SkBuff) -> Option<Result<Option<Packet>, ()>> {
    // SAFETY: reading fields of the context the kernel passed in.
    let (start, end) = unsafe { ((*ctx.skb).data as usize, (*ctx.skb).data_end as usize) };
    if L2 < 14 {
        return ip_at::<0>(ctx, start, end, None);
    }
    // Ethernet and up to two tags: 22 bytes.
    if start + 22 > end {
        return None;
    }
    let is_tag = |t: u16| t == ETH_P_8021Q || t == ETH_P_8021AD;
    let outer = be16_at(start + 12);
    if !is_tag(outer) {
        return ip_at::<14>(ctx, start, end, Some(outer));
    }
    let inner = be16_at(start + 16);
    if !is_tag(inner) {
        return ip_at::<18>(ctx, start, end, Some(inner));
    }
    let third = be16_at(start + 20);
    if !is_tag(third) {
        return ip_at::<22>(ctx, start, end, Some(third));
    }
    // A third tag, which `parse` does not walk either.
    Some(Ok(None))
}

/// The byte at packet address `p`.
#[inline(always)]
fn at(p: usize) -> u8 {
    // SAFETY: every `p` passed lies below a bounds check against `data_end` done before.
    unsafe { *(p as *const u8) }
}

#[inline(always)]
fn be16_at(p: usize) -> u16 {
    u16::from_be_bytes([at(p), at(p + 1)])
}

#[inline(always)]
fn be32_at(p: usize) -> u32 {
    u32::from_be_bytes([at(p), at(p + 1), at(p + 2), at(p + 3)])
}

/// [`parse_linear`] once the link layer is read: IP starts `OFF` bytes into the data, with
/// `ethertype` announcing it (`None` on an L3 device: the version nibble says).
#[inline(always)]
fn ip_at<const OFF: usize>(
    ctx: &SkBuff,
    start: usize,
    end: usize,
    ethertype: Option<u16>,
) -> Option<Result<Option<Packet>, ()>> {
    let announced = match ethertype {
        None => None,
        Some(ETH_P_IP) => Some(4),
        Some(ETH_P_IPV6) => Some(6),
        Some(_) => return Some(Ok(None)),
    };
    let ip = start + OFF;
    // The shortest IP header; each header's own length is checked below.
    if ip + 20 > end {
        return None;
    }
    let version = at(ip) >> 4;
    if announced.is_some_and(|v| v != version) {
        // The EtherType decides, as in `parse`.
        return None;
    }
    let skb_len = ctx.len() as usize;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    match version {
        4 => {
            if at(ip + 9) != IPPROTO_TCP {
                return Some(Ok(None));
            }
            let ihl = ((at(ip) & 0x0f) as usize) * 4;
            let frag = be16_at(ip + 6);
            if ihl < 20 || frag & 0x3fff != 0 {
                return Some(Err(()));
            }
            if ihl != 20 {
                // Options: the TCP header's place is not a constant.
                return None;
            }
            let tot_len = be16_at(ip + 2) as usize;
            // SAFETY: ip + 20 <= end was checked.
            unsafe {
                core::ptr::copy_nonoverlapping((ip + 12) as *const u8, saddr.as_mut_ptr(), 4);
                core::ptr::copy_nonoverlapping((ip + 16) as *const u8, daddr.as_mut_ptr(), 4);
            }
            let ip_end = if tot_len == 0 { skb_len } else { OFF + tot_len };
            let tcp = ip + 20;
            if tcp + 20 > end {
                return None;
            }
            Some(tcp_packet(
                tcp_fields_at(tcp),
                (family::IPV4, saddr, daddr),
                OFF + 20,
                ip_end,
                skb_len,
            ))
        }
        6 => {
            if ip + 40 > end {
                return None;
            }
            let nh = at(ip + 6);
            if nh != IPPROTO_TCP {
                return if matches!(nh, 0 | 43 | 44 | 51 | 60) {
                    None
                } else {
                    Some(Ok(None))
                };
            }
            let plen = be16_at(ip + 4) as usize;
            // SAFETY: ip + 40 <= end was checked.
            unsafe {
                core::ptr::copy_nonoverlapping((ip + 8) as *const u8, saddr.as_mut_ptr(), 16);
                core::ptr::copy_nonoverlapping((ip + 24) as *const u8, daddr.as_mut_ptr(), 16);
            }
            let ip_end = if plen == 0 { skb_len } else { OFF + 40 + plen };
            // These lines repeat the IPv4 arm's on purpose: in one shared tail, LLVM may fold
            // the two constant offsets (20, 40) into one register offset, which the verifier
            // refuses without CAP_PERFMON (see `parse_linear`).
            let tcp = ip + 40;
            if tcp + 20 > end {
                return None;
            }
            Some(tcp_packet(
                tcp_fields_at(tcp),
                (family::IPV6, saddr, daddr),
                OFF + 40,
                ip_end,
                skb_len,
            ))
        }
        _ if announced.is_some() => None,
        _ => Some(Ok(None)),
    }
}

/// The TCP header's fields at packet address `tcp` (20 bytes there were checked).
#[inline(always)]
fn tcp_fields_at(tcp: usize) -> TcpFields {
    TcpFields {
        sport: be16_at(tcp),
        dport: be16_at(tcp + 2),
        seq: be32_at(tcp + 4),
        ack: be32_at(tcp + 8),
        doff: ((at(tcp + 12) >> 4) as usize) * 4,
        tcp_flags: at(tcp + 13),
    }
}

/// The TCP header's fields, however read.
struct TcpFields {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    /// Header length in bytes.
    doff: usize,
    tcp_flags: u8,
}

/// The packet, once its lengths are consistent: `Err` when the TCP header is too short, the IP
/// length runs past the skb, or the payload would start past the IP end.
#[inline(always)]
fn tcp_packet(
    tcp: TcpFields,
    (family, saddr, daddr): (u8, [u8; 16], [u8; 16]),
    l4: usize,
    ip_end: usize,
    skb_len: usize,
) -> Result<Option<Packet>, ()> {
    let payload_offset = l4 + tcp.doff;
    if tcp.doff < 20 || ip_end > skb_len || payload_offset > ip_end {
        return Err(());
    }
    Ok(Some(Packet {
        saddr,
        daddr,
        sport: tcp.sport,
        dport: tcp.dport,
        seq: tcp.seq,
        ack: tcp.ack,
        tcp_flags: tcp.tcp_flags,
        family,
        payload_offset: payload_offset as u32,
        payload_len: (ip_end - payload_offset) as u32,
    }))
}

/// Every packet [`parse_linear`] leaves, field by field through `bpf_skb_load_bytes`.
/// `Ok(None)`: not IP/TCP, nothing to do. `Err(())`: an IP packet we could not parse (counted).
#[inline(always)]
pub fn parse(ctx: &SkBuff, l2_len: usize) -> Result<Option<Packet>, ()> {
    let skb_len = ctx.len() as usize;
    let mut off = l2_len;
    let proto = if l2_len >= 14 {
        let mut proto = be16(ctx, 12)?;
        // At most two tags (802.1ad outer + 802.1Q inner). On most devices the kernel has already
        // moved the tag into skb metadata before TC ingress, and the frame carries none.
        off = 14;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(ctx, off + 2)?;
            off += 4;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                proto = be16(ctx, off + 2)?;
                off += 4;
            }
        }
        proto
    } else {
        // L3 device: the IP version is the first nibble.
        match byte(ctx, 0)? >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Ok(None),
        }
    };

    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    let (fam, l4, ip_end) = match proto {
        ETH_P_IP => {
            if byte(ctx, off + 9)? != IPPROTO_TCP {
                return Ok(None);
            }
            let ihl = ((byte(ctx, off)? & 0x0f) as usize) * 4;
            let tot_len = be16(ctx, off + 2)? as usize;
            let frag = be16(ctx, off + 6)?;
            // More-fragments or a fragment offset: the TCP payload is not all here.
            if ihl < 20 || frag & 0x3fff != 0 {
                return Err(());
            }
            let a: [u8; 4] = ctx.load(off + 12).map_err(|_| ())?;
            let b: [u8; 4] = ctx.load(off + 16).map_err(|_| ())?;
            saddr[..4].copy_from_slice(&a);
            daddr[..4].copy_from_slice(&b);
            // BIG TCP IPv4 GSO packets carry tot_len 0: the skb length is the truth then.
            let end = if tot_len == 0 { skb_len } else { off + tot_len };
            (family::IPV4, off + ihl, end)
        }
        ETH_P_IPV6 => {
            let plen = be16(ctx, off + 4)? as usize;
            let mut nh = byte(ctx, off + 6)?;
            saddr = ctx.load(off + 8).map_err(|_| ())?;
            daddr = ctx.load(off + 24).map_err(|_| ())?;
            // Payload length 0 is a jumbogram / BIG TCP: use the skb length.
            let end = if plen == 0 { skb_len } else { off + 40 + plen };
            let mut l4 = off + 40;
            let mut i = 0;
            while i < MAX_EXT_HEADERS {
                match nh {
                    // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                    0 | 43 | 60 => {
                        let next = byte(ctx, l4)?;
                        let len = (byte(ctx, l4 + 1)? as usize + 1) * 8;
                        nh = next;
                        l4 += len;
                    }
                    // Fragment header: only an unfragmented "atomic fragment" is usable.
                    44 => {
                        let next = byte(ctx, l4)?;
                        let fo = be16(ctx, l4 + 2)?;
                        if fo & 0xfff9 != 0 {
                            return Err(());
                        }
                        nh = next;
                        l4 += 8;
                    }
                    // Authentication header: (len + 2) * 4 bytes.
                    51 => {
                        let next = byte(ctx, l4)?;
                        let len = (byte(ctx, l4 + 1)? as usize + 2) * 4;
                        nh = next;
                        l4 += len;
                    }
                    _ => break,
                }
                i += 1;
            }
            if nh != IPPROTO_TCP {
                // Either another protocol or a chain longer than we walk.
                return if matches!(nh, 0 | 43 | 44 | 51 | 60) {
                    Err(())
                } else {
                    Ok(None)
                };
            }
            (family::IPV6, l4, end)
        }
        _ => return Ok(None),
    };

    tcp_packet(
        TcpFields {
            sport: be16(ctx, l4)?,
            dport: be16(ctx, l4 + 2)?,
            seq: be32(ctx, l4 + 4)?,
            ack: be32(ctx, l4 + 8)?,
            doff: ((byte(ctx, l4 + 12)? >> 4) as usize) * 4,
            tcp_flags: byte(ctx, l4 + 13)?,
        },
        (fam, saddr, daddr),
        l4,
        ip_end,
        skb_len,
    )
}
