//! Which local mirror is really the primary: the listening TCP sockets of this network namespace
//! (`/proc/net/tcp`, `/proc/net/tcp6`) decide whether a mirror address on a captured port would be
//! accepted by the primary's listener or by a distinct service.
//!
//! Owns reading and parsing those two files and the decision ([`classify`]); it does not resolve
//! names or know about settings (that is `Settings::check_not_primary`).
//!
//! Hand-parsed rather than with the `procfs` crate: two files of fixed columns, of which we read
//! two (local address, state), do not justify its dependency tree; the format is a stable kernel
//! ABI (`net/ipv4/tcp_ipv4.c` `get_tcp4_sock`, `net/ipv6/tcp_ipv6.c` `get_tcp6_sock`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `TCP_LISTEN` as `/proc/net/tcp` prints the state column.
const STATE_LISTEN: &str = "0A";

/// Local addresses of the listening sockets in one `/proc/net/tcp{,6}` text. Lines that do not
/// parse are skipped (the header, and any future format we do not know: the caller then sees
/// fewer listeners, which only makes the check stricter).
pub fn parse_proc_net_tcp(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let _slot = cols.next()?;
            let local = cols.next()?;
            let _remote = cols.next()?;
            (cols.next()? == STATE_LISTEN).then(|| parse_endpoint(local))?
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6) and a port. The kernel prints each 32-bit word
/// of the address as a number in host byte order, so its native-endian bytes are the wire bytes.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            // `::ffff:a.b.c.d` listeners accept IPv4 at a.b.c.d.
            Ipv6Addr::from(b).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The listening sockets of this network namespace, both families.
pub fn read() -> Vec<SocketAddr> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| parse_proc_net_tcp(&t))
        .collect()
}

/// What the listeners say about a local mirror address on a captured port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing listens on the port: the primary is not up, so a local mirror there cannot be told
    /// apart from it (refused: mirroring the primary onto itself doubles every request).
    NothingListens,
    /// The only listener on the port (by address; SO_REUSEPORT groups count once) would accept
    /// the mirror's connections: that is the primary.
    OnlyListener(SocketAddr),
    /// A wildcard listener would accept the mirror's connections; it also serves the captured
    /// traffic, so it is the primary.
    Wildcard(SocketAddr),
    /// A listener bound to the mirror's own address, next to other listeners on the port: a
    /// distinct service (loop protection then rests on the kernel ignore map).
    Distinct(SocketAddr),
    /// Listeners exist on the port, none would accept at the mirror's address: not the primary
    /// (the connection is refused, or NAT sends it elsewhere).
    NotAccepted,
}

impl Verdict {
    /// Why the mirror is the primary, or `None` when it is not.
    pub fn refusal(&self, port: u16) -> Option<String> {
        match self {
            Verdict::NothingListens => Some(format!(
                "nothing listens on captured port {port} yet, so it cannot be told apart from \
                 the primary (start the primary first)"
            )),
            Verdict::OnlyListener(l) => Some(format!(
                "it reaches {l}, the only listener on captured port {port}"
            )),
            Verdict::Wildcard(l) => Some(format!(
                "it reaches the wildcard listener {l}, which serves captured port {port}"
            )),
            Verdict::Distinct(_) | Verdict::NotAccepted => None,
        }
    }
}

