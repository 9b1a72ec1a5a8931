//! The ignore list: the local ends of the agent's own mirror connections, which the classifier
//! must never capture, so a mirror listening on a captured interface and port (directly, or
//! behind a DNAT rule) does not create a replay loop.
//!
//! Keyed by the local endpoint (address + ephemeral port), not by the 4-tuple: NAT in the output
//! path rewrites the mirror's end, which the agent's socket never sees, but leaves the agent's
//! own end alone. The classifier looks up both ends of every matched packet (see
//! [`mirror_common::EndpointKey`]).
//!
//! Use: bind the mirror socket to port 0, read its local address, [`FlowIgnore::ignore`] it, then
//! connect; when the socket is dropped, [`FlowIgnore::closed`] schedules the removal. The entry
//! stays [`FORGET_DELAY`] longer, for the FIN and ACKs still in flight through the classifier;
//! then it is removed (by [`FlowIgnore::purge`], run on every registration and periodically by
//! the live driver), so a later socket given the same port is captured again. The kernel map is
//! an LRU, so even a missed removal ages out instead of filling the map.
//!
//! Beside the map, a bit per port (`MIRROR_IGNORE_PORTS`): set while some entry has that port,
//! so the classifier looks the map up only for packets with such a port (most packets of a
//! node have none: two hash lookups saved per packet). A port's bit is set before its entry is
//! inserted, and cleared only once no entry with that port is left; an entry the LRU evicted
//! leaves its bit set, which costs lookups, never a capture.

use std::collections::{HashMap as StdHashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData};
use mirror_common::{EndpointKey, IGNORE_PORT_WORDS, family, ignore_port_bit, maps};

use super::CaptureError;
use crate::sync::lock;

/// How long an entry outlives its connection. On `lo` the last packets of a close are queued to
/// the backlog and classified later; a second covers that with a wide margin, while the kernel's
/// `bind(port 0)` hands out a just-freed port again only after cycling through the range.
pub const FORGET_DELAY: Duration = Duration::from_secs(1);

/// Cloneable handle to the kernel ignore map.
#[derive(Clone)]
pub struct FlowIgnore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    map: HashMap<MapData, EndpointKey, u8>,
    /// Endpoints of closed connections and when to remove them (FIFO: one delay for all).
    closing: VecDeque<(Instant, EndpointKey)>,
    ports: PortBits,
}

/// `MIRROR_IGNORE_PORTS`: the kernel array and the counts that decide its bits.
struct PortBits {
    map: Array<MapData, u64>,
    /// The kernel array's words as last written (userspace is their only writer).
    words: Vec<u64>,
    counts: PortCounts,
}

/// The endpoints registered and not yet removed, and how many of them have each port: a port's
/// bit is set while its count is above zero.
#[derive(Default)]
struct PortCounts {
    registered: HashSet<EndpointKey>,
    per_port: StdHashMap<u16, u32>,
}

impl PortCounts {
    /// Registers `key`: true when its port's bit must be set now.
    fn add(&mut self, key: EndpointKey) -> bool {
        if !self.registered.insert(key) {
            return false;
        }
        let count = self.per_port.entry(key.port).or_default();
        *count += 1;
        *count == 1
    }

    /// Forgets `key`: true when its port's bit must be cleared now.
    fn remove(&mut self, key: &EndpointKey) -> bool {
        if !self.registered.remove(key) {
            return false;
        }
        let Some(count) = self.per_port.get_mut(&key.port) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.per_port.remove(&key.port);
        true
    }
}

impl PortBits {
    /// Before `key` goes into the ignore map.
    fn add(&mut self, key: EndpointKey) -> Result<(), CaptureError> {
        if self.counts.add(key) {
            self.write(key.port, true)?;
        }
        Ok(())
    }

    /// After `key` left the ignore map.
    fn remove(&mut self, key: &EndpointKey) {
        if self.counts.remove(key) {
            // A failed write leaves the bit set: lookups, never a wrong capture.
            let _ = self.write(key.port, false);
        }
    }

    fn write(&mut self, port: u16, set: bool) -> Result<(), CaptureError> {
        let (word, bit) = ignore_port_bit(port);
        let value = &mut self.words[word as usize];
        if set {
            *value |= bit;
        } else {
            *value &= !bit;
        }
        self.map
            .set(word, *value, 0)
            .map_err(|source| CaptureError::Map {
                name: maps::IGNORE_PORTS,
                source,
            })
    }
}

impl std::fmt::Debug for FlowIgnore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowIgnore")
    }
}

/// The map key of a local endpoint. IPv4-mapped IPv6 addresses are stored as IPv4, which is what
/// the wire carries for such sockets.
pub fn endpoint_key(ep: SocketAddr) -> EndpointKey {
    let mut addr = [0u8; 16];
    let fam = match ep.ip().to_canonical() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            family::IPV4
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            family::IPV6
        }
    };
    EndpointKey {
        addr,
        port: ep.port(),
        family: fam,
        _pad: 0,
    }
}

