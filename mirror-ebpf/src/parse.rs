//! Header parsing for the classifiers: link layer (optional VLAN tags), IPv4 or IPv6 (with a
//! bounded walk over extension headers), TCP.
//!
//! All reads go through `bpf_skb_load_bytes` (`SkBuff::load`), which also works on the
//! non-linear part of GRO skbs; direct packet access would need bounds checks against
//! `data_end` for every field and only sees the linear head.

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

    let sport = be16(ctx, l4)?;
    let dport = be16(ctx, l4 + 2)?;
    let seq = be32(ctx, l4 + 4)?;
    let ack = be32(ctx, l4 + 8)?;
    let doff = ((byte(ctx, l4 + 12)? >> 4) as usize) * 4;
    let tcp_flags = byte(ctx, l4 + 13)?;
    let payload_offset = l4 + doff;
    if doff < 20 || ip_end > skb_len || payload_offset > ip_end {
        return Err(());
    }
    Ok(Some(Packet {
        saddr,
        daddr,
        sport,
        dport,
        seq,
        ack,
        tcp_flags,
        family: fam,
        payload_offset: payload_offset as u32,
        payload_len: (ip_end - payload_offset) as u32,
    }))
}
