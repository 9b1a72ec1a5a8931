//! Following `--iface` patterns: which interface names they take, what interfaces exist now, and
//! the kernel's link notifications (rtnetlink group `RTNLGRP_LINK`) that say when an interface
//! appears, is renamed or goes away. Owns matching and the event stream; attaching and
//! detaching are [`super::Interfaces`]'.
//!
//! The notification socket subscribes before the first listing, so an interface created between
//! the two is seen at least once (a repeated event changes nothing). When the kernel drops
//! notifications because the socket's buffer was full (`ENOBUFS`), the stream says so
//! ([`LinkEvent::Resync`]) and the caller compares the whole list again.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// `RTNLGRP_LINK`: link notifications.
const RTNLGRP_LINK: u32 = 1;
/// Longest interface name (`IFNAMSIZ` less the NUL).
const MAX_NAME: usize = 15;

/// One `--iface` entry: an interface name, or a shell-style glob (`*`, `?`, `[...]`).
#[derive(Debug, Clone)]
enum IfacePattern {
    Name(String),
    Glob(glob::Pattern),
}

/// The `--iface` entries.
#[derive(Debug, Clone)]
pub struct IfacePatterns(Vec<IfacePattern>);

impl IfacePatterns {
    /// Parses the entries; a one-line reason for the first bad one.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        if entries.is_empty() {
            return Err("no interface given".into());
        }
        entries
            .iter()
            .map(|e| {
                if e.is_empty() {
                    Err("an empty interface name".to_owned())
                } else if e.contains(['*', '?', '[']) {
                    glob::Pattern::new(e)
                        .map(IfacePattern::Glob)
                        .map_err(|err| format!("`{e}` is not a valid glob: {}", err.msg))
                } else if e.len() > MAX_NAME || e.contains(['/', ' ', ':']) {
                    Err(format!("`{e}` cannot be an interface name"))
                } else {
                    Ok(IfacePattern::Name(e.clone()))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether any entry is a glob: then interfaces are followed as they come and go.
    pub fn follows(&self) -> bool {
        self.0.iter().any(|p| matches!(p, IfacePattern::Glob(_)))
    }

    /// The plain names, which must exist when the agent starts.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            IfacePattern::Name(n) => Some(n.as_str()),
            IfacePattern::Glob(_) => None,
        })
    }

    /// Whether `name` is one of the names or matches one of the globs.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| match p {
            IfacePattern::Name(n) => n == name,
            IfacePattern::Glob(g) => g.matches(name),
        })
    }
}

/// The interfaces of the caller's network namespace now: (ifindex, name).
pub fn interfaces_now() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, or null on error.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut entry = list;
    // SAFETY: walking the array up to its terminating entry; names are NUL-terminated C strings
    // owned by the array, copied before it is freed.
    unsafe {
        while (*entry).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// What a link notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface exists under this name (new, changed or renamed).
    Present { index: u32, name: String },
    /// The interface is gone.
    Gone { index: u32 },
    /// Notifications were lost: compare the whole list again.
    Resync,
}

/// A netlink socket subscribed to link notifications, not yet read asynchronously (made before
/// the tokio runtime exists, see [`crate::privileges`]).
pub struct LinkSocket(Socket);

impl LinkSocket {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(RTNLGRP_LINK)?;
        socket.set_non_blocking(true)?;
        Ok(Self(socket))
    }

    /// Registers the socket with the current tokio runtime.
    pub fn start(self) -> io::Result<LinkMonitor> {
        // SAFETY: the Socket owns its fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let socket = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(LinkMonitor {
            socket,
            buf: Vec::with_capacity(1 << 16),
        })
    }
}

/// Link notifications, read asynchronously.
pub struct LinkMonitor {
    socket: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Waits for notifications and returns what they say, in order (never empty).
    pub async fn next(&mut self) -> io::Result<Vec<LinkEvent>> {
        loop {
            let mut guard = self.socket.readable().await?;
            let mut events = Vec::new();
            loop {
                self.buf.clear();
                match guard.get_inner().recv(&mut self.buf, 0) {
                    Ok(0) => break,
                    Ok(_) => decode(&self.buf, &mut events),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        events.push(LinkEvent::Resync);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// The link events in one datagram; other messages are skipped, and a message that does not
/// decode asks for a resync rather than being guessed at.
fn decode(datagram: &[u8], out: &mut Vec<LinkEvent>) {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            out.push(LinkEvent::Resync);
            return;
        }
        let one = &rest[..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(one) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    match name_of(&link) {
                        Some(name) => out.push(LinkEvent::Present {
                            index: link.header.index,
                            name,
                        }),
                        None => out.push(LinkEvent::Resync),
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    out.push(LinkEvent::Gone {
                        index: link.header.index,
                    });
                }
                _ => {}
            },
            Err(_) => out.push(LinkEvent::Resync),
        }
    }
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;

    use super::*;

    fn patterns(list: &[&str]) -> Result<IfacePatterns, String> {
        IfacePatterns::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn names_and_globs() {
        let p = patterns(&["eth0", "cali*", "veth[0-9]?"]).unwrap();
        assert!(p.follows());
        assert_eq!(p.names().collect::<Vec<_>>(), ["eth0"]);
        for yes in ["eth0", "cali", "cali12ab", "veth1a"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["eth1", "xcali", "vethab", "veth1", "lo"] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(!patterns(&["lo"]).unwrap().follows());
        assert_eq!(
            patterns(&["veth[0-"]).unwrap_err(),
            "`veth[0-` is not a valid glob: invalid range pattern"
        );
        assert_eq!(
            patterns(&["a-very-long-interface"]).unwrap_err(),
            "`a-very-long-interface` cannot be an interface name"
        );
        assert!(patterns(&[""]).is_err());
        assert!(patterns(&[]).is_err());
    }

    #[test]
    fn lists_this_namespace_interfaces() {
        let now = interfaces_now().unwrap();
        assert!(now.iter().any(|(i, n)| *i == 1 && n == "lo"), "{now:?}");
    }

    fn message(payload: RouteNetlinkMessage) -> Vec<u8> {
        let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn decodes_new_and_deleted_links_and_asks_for_a_resync_on_garbage() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.attributes.push(LinkAttribute::IfName("cali1".into()));
        let mut gone = LinkMessage::default();
        gone.header.index = 9;
        let mut datagram = message(RouteNetlinkMessage::NewLink(link));
        datagram.extend(message(RouteNetlinkMessage::DelLink(gone)));
        let mut events = Vec::new();
        decode(&datagram, &mut events);
        assert_eq!(
            events,
            [
                LinkEvent::Present {
                    index: 7,
                    name: "cali1".into()
                },
                LinkEvent::Gone { index: 9 }
            ]
        );
        let mut events = Vec::new();
        decode(&[0xff; 40], &mut events);
        assert_eq!(events, [LinkEvent::Resync]);
        // A new link without a name cannot be matched: compare the whole list.
        let mut events = Vec::new();
        decode(
            &message(RouteNetlinkMessage::NewLink(LinkMessage::default())),
            &mut events,
        );
        assert_eq!(events, [LinkEvent::Resync]);
    }
}