impl FlowIgnore {
    pub(super) fn new(map: HashMap<MapData, EndpointKey, u8>, ports: Array<MapData, u64>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                map,
                closing: VecDeque::new(),
                ports: PortBits {
                    map: ports,
                    words: vec![0; IGNORE_PORT_WORDS as usize],
                    counts: PortCounts::default(),
                },
            })),
        }
    }

    /// Never capture the connection whose local end is `local` (`remote` is where it goes
    /// before any NAT; only logged, since NAT may change it).
    pub fn ignore(&self, local: SocketAddr, remote: SocketAddr) -> Result<(), CaptureError> {
        let key = endpoint_key(local);
        let mut inner = lock(&self.inner);
        inner.purge(Instant::now());
        // A pending removal of the same endpoint (a port the agent got again) must not remove
        // the new registration.
        inner.closing.retain(|(_, k)| *k != key);
        tracing::trace!(%local, %remote, "ignoring the agent's own connection");
        inner.ports.add(key)?;
        inner
            .map
            .insert(key, 1, 0)
            .map_err(|source| CaptureError::Map {
                name: maps::IGNORE,
                source,
            })
    }

    /// The connection registered with [`ignore`](Self::ignore) is closed: remove it after
    /// [`FORGET_DELAY`].
    pub fn closed(&self, local: SocketAddr) {
        let mut inner = lock(&self.inner);
        inner
            .closing
            .push_back((Instant::now() + FORGET_DELAY, endpoint_key(local)));
    }

    /// Removes the entries whose delay has passed.
    pub fn purge(&self) {
        lock(&self.inner).purge(Instant::now());
    }

    /// Removes a connection registered with [`ignore`](Self::ignore) now (missing entries are
    /// fine).
    pub fn forget(&self, local: SocketAddr, _remote: SocketAddr) {
        let key = endpoint_key(local);
        let mut inner = lock(&self.inner);
        inner.closing.retain(|(_, k)| *k != key);
        let _ = inner.map.remove(&key);
        inner.ports.remove(&key);
    }

    /// Endpoints waiting for their removal (for tests and diagnostics).
    pub fn pending_removals(&self) -> usize {
        lock(&self.inner).closing.len()
    }

    /// Ports whose bit is set in `MIRROR_IGNORE_PORTS` (for tests and diagnostics).
    pub fn ports_flagged(&self) -> usize {
        lock(&self.inner).ports.counts.per_port.len()
    }
}

impl Inner {
    fn purge(&mut self, now: Instant) {
        while let Some(&(due, key)) = self.closing.front() {
            if due > now {
                break;
            }
            self.closing.pop_front();
            // Missing is fine: the LRU may have evicted it.
            let _ = self.map.remove(&key);
            self.ports.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_store_ipv4_in_first_bytes_and_unmap_v4_mapped() {
        let a: SocketAddr = "10.1.2.3:80".parse().unwrap();
        let b: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(endpoint_key(a), endpoint_key(b));
        assert_eq!(&endpoint_key(a).addr[..4], &[10, 1, 2, 3]);
        assert_eq!(endpoint_key(a).addr[4..], [0u8; 12]);
        assert_eq!(endpoint_key(a).port, 80);
        assert_eq!(endpoint_key(a).family, family::IPV4);
    }

    #[test]
    fn a_ports_bit_stays_while_any_endpoint_with_that_port_is_registered() {
        let key = |ep: &str| endpoint_key(ep.parse().unwrap());
        let (a, b, c) = (
            key("10.0.0.1:40000"),
            key("10.0.0.2:40000"),
            key("10.0.0.1:40001"),
        );
        let mut counts = PortCounts::default();
        assert!(counts.add(a), "first endpoint with the port: set");
        assert!(!counts.add(a), "registered again: nothing to write");
        assert!(!counts.add(b), "same port, other address: already set");
        assert!(counts.add(c), "another port: set");
        assert!(!counts.remove(&a), "b still has the port");
        assert!(!counts.remove(&a), "a removed twice: nothing to write");
        assert!(counts.remove(&b), "the last endpoint with the port: clear");
        assert!(!counts.remove(&key("10.0.0.9:1")), "never registered");
        assert!(counts.remove(&c));
        assert!(counts.per_port.is_empty() && counts.registered.is_empty());
    }

    #[test]
    fn families_with_the_same_bytes_are_distinct_keys() {
        let v4: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let v6: SocketAddr = "[7f00:2::]:80".parse().unwrap();
        assert_eq!(endpoint_key(v4).addr, endpoint_key(v6).addr);
        assert_ne!(endpoint_key(v4), endpoint_key(v6));
        assert_eq!(endpoint_key(v6).family, family::IPV6);
    }
}
