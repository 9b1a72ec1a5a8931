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

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData};
use mirror_common::{EndpointKey, family, maps};

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
    pub(super) fn new(map: HashMap<MapData, EndpointKey, u8>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                map,
                closing: VecDeque::new(),
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
    }

    /// Endpoints waiting for their removal (for tests and diagnostics).
    pub fn pending_removals(&self) -> usize {
        lock(&self.inner).closing.len()
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
    fn families_with_the_same_bytes_are_distinct_keys() {
        let v4: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let v6: SocketAddr = "[7f00:2::]:80".parse().unwrap();
        assert_eq!(endpoint_key(v4).addr, endpoint_key(v6).addr);
        assert_ne!(endpoint_key(v4), endpoint_key(v6));
        assert_eq!(endpoint_key(v6).family, family::IPV6);
    }
}
