//! The ignore list: flows the classifier must never capture (the agent's own mirror connections),
//! so a mirror listening on a captured interface and port does not create a replay loop.
//!
//! Use: bind the mirror socket to port 0, read its local address, [`FlowIgnore::ignore`] it with
//! the mirror's address, then connect. The kernel map is an LRU, so a forgotten entry ages out
//! instead of filling the map.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap, MapData};
use mirror_common::{FlowKey, maps};

use super::CaptureError;

/// Cloneable handle to the kernel ignore map.
#[derive(Clone)]
pub struct FlowIgnore {
    map: Arc<Mutex<HashMap<MapData, FlowKey, u8>>>,
}

impl std::fmt::Debug for FlowIgnore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowIgnore")
    }
}

/// The map key of the direction `src -> dst`.
pub fn flow_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    FlowKey {
        saddr: octets(src.ip()),
        daddr: octets(dst.ip()),
        sport: src.port(),
        dport: dst.port(),
    }
}

/// Address bytes as the classifier stores them: IPv4 in the first 4 bytes. IPv4-mapped IPv6
/// addresses are stored as IPv4, which is what the wire carries for such sockets.
fn octets(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

impl FlowIgnore {
    pub(super) fn new(map: HashMap<MapData, FlowKey, u8>) -> Self {
        Self {
            map: Arc::new(Mutex::new(map)),
        }
    }

    /// Never capture the connection between `local` and `remote` (both directions).
    pub fn ignore(&self, local: SocketAddr, remote: SocketAddr) -> Result<(), CaptureError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for key in [flow_key(local, remote), flow_key(remote, local)] {
            map.insert(key, 1, 0).map_err(|source| CaptureError::Map {
                name: maps::IGNORE,
                source,
            })?;
        }
        Ok(())
    }

    /// Removes a connection registered with [`ignore`](Self::ignore) (missing entries are fine).
    pub fn forget(&self, local: SocketAddr, remote: SocketAddr) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for key in [flow_key(local, remote), flow_key(remote, local)] {
            let _ = map.remove(&key);
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
        let c: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(flow_key(a, c), flow_key(b, c));
        assert_eq!(&flow_key(a, c).saddr[..4], &[10, 1, 2, 3]);
        assert_eq!(flow_key(a, c).saddr[4..], [0u8; 12]);
        assert_eq!(flow_key(a, c).sport, 80);
        assert_eq!(flow_key(c, a).dport, 80);
    }
}
