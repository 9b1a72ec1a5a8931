//! Bodies nobody needs: telling the ingress programs to stop copying a client's bytes up to the
//! end of a request body that no output keeps (see `HttpLimits::omit_bodies_over`).
//!
//! The pipeline knows, once a head is framed, where its body ends in the client's sequence
//! space; the live driver hands that here, and the programs then record each skb that lies
//! wholly before that point as a header without payload (`record_flags::SKIPPED`, decoded as
//! zeros the framer counts and drops), and delete the entry on reaching it. Only bytes a
//! request body covers are ever skipped: an skb that reaches past the end is copied whole. The
//! map is an LRU: a full map forgets its oldest flow, whose bytes are then copied again.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, MapData};
use mirror_common::{FlowKey, family};

/// The kernel's map of flows in a skipped body.
pub struct BodySkip {
    map: HashMap<MapData, FlowKey, u32>,
    requested: u64,
    failed: u64,
}

/// What [`BodySkip`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipStats {
    /// Bodies the programs were told to skip.
    pub requested: u64,
    /// Map updates that failed (the body is then copied as usual).
    pub failed: u64,
}

/// The map key of the flow from `client` to `server`; `None` for a pair of different families.
pub fn flow_key(client: SocketAddr, server: SocketAddr) -> Option<FlowKey> {
    let bytes = |ip: IpAddr| match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (b, family::IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), family::IPV6),
    };
    let (saddr, fam) = bytes(client.ip());
    let (daddr, fam2) = bytes(server.ip());
    (fam == fam2).then_some(FlowKey {
        saddr,
        daddr,
        sport: client.port(),
        dport: server.port(),
        family: fam,
        _pad: 0,
        _pad2: 0,
    })
}

impl BodySkip {
    pub(super) fn new(map: HashMap<MapData, FlowKey, u32>) -> Self {
        Self {
            map,
            requested: 0,
            failed: 0,
        }
    }

    /// The client's bytes of this flow before `until_seq` need not be copied.
    pub fn skip_until(&mut self, client: SocketAddr, server: SocketAddr, until_seq: u32) {
        let Some(key) = flow_key(client, server) else {
            return;
        };
        match self.map.insert(key, until_seq, 0) {
            Ok(()) => self.requested += 1,
            Err(e) => {
                self.failed += 1;
                if self.failed == 1 {
                    tracing::warn!(error = %e, "cannot tell capture to skip a body (counted)");
                }
            }
        }
    }

    pub fn stats(&self) -> SkipStats {
        SkipStats {
            requested: self.requested,
            failed: self.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_client_to_server_with_mapped_addresses_as_ipv4() {
        let k = flow_key(
            "[::ffff:10.0.0.2]:40000".parse().unwrap(),
            "10.0.0.1:8080".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(&k.saddr[..4], &[10, 0, 0, 2]);
        assert_eq!(&k.daddr[..4], &[10, 0, 0, 1]);
        assert_eq!((k.sport, k.dport, k.family), (40000, 8080, family::IPV4));
        assert!(
            flow_key(
                "10.0.0.2:1".parse().unwrap(),
                "[fd00::1]:2".parse().unwrap()
            )
            .is_none()
        );
    }
}
