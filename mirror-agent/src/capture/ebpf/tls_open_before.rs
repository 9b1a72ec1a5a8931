//! Connections of the captured ports that were open before the TLS probes were attached: the
//! kernel never saw them established, so it has no endpoints for them, and their first call
//! after attaching is matched through the process's fd (syscall tracepoints) to the procfs
//! snapshot taken at start.
//!
//! Owns that snapshot and the transition out of it. The syscall tracepoints put every syscall
//! of the node on the kernel's slower tracing path, and while `config::TLS_OPEN_BEFORE` is set
//! the kernel copies calls on sockets it does not know (another service's HTTPS) until
//! userspace tells them apart. Both are needed only until each server-side connection of the
//! snapshot is accounted for: its first call resolved (from then on the kernel follows its
//! socket), or its close seen (the kernel reports the close of an unknown socket of a captured
//! port while the flag is set). Then the tracepoints are detached and the flag cleared
//! ([`OpenBefore::settle`]). A connection that stays idle and open keeps them on.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use aya::maps::{Array, MapData};
use aya::programs::trace_point::TracePointLink;
use mirror_common::config;

use crate::capture::tls_stream;

/// (pid, fd) → (local, remote) of the connections open at start.
pub type Snapshot = HashMap<(u32, i32), (SocketAddr, SocketAddr)>;

/// See the module docs.
pub struct OpenBefore {
    snapshot: Snapshot,
    /// Server-side connections of the snapshot (local port captured) not accounted for yet.
    pending: HashSet<(u32, i32)>,
    /// The syscall tracepoints: detached when dropped.
    links: Vec<TracePointLink>,
    /// The programs' settings, to clear `TLS_OPEN_BEFORE` (`None`: nothing to clear).
    config: Option<Array<MapData, u64>>,
    /// Nothing is pending any more (the flag cleared).
    settled: bool,
    /// The syscall tracepoints were attached and are detached now.
    detached: bool,
    /// Connections of the snapshot that closed without a TLS call after attaching.
    closed_idle: u64,
}

impl OpenBefore {
    /// `ports`: the captured (server) ports; `links`: the syscall tracepoints attached for
    /// the snapshot's fds; `config`: the settings map, when `TLS_OPEN_BEFORE` was set.
    pub fn new(
        snapshot: Snapshot,
        ports: &[u16],
        links: Vec<TracePointLink>,
        config: Option<Array<MapData, u64>>,
    ) -> Self {
        let pending = snapshot
            .iter()
            .filter(|(_, (local, _))| ports.contains(&local.port()))
            .map(|(k, _)| *k)
            .collect();
        Self {
            snapshot,
            pending,
            links,
            config,
            settled: false,
            detached: false,
            closed_idle: 0,
        }
    }

    /// The endpoints of `pid`'s socket `fd` if it was open at start; a server-side one is
    /// accounted for from now on.
    pub fn resolve(&mut self, pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
        let endpoints = self.snapshot.get(&(pid, fd)).copied()?;
        self.pending.remove(&(pid, fd));
        Some(endpoints)
    }

    /// The kernel's close record for (local, remote): whether it was a pending connection of
    /// the snapshot (closed without a call: nothing else knows it).
    pub fn on_close(&mut self, local: SocketAddr, remote: SocketAddr) -> bool {
        // The kernel gives an IPv4 peer of an IPv6 socket as IPv4; procfs as IPv4-mapped.
        let unmapped =
            |(l, r): (SocketAddr, SocketAddr)| (tls_stream::unmapped(l), tls_stream::unmapped(r));
        let Some(key) = self
            .pending
            .iter()
            .copied()
            .find(|k| self.snapshot.get(k).copied().map(unmapped) == Some((local, remote)))
        else {
            return false;
        };
        self.pending.remove(&key);
        self.closed_idle += 1;
        true
    }

    /// Once nothing is pending: the syscall tracepoints detached, `TLS_OPEN_BEFORE` cleared
    /// (calls on unknown sockets are then counted in the kernel, not copied). Cheap otherwise.
    pub fn settle(&mut self) {
        if self.settled || !self.pending.is_empty() {
            return;
        }
        self.settled = true;
        let had_links = !self.links.is_empty();
        self.links.clear();
        if let Some(c) = &mut self.config
            && let Err(e) = c.set(config::TLS_OPEN_BEFORE, 0, 0)
        {
            tracing::warn!(error = %e, "TLS: clearing TLS_OPEN_BEFORE failed");
        }
        if had_links {
            self.detached = true;
            tracing::info!(
                closed_idle = self.closed_idle,
                "TLS: every connection open at start is accounted for: syscall tracepoints \
                 detached"
            );
        }
    }

    /// Server-side connections of the snapshot still unaccounted for.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The syscall tracepoints were attached for the snapshot and are detached now.
    pub fn detached(&self) -> bool {
        self.detached
    }

    pub fn closed_idle(&self) -> u64 {
        self.closed_idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server-side connections are pending until resolved by a call or closed (the kernel
    /// gives an IPv4 peer of an IPv6 socket as IPv4, procfs as IPv4-mapped); client-side ones
    /// never are. Nothing pending: settled.
    #[test]
    fn pending_until_each_server_side_connection_is_accounted_for() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        let snapshot: Snapshot = [
            ((10, 4), (sock("10.0.0.2:443"), sock("10.0.0.1:50000"))),
            (
                (10, 5),
                (
                    sock("[::ffff:10.0.0.2]:443"),
                    sock("[::ffff:10.0.0.1]:50001"),
                ),
            ),
            // A client on the node, connected to the captured port: not pending.
            ((20, 3), (sock("10.0.0.1:50002"), sock("10.0.0.2:443"))),
        ]
        .into_iter()
        .collect();
        let mut ob = OpenBefore::new(snapshot, &[443], Vec::new(), None);
        assert_eq!(ob.pending(), 2);
        ob.settle();
        assert!(!ob.settled);
        assert_eq!(
            ob.resolve(10, 4),
            Some((sock("10.0.0.2:443"), sock("10.0.0.1:50000")))
        );
        assert_eq!(ob.resolve(10, 99), None);
        assert!(ob.resolve(20, 3).is_some(), "client sides resolve too");
        assert_eq!(ob.pending(), 1);
        assert!(
            !ob.on_close(sock("10.0.0.2:443"), sock("10.0.0.1:50000")),
            "already accounted for"
        );
        assert!(ob.on_close(sock("10.0.0.2:443"), sock("10.0.0.1:50001")));
        assert_eq!((ob.pending(), ob.closed_idle()), (0, 1));
        ob.settle();
        assert!(ob.settled);
        assert!(!ob.detached(), "no tracepoints were attached here");
    }
}
