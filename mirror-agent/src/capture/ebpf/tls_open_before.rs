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
//! ([`OpenBefore::settle`]). A connection that stays idle and open would keep them on for as
//! long as it stays open (a pool of idle keep-alive connections on a busy node): after
//! `--tls-open-wait-secs` (60 s by default) the connections still pending are given up,
//! counted, and the transition happens anyway; their later calls are counted in the kernel as
//! calls on sockets it does not know (`tls_other_calls`), not read.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// When connections still pending are given up (`None`: never).
    give_up_at: Option<Instant>,
    /// Connections of the snapshot given up at `give_up_at`, still open and idle.
    given_up: u64,
}

impl OpenBefore {
    /// `ports`: the captured (server) ports; `links`: the syscall tracepoints attached for
    /// the snapshot's fds; `config`: the settings map, when `TLS_OPEN_BEFORE` was set;
    /// `wait`: how long pending connections are waited for from now (`None`: as long as they
    /// stay open).
    pub fn new(
        snapshot: Snapshot,
        ports: &[u16],
        links: Vec<TracePointLink>,
        config: Option<Array<MapData, u64>>,
        wait: Option<Duration>,
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
            give_up_at: wait.map(|w| Instant::now() + w),
            given_up: 0,
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

    /// Once nothing is pending, or at `now` past the wait (what is still pending is given up):
    /// the syscall tracepoints detached, `TLS_OPEN_BEFORE` cleared (calls on unknown sockets
    /// are then counted in the kernel, not copied). Cheap otherwise.
    pub fn settle(&mut self, now: Instant) {
        if self.settled {
            return;
        }
        if !self.pending.is_empty() {
            if self.give_up_at.is_none_or(|at| now < at) {
                return;
            }
            self.given_up = self.pending.len() as u64;
            self.pending.clear();
            tracing::warn!(
                connections = self.given_up,
                "TLS: connection(s) open at start still idle after --tls-open-wait-secs: no \
                 longer waited for (their later requests are not read, counted as \
                 tls_other_calls)"
            );
        }
        self.settled = true;
        // The flag first: from here the kernel counts calls on sockets it does not know
        // instead of copying them. Dropping the links (detaching) takes a while.
        if let Some(c) = &mut self.config
            && let Err(e) = c.set(config::TLS_OPEN_BEFORE, 0, 0)
        {
            tracing::warn!(error = %e, "TLS: clearing TLS_OPEN_BEFORE failed");
        }
        let had_links = !self.links.is_empty();
        self.links.clear();
        if had_links {
            self.detached = true;
            if self.given_up == 0 {
                tracing::info!(
                    closed_idle = self.closed_idle,
                    "TLS: every connection open at start is accounted for: syscall \
                     tracepoints detached"
                );
            } else {
                tracing::info!(
                    closed_idle = self.closed_idle,
                    given_up = self.given_up,
                    "TLS: connections open at start accounted for or given up: syscall \
                     tracepoints detached"
                );
            }
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

    /// Connections of the snapshot given up after the wait.
    pub fn given_up(&self) -> u64 {
        self.given_up
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
        let mut ob = OpenBefore::new(snapshot, &[443], Vec::new(), None, None);
        assert_eq!(ob.pending(), 2);
        // No wait given: pending connections are waited for however long it takes.
        ob.settle(Instant::now() + Duration::from_secs(86_400 * 365));
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
        ob.settle(Instant::now());
        assert!(ob.settled);
        assert!(!ob.detached(), "no tracepoints were attached here");
        assert_eq!(ob.given_up(), 0);
    }

    /// Connections still pending when the wait is over are given up, counted, and the
    /// transition happens; before that, nothing changes.
    #[test]
    fn pending_connections_are_given_up_after_the_wait() {
        let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
        let snapshot: Snapshot = [
            ((10, 4), (sock("10.0.0.2:443"), sock("10.0.0.1:50000"))),
            ((10, 5), (sock("10.0.0.2:443"), sock("10.0.0.1:50001"))),
            ((10, 6), (sock("10.0.0.2:443"), sock("10.0.0.1:50002"))),
        ]
        .into_iter()
        .collect();
        let start = Instant::now();
        let wait = Duration::from_secs(60);
        let mut ob = OpenBefore::new(snapshot, &[443], Vec::new(), None, Some(wait));
        assert!(ob.resolve(10, 4).is_some());
        assert!(ob.on_close(sock("10.0.0.2:443"), sock("10.0.0.1:50001")));
        ob.settle(start);
        assert!(!ob.settled, "still waiting");
        assert_eq!((ob.pending(), ob.given_up()), (1, 0));
        ob.settle(start + wait + Duration::from_millis(1));
        assert!(ob.settled);
        assert_eq!((ob.pending(), ob.given_up(), ob.closed_idle()), (0, 1, 1));
        ob.settle(start + wait * 2);
        assert_eq!(ob.given_up(), 1, "counted once");
    }
}