/// Decides for the local address `mirror` (on a captured port) given the namespace's listeners.
pub fn classify(listeners: &[SocketAddr], mirror: SocketAddr) -> Verdict {
    let ip = mirror.ip().to_canonical();
    let on_port: BTreeSet<IpAddr> = listeners
        .iter()
        .filter(|l| l.port() == mirror.port())
        .map(|l| l.ip().to_canonical())
        .collect();
    if on_port.is_empty() {
        return Verdict::NothingListens;
    }
    let at = |a: IpAddr| SocketAddr::new(a, mirror.port());
    // The kernel delivers to the socket bound to the exact address first, else to a wildcard.
    // `::` may accept IPv4 too (unless IPV6_V6ONLY, which /proc does not show): assume it does,
    // the stricter reading.
    if on_port.contains(&ip) && !ip.is_unspecified() {
        return if on_port.len() == 1 {
            Verdict::OnlyListener(at(ip))
        } else {
            Verdict::Distinct(at(ip))
        };
    }
    let wildcard = on_port
        .iter()
        .find(|a| a.is_unspecified() && (a.is_ipv6() || ip.is_ipv4() || ip.is_unspecified()));
    match wildcard {
        Some(&w) => Verdict::Wildcard(at(w)),
        None if ip.is_unspecified() => Verdict::OnlyListener(at(*on_port.first().unwrap_or(&ip))),
        None => Verdict::NotAccepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Hex of an address word as the kernel prints it on this machine.
    fn word(b: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(b))
    }

    fn tcp_line(ip: [u8; 4], port: u16, state: &str) -> String {
        format!(
            "   0: {}:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0",
            word(ip)
        )
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    #[test]
    fn parses_ipv4_listeners_and_skips_other_states() {
        let text = [
            HEADER.to_string(),
            tcp_line([127, 0, 0, 1], 8080, "0A"),
            tcp_line([127, 0, 0, 2], 8080, "0A"),
            tcp_line([10, 0, 0, 1], 8080, "01"), // ESTABLISHED
            tcp_line([0, 0, 0, 0], 22, "0A"),
            "garbage".into(),
        ]
        .join("\n");
        assert_eq!(
            parse_proc_net_tcp(&text),
            vec![a("127.0.0.1:8080"), a("127.0.0.2:8080"), a("0.0.0.0:22")]
        );
    }

    #[test]
    fn parses_ipv6_listeners_and_unmaps_v4_mapped() {
        let v6 = |addr: Ipv6Addr, port: u16| {
            let o = addr.octets();
            let hex: String = (0..4)
                .map(|i| word([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]))
                .collect();
            format!(
                "   1: {hex}:{port:04X} {}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0",
                "0".repeat(32)
            )
        };
        let text = [
            HEADER.to_string(),
            v6(Ipv6Addr::UNSPECIFIED, 80),
            v6("fd77::1".parse().unwrap(), 8080),
            v6("::ffff:127.0.0.5".parse().unwrap(), 9000),
        ]
        .join("\n");
        assert_eq!(
            parse_proc_net_tcp(&text),
            vec![a("[::]:80"), a("[fd77::1]:8080"), a("127.0.0.5:9000")]
        );
    }

    #[test]
    fn parses_this_machines_files_without_error() {
        // Whatever is listening here, every line of the real files either parses or is skipped.
        let _ = read();
    }

    #[test]
    fn the_only_listener_is_the_primary() {
        let l = [a("127.0.0.1:8080"), a("0.0.0.0:22")];
        assert_eq!(
            classify(&l, a("127.0.0.1:8080")),
            Verdict::OnlyListener(a("127.0.0.1:8080"))
        );
        // SO_REUSEPORT: several sockets on one address are one listener.
        let l = [a("10.0.0.1:80"), a("10.0.0.1:80")];
        assert_eq!(
            classify(&l, a("10.0.0.1:80")),
            Verdict::OnlyListener(a("10.0.0.1:80"))
        );
    }

    #[test]
    fn a_wildcard_listener_is_the_primary() {
        for l in [
            vec![a("0.0.0.0:8080")],
            vec![a("[::]:8080")],
            vec![a("[::]:8080"), a("127.0.0.9:8080")],
        ] {
            let v = classify(&l, a("127.0.0.2:8080"));
            assert!(matches!(v, Verdict::Wildcard(_)), "{l:?}: {v:?}");
            assert!(v.refusal(8080).unwrap().contains("wildcard"));
        }
        assert_eq!(
            classify(&[a("[::]:80")], a("[::1]:80")),
            Verdict::Wildcard(a("[::]:80"))
        );
        // An IPv4 wildcard does not accept IPv6.
        assert_eq!(
            classify(&[a("0.0.0.0:80"), a("10.0.0.1:80")], a("[::1]:80")),
            Verdict::NotAccepted
        );
    }

    #[test]
    fn a_listener_on_the_mirror_address_next_to_others_is_distinct() {
        let l = [a("127.0.0.1:8080"), a("127.0.0.2:8080")];
        let v = classify(&l, a("127.0.0.2:8080"));
        assert_eq!(v, Verdict::Distinct(a("127.0.0.2:8080")));
        assert_eq!(v.refusal(8080), None);
        // Next to a wildcard primary, the specific listener still wins the mirror's connections.
        let l = [a("0.0.0.0:8080"), a("127.0.0.2:8080")];
        assert_eq!(
            classify(&l, a("127.0.0.2:8080")),
            Verdict::Distinct(a("127.0.0.2:8080"))
        );
        // IPv4-mapped mirror addresses compare as IPv4.
        assert_eq!(
            classify(&l, a("[::ffff:127.0.0.2]:8080")),
            Verdict::Distinct(a("127.0.0.2:8080"))
        );
    }

    #[test]
    fn nothing_listening_is_refused_and_an_unserved_address_is_not() {
        let v = classify(&[a("127.0.0.1:9090")], a("127.0.0.1:8080"));
        assert_eq!(v, Verdict::NothingListens);
        assert!(v.refusal(8080).unwrap().contains("nothing listens"));
        let v = classify(
            &[a("127.0.0.1:8080"), a("127.0.0.2:8080")],
            a("127.0.0.3:8080"),
        );
        assert_eq!(v, Verdict::NotAccepted);
        assert_eq!(v.refusal(8080), None);
    }

    #[test]
    fn an_unspecified_mirror_address_reaches_the_primary() {
        let v = classify(&[a("127.0.0.1:80")], a("0.0.0.0:80"));
        assert_eq!(v, Verdict::OnlyListener(a("127.0.0.1:80")));
        let v = classify(&[a("0.0.0.0:80")], a("0.0.0.0:80"));
        assert_eq!(v, Verdict::Wildcard(a("0.0.0.0:80")));
    }
}
