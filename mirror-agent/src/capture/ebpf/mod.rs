//! Live capture from the eBPF ring buffer.
//!
//! Owns loading the object built by `cargo xtask build-ebpf` (embedded at build time, see
//! `build.rs`) with the one-copy classifiers or, where the kernel refuses them, the scratch-copy
//! ones ([`copy`]), configuring its maps, attaching the programs to interfaces or cgroups
//! ([`attach`]), reading the ring
//! buffer with tokio's `AsyncFd` and handing each record out in place, as a [`SegmentRef`] that
//! borrows the ring's bytes until the caller returns ([`decode`]), the kernel counters
//! ([`counters`]) and the ignore list of the agent's own connections ([`ignore`]).
//! It does not interpret TCP streams or HTTP.
//!
//! Dropping a [`LiveCapture`] detaches everything it attached.

mod attach;
pub mod copy;
pub mod counters;
pub mod decode;
pub mod ignore;
pub mod skip;
pub mod tls;
pub mod tls_follow;
pub mod tls_open_before;
pub mod tls_points;
pub mod tls_procfs;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use mirror_common::{config, maps, port_state};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use self::attach::cgroup::cgroup2_mount;
use self::attach::follow::LinkSocket;
pub use self::attach::follow::{IfacePatterns, LinkEvent, LinkMonitor};
pub use self::attach::{AttachMode, AttachPolicy, IfaceStats, ifindex};
pub use self::copy::{CopyPath, CopyPolicy};
pub use self::counters::Counters;
pub use self::ignore::FlowIgnore;
pub use self::skip::{BodySkip, SkipStats};
use super::{Segment, SegmentRef, clock};

/// Where the programs attach, which decides whose packets are seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TC classifiers on the interfaces of the agent's network namespace with these names or
    /// matching these globs ([`IfacePatterns`]); with a glob, interfaces are followed as they
    /// come and go.
    Interfaces(Vec<String>),
    /// `cgroup_skb` programs on these cgroup v2 directories: the sockets of their processes.
    Cgroups(Vec<PathBuf>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Interfaces(names) => write!(f, "interface {}", names.join(",")),
            Target::Cgroups(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "cgroup {}", paths.join(","))
            }
        }
    }
}

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Interfaces or cgroups.
    pub target: Target,
    /// Destination ports of requests (1..=65535, at most [`mirror_common::MAX_PORTS`]).
    pub ports: Vec<u16>,
    /// Share of flows to capture, in basis points (0..=10000).
    pub capture_basis_points: u32,
    /// Ring-buffer size in bytes: a power of two, at least one page.
    pub ring_size: u32,
    /// Also attach the egress classifier (the primary's responses, `--compare`).
    pub attach_egress: bool,
    /// TCX, classic tc, or TCX with the tc fallback (`--attach`).
    pub attach: AttachPolicy,
    /// One-copy classifiers, scratch-copy ones, or the first the kernel accepts
    /// (`MIRROR_CAPTURE_COPY`).
    pub copy: CopyPolicy,
    /// The pipeline may ask the ingress programs not to copy bodies nobody needs
    /// ([`skip::BodySkip`]); off when an output keeps the raw packets (`--write-pcap`).
    pub skip_bodies: bool,
    /// Stamp records with the precise clock: an output shows the stamps (`--compare`'s primary
    /// latency, `--record`, `--write-pcap`). Otherwise the kernel's coarse clock, up to a
    /// timer tick behind, spares the primary's CPU a clock read per packet
    /// (`mirror_common::config::PRECISE_CLOCK`).
    pub precise_clock: bool,
    /// `--tls`: read TLS plaintext through uprobes on libssl ([`tls`]).
    pub tls: tls::TlsSetting,
    /// `--tls follow`: keep looking for the libssl files of new listeners of the ports
    /// ([`tls_follow::TlsFollower`]).
    pub tls_follow: bool,
    /// `--tls-open-wait-secs`: how long connections open at start are waited for
    /// ([`tls_open_before::OpenBefore`]; `None`: as long as they stay open).
    pub tls_open_wait: Option<std::time::Duration>,
}

impl LiveConfig {
    /// The step of queued bytes whose every crossing forces a wakeup: an eighth of the ring,
    /// capped, so the reader wakes well before the ring fills but not per packet.
    fn wakeup_bytes(&self) -> u64 {
        // A power of two, as the programs' crossing test needs: the ring size is one, and so
        // are both bounds.
        (self.ring_size as u64 / 8).clamp(4096, 1 << 20)
    }
}

/// Why live capture could not start. Each variant renders as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The agent was compiled without the eBPF object.
    #[error("built without the eBPF object: run cargo xtask build-ebpf")]
    NoObject,
    /// The interface does not exist in this network namespace.
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    /// A `--cgroup` path that is not a cgroup v2 directory, or attaching to it failed.
    #[error("--cgroup {}: {reason}", path.display())]
    Cgroup { path: PathBuf, reason: String },
    /// A configuration value out of range (checked before anything is loaded).
    #[error("{0}")]
    Invalid(String),
    /// The kernel refused to load the object (no BPF support, verifier, missing capability).
    #[error("loading the eBPF program failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A map or program named by mirror-common is missing from the object.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// Reading or writing a map failed.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Loading or attaching a program failed.
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// An OS call failed (ring buffer registration with the reactor, sysfs).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The embedded object, 8-byte aligned as the ELF parser needs.
#[cfg(mirror_ebpf_object)]
fn object() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(env!("MIRROR_EBPF_OBJECT_PATH")))
}

#[cfg(not(mirror_ebpf_object))]
fn object() -> Option<&'static [u8]> {
    None
}

/// Whether this binary embeds the eBPF object.
pub fn has_object() -> bool {
    object().is_some()
}

/// Most records read by one [`LiveCapture::read_in_place`].
pub const MAX_BATCH: usize = 1024;
/// Shortest period of the userspace drain: records submitted without a wakeup wait at most
/// [`DRAIN_INTERVAL_MAX`] (the kernel wakes the reader sooner only when
/// [`LiveConfig::wakeup_bytes`] are queued), and as little as this when traffic is heavy or
/// after a cycle that read nothing.
pub const DRAIN_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Longest period of the userspace drain (see [`drain_period`]).
pub const DRAIN_INTERVAL_MAX: Duration = Duration::from_millis(30);
/// Records a drain aims at: the period is the time the last cycle's rate takes to bring them.
const DRAIN_TARGET_RECORDS: usize = MAX_BATCH;

/// The period of the next drain, after a cycle that read `records` in `elapsed` (see
/// [`DrainClock`]): as long as the observed rate takes to bring [`DRAIN_TARGET_RECORDS`], within
/// [`DRAIN_INTERVAL_MIN`]..=[`DRAIN_INTERVAL_MAX`].
///
/// Each drain costs the agent about 90 us beyond its records (the wake-up on caches other work
/// used in between, the write to the mirror connections it feeds and the read of their answers),
/// so at moderate rates a longer period saves most of the agent's CPU: at 3500 mirrored requests
/// a second 4.5 us per request with 10 ms, 2.8 us with 30 ms, 2.4 us with 50 ms (BENCHMARKS.md,
/// "Drain period"). At high rates a long period makes bursts: 30 ms at 120k req/s is 3600
/// copies for each mirror at once, and with the agent and a mirror sharing a CPU the mirror
/// queue (4096 copies) overflowed; there the drains stay 10 ms apart as before (1200 records).
/// 30 ms keeps a copy's extra delay on its way to the mirrors well under what a mirror's own
/// latency varies by.
///
/// A cycle that read nothing says nothing of the rate to come: the next records may be the start
/// of a burst (a quiet spell ending, a load test starting), and a long wait would hand them over
/// in one drain (30 ms at 130-170k req/s is 4000-5000 copies for each mirror, about what a mirror
/// queue holds; the likely cause of `queue full` copies early in bench runs). So nothing read
/// means the shortest period; an idle drain costs a wake-up and an empty read (about 30 us here,
/// 7 rather than 5 ms of CPU a second for an idle agent).
fn drain_period(records: usize, elapsed: Duration) -> Duration {
    if records == 0 {
        return DRAIN_INTERVAL_MIN;
    }
    elapsed
        .mul_f64(DRAIN_TARGET_RECORDS as f64 / records as f64)
        .clamp(DRAIN_INTERVAL_MIN, DRAIN_INTERVAL_MAX)
}

/// The drain period as traffic goes: counts the records read in the current cycle (which a
/// read ends, see [`Self::deadline`]) and turns the cycle's rate into the next period
/// ([`drain_period`]).
#[derive(Debug)]
struct DrainClock {
    cycle_start: tokio::time::Instant,
    records: usize,
    /// A read ran since the cycle began (it may have found the ring empty).
    read: bool,
    period: Duration,
}

impl DrainClock {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            cycle_start: now,
            records: 0,
            read: false,
            period: DRAIN_INTERVAL_MIN,
        }
    }

    fn on_read(&mut self, records: usize) {
        self.records += records;
        self.read = true;
    }

    /// When a wait starting `now` ends at the latest. A cycle ends with a read: one that
    /// brought records (their rate sets the next period), or one that found the ring empty
    /// after the period was over (no traffic: see [`drain_period`]). A wait that another event
    /// (one of the caller's ticks) cut short before any read did not end the cycle, even when
    /// its deadline has passed meanwhile: the deadline stands, and a deadline in the past ends
    /// the next wait at once. Restarting the period there instead delayed the drain by up to a
    /// period per tick; and, with the deadline passed and nothing read, took the cycle for an
    /// idle one, losing the rate: while idle cycles were followed by the longest period, that
    /// was a 30 ms wait at full rate, 4000-5000 records in one drain (seen at 210k records a
    /// second, with mirror queues of 4096 copies overflowing with 3 mirrors).
    fn deadline(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        let elapsed = now - self.cycle_start;
        if self.records > 0 || (self.read && elapsed >= self.period) {
            self.period = drain_period(self.records, elapsed);
            self.records = 0;
            self.read = false;
            self.cycle_start = now;
        }
        self.cycle_start + self.period
    }
}

/// Programs loaded, configured and attached; the ring buffer not read yet. Made without a
/// tokio runtime, so the agent can attach (the part that needs privileges) before any other
/// thread exists, then give the privileges up ([`crate::privileges`]) and start reading.
pub struct AttachedCapture {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    ignore: FlowIgnore,
    mode: AttachMode,
    copy: CopyPath,
    /// The interfaces attached (`None` for cgroups). Dropped before `ebpf`: it removes tc filters.
    interfaces: Option<attach::Interfaces>,
    /// With `--iface` globs: the patterns and the link notification socket.
    follow: Option<(IfacePatterns, LinkSocket)>,
    /// Bodies nobody needs, when the pipeline may ask for skips.
    body_skip: Option<BodySkip>,
    /// `--tls`: the TLS programs, the captured ports and the sampling for their reader.
    tls: Option<AttachedTls>,
    // Last field: dropped after the maps, detaching the programs (TCX and cgroup links close
    // with it).
    ebpf: Ebpf,
}

/// The TLS programs attached, and what their reader needs.
struct AttachedTls {
    probes: tls::TlsProbes,
    /// The captured ports.
    ports: Vec<u16>,
    /// The classifiers' (hash seed, basis points) when they sample.
    sample: Option<(u64, u64)>,
    /// `--tls follow`.
    follow: bool,
    /// The programs' settings while `TLS_OPEN_BEFORE` is set.
    settings: Option<Array<MapData, u64>>,
    /// `--tls-open-wait-secs`.
    open_wait: Option<std::time::Duration>,
}

/// A running capture: programs attached, ring buffer registered with tokio.
pub struct LiveCapture {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    ignore: FlowIgnore,
    mode: AttachMode,
    copy: CopyPath,
    /// Stamps segments in Unix time and counts malformed records.
    decoder: decode::RingDecoder,
    /// The interfaces attached (`None` for cgroups). Dropped before `ebpf`: it removes tc filters.
    interfaces: Option<attach::Interfaces>,
    /// With `--iface` globs: the patterns the link notifications are matched against.
    patterns: Option<IfacePatterns>,
    /// Taken by the caller ([`Self::take_link_monitor`]), which waits on it next to the ring.
    monitor: Option<LinkMonitor>,
    /// Bodies nobody needs, when the pipeline may ask for skips ([`Self::skip_bodies`]).
    body_skip: Option<BodySkip>,
    /// `--tls`: the TLS ring, read next to the classifiers' ring.
    tls: Option<tls::TlsReader>,
    /// `--tls follow`: libssl files found later, to attach ([`Self::follow_tls`]).
    tls_follower: Option<tls_follow::TlsFollower>,
    /// The records read per cycle, which set the drain period.
    drain: DrainClock,
    // Last field: dropped after the maps, detaching the programs (TCX and cgroup links close
    // with it).
    ebpf: Ebpf,
}

impl LiveCapture {
    /// Loads the object, configures it, attaches the programs to `cfg.target` and starts
    /// reading ([`AttachedCapture::attach`] then [`AttachedCapture::start_reading`]).
    ///
    /// Must run inside a tokio runtime (the ring buffer is registered with its reactor).
    pub fn start(cfg: LiveConfig) -> Result<Self, CaptureError> {
        AttachedCapture::attach(cfg)?.start_reading()
    }
}

impl AttachedCapture {
    /// Loads the object, configures it and attaches the programs to `cfg.target`. Needs no
    /// runtime.
    pub fn attach(cfg: LiveConfig) -> Result<Self, CaptureError> {
        validate(&cfg)?;
        let cgroups = check_target(&cfg.target)?;
        let hook = match cfg.target {
            Target::Interfaces(_) => HookKind::Tc,
            Target::Cgroups(_) => HookKind::Cgroup,
        };
        let tls_targets = match &cfg.tls {
            tls::TlsSetting::Off => None,
            tls::TlsSetting::Auto | tls::TlsSetting::AutoAnd(_) => {
                let (mut libs, processes) = tls_procfs::discover(&cfg.ports);
                if let tls::TlsSetting::AutoAnd(binaries) = &cfg.tls {
                    libs.extend(binaries.iter().cloned());
                }
                tracing::info!(
                    libraries = ?libs,
                    listeners = ?processes,
                    "--tls auto: attaching to these libssl files (every process that maps them)"
                );
                if libs.is_empty() {
                    tracing::warn!("--tls auto: no libssl found; TLS plaintext is not read");
                    None
                } else {
                    Some(libs)
                }
            }
            tls::TlsSetting::Files(files) => Some(files.clone()),
        };
        let (mut ebpf, copy) = load(
            cfg.copy,
            hook,
            cfg.ring_size,
            cfg.attach_egress,
            tls_targets.is_some(),
        )?;

        let mut settings: Array<_, u64> = take(&mut ebpf, maps::CONFIG)?;
        let hash_seed: u64 = rand::random();
        for (index, value) in [
            (config::SAMPLE_BASIS_POINTS, cfg.capture_basis_points as u64),
            (config::WAKEUP_BYTES, cfg.wakeup_bytes()),
            (config::HASH_SEED, hash_seed),
            (config::SKIP_BODIES, u64::from(cfg.skip_bodies)),
            (config::PRECISE_CLOCK, u64::from(cfg.precise_clock)),
            // Until the TLS programs' snapshot says otherwise (below).
            (config::TLS_OPEN_BEFORE, 1),
        ] {
            settings
                .set(index, value, 0)
                .map_err(|source| CaptureError::Map {
                    name: maps::CONFIG,
                    source,
                })?;
        }
        let mut ports: aya::maps::Array<_, u8> = take(&mut ebpf, maps::PORTS)?;
        for port in &cfg.ports {
            ports
                .set(u32::from(*port), port_state::CAPTURED, 0)
                .map_err(|source| CaptureError::Map {
                    name: maps::PORTS,
                    source,
                })?;
        }
        let ignore = FlowIgnore::new(
            take(&mut ebpf, maps::IGNORE)?,
            take(&mut ebpf, maps::IGNORE_PORTS)?,
        );
        let body_skip = if cfg.skip_bodies {
            Some(BodySkip::new(take(&mut ebpf, maps::SKIP)?))
        } else {
            None
        };
        let counters = take(&mut ebpf, maps::COUNTERS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, maps::RING)?;
        // Before the classifiers: a TLS port is marked before its first packet is captured.
        let tls = tls_targets
            .map(|targets| {
                // The server's writes are its responses: probed only when they are compared.
                tls::TlsProbes::attach(&mut ebpf, &targets, &cfg.ports, false, cfg.attach_egress)
            })
            .transpose()?;
        // Kept by the TLS reader while connections open at start are unaccounted for: it
        // clears TLS_OPEN_BEFORE then ([`tls_open_before::OpenBefore`]).
        let mut tls_settings = None;
        if let Some(t) = &tls {
            if t.open_before.is_empty() {
                // Every captured port's socket is noted from its establishment on: calls on
                // other sockets need not be copied.
                settings
                    .set(config::TLS_OPEN_BEFORE, 0, 0)
                    .map_err(|source| CaptureError::Map {
                        name: maps::CONFIG,
                        source,
                    })?;
            } else {
                tls_settings = Some(settings);
            }
        }

        let (interfaces, follow, mode) = match &cfg.target {
            Target::Interfaces(entries) => {
                let patterns = IfacePatterns::parse(entries).map_err(CaptureError::Invalid)?;
                let mut interfaces = attach::Interfaces::new(
                    attach::LinkLayerLengths::new(
                        take(&mut ebpf, maps::IFACE_SLOTS)?,
                        take(&mut ebpf, maps::IFACES)?,
                    ),
                    copy.programs(),
                    cfg.attach_egress,
                    cfg.attach,
                );
                // Named interfaces must be there; a failure is the operator's to fix.
                for name in patterns.names() {
                    interfaces.attach(&mut ebpf, name)?;
                }
                let follow = if patterns.follows() {
                    // Subscribed before listing: an interface made in between is not missed.
                    let socket = LinkSocket::open().map_err(|source| CaptureError::Io {
                        what: "subscribing to link notifications",
                        source,
                    })?;
                    interfaces.reconcile(&mut ebpf, &patterns);
                    if interfaces.is_empty() {
                        tracing::warn!(
                            iface = %cfg.target,
                            "no interface matches yet; attaching as they appear"
                        );
                    }
                    Some((patterns, socket))
                } else {
                    None
                };
                let mode = interfaces.mode();
                (Some(interfaces), follow, mode)
            }
            Target::Cgroups(_) => {
                attach::cgroup::attach(&mut ebpf, &cgroups, cfg.attach_egress)?;
                (None, None, AttachMode::Cgroup)
            }
        };
        tracing::info!(
            target = %cfg.target,
            ports = ?cfg.ports,
            basis_points = cfg.capture_basis_points,
            ring_bytes = cfg.ring_size,
            egress = cfg.attach_egress,
            mode = ?mode,
            copy = %copy,
            "capture attached"
        );
        Ok(Self {
            ring,
            counters,
            ignore,
            mode,
            copy,
            interfaces,
            follow,
            body_skip,
            tls: tls.map(|probes| AttachedTls {
                probes,
                ports: cfg.ports.clone(),
                sample: sample(&cfg, hash_seed),
                follow: cfg.tls_follow,
                settings: tls_settings,
                open_wait: cfg.tls_open_wait,
            }),
            ebpf,
        })
    }

    /// Whether interfaces are followed as they come and go (`--iface` globs): the agent then
    /// keeps the privileges to attach later.
    pub fn follows_interfaces(&self) -> bool {
        self.follow.is_some()
    }

    /// Whether new listeners' libssl files are looked for (`--tls follow`): the agent then
    /// keeps the privileges to read other processes' procfs and attach uprobes later.
    pub fn follows_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.follow)
    }

    /// How the classifiers are attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Which classifier variant runs.
    pub fn copy_path(&self) -> CopyPath {
        self.copy
    }

    /// Registers the ring buffer with the current tokio runtime's reactor: records are read
    /// from here on. Must run inside a tokio runtime.
    pub fn start_reading(self) -> Result<LiveCapture, CaptureError> {
        // SAFETY: the RingBuf owns its fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|e| CaptureError::Io {
                what: "registering the ring buffer with the reactor",
                source: std::io::Error::from(e),
            })?;
        let (patterns, monitor) = match self.follow {
            Some((patterns, socket)) => {
                let monitor = socket.start().map_err(|source| CaptureError::Io {
                    what: "registering the link notification socket with the reactor",
                    source,
                })?;
                (Some(patterns), Some(monitor))
            }
            None => (None, None),
        };
        // Started here, after confinement: the thread holds only the capabilities kept.
        let tls_follower = match &self.tls {
            Some(t) if t.follow => Some(
                tls_follow::TlsFollower::start(t.ports.clone(), &t.probes.targets).map_err(
                    |source| CaptureError::Io {
                        what: "starting the --tls follow thread",
                        source,
                    },
                )?,
            ),
            _ => None,
        };
        let tls = self
            .tls
            .map(|t| {
                t.probes
                    .start_reading(t.ports, t.sample, t.settings, t.open_wait)
            })
            .transpose()?;
        Ok(LiveCapture {
            tls,
            tls_follower,
            ring,
            counters: self.counters,
            ignore: self.ignore,
            mode: self.mode,
            copy: self.copy,
            decoder: decode::RingDecoder::new(clock::wall_minus_monotonic_ns()),
            interfaces: self.interfaces,
            patterns,
            monitor,
            body_skip: self.body_skip,
            drain: DrainClock::new(tokio::time::Instant::now()),
            ebpf: self.ebpf,
        })
    }
}

impl LiveCapture {
    /// How the classifiers are attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Which classifier variant runs.
    pub fn copy_path(&self) -> CopyPath {
        self.copy
    }

    /// A handle to register the agent's own connections, which are then never captured.
    pub fn flow_ignore(&self) -> FlowIgnore {
        self.ignore.clone()
    }

    /// Sums of the per-CPU kernel counters, and the reader's own.
    pub fn counters(&mut self) -> Result<Counters, CaptureError> {
        let mut c = Counters::read(&self.counters)?;
        c.malformed_records = self.decoder.malformed();
        if let Some(i) = &self.interfaces {
            c.interfaces = i.len() as u64;
            c.iface = i.stats();
        }
        if let Some(s) = &self.body_skip {
            c.skip = s.stats();
        }
        if let Some(t) = &mut self.tls {
            c.tls = Some(t.counters()?);
        }
        Ok(c)
    }

    /// Tells the ingress programs not to copy the client bytes of these flows (client, server)
    /// before these sequence numbers: the rest of bodies nobody needs. Ignored unless the
    /// capture was started with `skip_bodies`.
    pub fn skip_bodies(&mut self, skips: &[(std::net::SocketAddr, std::net::SocketAddr, u32)]) {
        if let Some(s) = &mut self.body_skip {
            for &(client, server, until) in skips {
                s.skip_until(client, server, until);
            }
        }
    }

    /// The link notifications to wait on when interfaces are followed (`--iface` globs); the
    /// caller hands what they say to [`Self::follow_links`]. `None` otherwise, and after the
    /// first call.
    /// `--tls follow`: attaches the TLS probes to the libssl files found since the last call
    /// (cheap when none were: call it on a timer).
    pub fn follow_tls(&mut self) {
        let (Some(follower), Some(reader)) = (&self.tls_follower, &mut self.tls) else {
            return;
        };
        for path in follower.found() {
            match tls::attach_target(&mut self.ebpf, &path, reader.writes()) {
                Ok(internal) => {
                    tracing::info!(
                        target = %path.display(),
                        "--tls follow: a new listener's libssl is probed from now on"
                    );
                    reader.note_later_target(path, Some(internal));
                }
                Err(e) => {
                    tracing::warn!(
                        target = %path.display(),
                        error = %e,
                        "--tls follow: a new listener's libssl could not be probed"
                    );
                    reader.note_later_target(path, None);
                }
            }
        }
    }

    pub fn take_link_monitor(&mut self) -> Option<LinkMonitor> {
        self.monitor.take()
    }

    /// Attaches to interfaces that appeared and match, detaches from those gone.
    pub fn follow_links(&mut self, events: Vec<LinkEvent>) {
        let (Some(interfaces), Some(patterns)) = (&mut self.interfaces, &self.patterns) else {
            return;
        };
        for event in events {
            interfaces.follow(&mut self.ebpf, patterns, event);
        }
    }

    /// Waits for records and returns the segments they hold (at most a batch of them), copied
    /// out of the ring. The agent itself reads in place ([`Self::wait`] and
    /// [`Self::read_in_place`]); this is for callers that keep the segments.
    ///
    /// The kernel wakes the reader only when enough bytes are queued; the rest is picked up by a
    /// drain every [`drain_period`], so the wait is bounded. Never returns an empty batch.
    pub async fn next_batch(&mut self) -> Result<Vec<Segment>, CaptureError> {
        let mut out = Vec::new();
        loop {
            self.read_in_place(|seg| out.push(seg.to_owned()));
            if !out.is_empty() {
                return Ok(out);
            }
            self.wait().await?;
        }
    }

    /// Waits until the kernel wakes the reader (enough bytes queued) or a drain period passes
    /// ([`DrainClock::deadline`]), whichever comes first; then
    /// [`Self::read_in_place`] takes what is there.
    pub async fn wait(&mut self) -> Result<(), CaptureError> {
        let deadline = self.drain.deadline(tokio::time::Instant::now());
        let tls = async {
            match &mut self.tls {
                Some(t) => t.readable().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = tls => {
                ready.map_err(|source| CaptureError::Io {
                    what: "waiting on the TLS ring buffer",
                    source,
                })?;
            }
            guard = self.ring.readable_mut() => {
                let mut guard = guard.map_err(|source| CaptureError::Io {
                    what: "waiting on the ring buffer",
                    source,
                })?;
                guard.clear_ready();
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        Ok(())
    }

    /// Hands up to [`MAX_BATCH`] records to `f`, each as a segment that borrows its payload
    /// from the ring: the record's slot is released when `f` returns, so whatever `f` keeps it
    /// copies (the pipeline keeps only out-of-order bytes and the requests it frames). Returns
    /// the number of records read; 0 when the ring is empty. Never waits.
    ///
    /// With `--tls`, the TLS ring is read first (up to as many records again): its records
    /// mark the ports that carry TLS, and the classifiers' records of those ports read after
    /// (ciphertext recorded before the kernel marked the port) are dropped, counted.
    pub fn read_in_place(&mut self, mut f: impl FnMut(SegmentRef<'_>)) -> usize {
        let mut n = 0;
        if let Some(t) = &mut self.tls {
            n += t.read(MAX_BATCH, &mut f);
        }
        let ring = self.ring.get_mut();
        let mut read = 0;
        while read < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            match &mut self.tls {
                Some(t) => self.decoder.visit(&item, &mut |seg: SegmentRef<'_>| {
                    if !t.is_ciphertext(&seg) {
                        f(seg)
                    }
                }),
                None => self.decoder.visit(&item, &mut f),
            }
            read += 1;
        }
        self.drain.on_read(n + read);
        n + read
    }

    /// Raw file descriptor of the ring buffer (for diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// The classifiers' sampling as (hash seed, basis points), `None` when every flow is kept.
fn sample(cfg: &LiveConfig, hash_seed: u64) -> Option<(u64, u64)> {
    (cfg.capture_basis_points < 10000).then_some((hash_seed, u64::from(cfg.capture_basis_points)))
}

/// Which kind of program captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    /// TC classifiers on interfaces.
    Tc,
    /// `cgroup_skb` programs: one-copy only (see the top doc of `mirror-ebpf`).
    Cgroup,
}

/// Creates the maps and loads the programs of the variant `policy` asks for: with `Auto`, the
/// one-copy programs, and where the kernel refuses them the scratch-copy ones, with a warning.
/// The scratch map has one entry per possible CPU for the scratch-copy programs, one (unused)
/// for the one-copy ones. The cgroup programs exist in the one-copy variant only: where it is
/// refused, capture by cgroup is refused too. Nothing is attached yet.
fn load(
    policy: CopyPolicy,
    hook: HookKind,
    ring_size: u32,
    egress: bool,
    with_tls: bool,
) -> Result<(Ebpf, CopyPath), CaptureError> {
    if hook == HookKind::Cgroup && policy == CopyPolicy::Scratch {
        return Err(CaptureError::Invalid(
            "--cgroup runs the one-copy programs only; MIRROR_CAPTURE_COPY=scratch is for \
             interfaces"
                .into(),
        ));
    }
    let data = object().ok_or(CaptureError::NoObject)?;
    let try_path = |path: CopyPath| -> Result<Ebpf, CaptureError> {
        let scratch_entries = match path {
            CopyPath::Reserve => 1,
            CopyPath::Scratch => aya::util::nr_cpus().map_err(|(_, e)| CaptureError::Io {
                what: "counting possible CPUs",
                source: e,
            })? as u32,
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::RING, ring_size)
            .map_max_entries(maps::SCRATCH, scratch_entries);
        if with_tls {
            // The TLS ring as large as the classifiers'.
            loader.map_max_entries(mirror_common::tls::RING, ring_size);
        } else {
            // The TLS programs' maps, unused: a page or an entry each.
            loader
                .map_max_entries(mirror_common::tls::RING, 4096)
                .map_max_entries(mirror_common::tls::ACTIVE, 1)
                .map_max_entries(mirror_common::tls::FDS, 1)
                .map_max_entries(mirror_common::tls::SOCKS, 1);
        }
        let mut ebpf = loader.load(data).map_err(CaptureError::Load)?;
        match hook {
            HookKind::Tc => attach::load(&mut ebpf, path.programs(), egress)?,
            HookKind::Cgroup => attach::cgroup::load(&mut ebpf, egress)?,
        }
        if with_tls {
            tls::load_programs(&mut ebpf)?;
        }
        Ok(ebpf)
    };
    match policy {
        CopyPolicy::Reserve => Ok((try_path(CopyPath::Reserve)?, CopyPath::Reserve)),
        CopyPolicy::Scratch => Ok((try_path(CopyPath::Scratch)?, CopyPath::Scratch)),
        CopyPolicy::Auto => match try_path(CopyPath::Reserve) {
            Ok(ebpf) => Ok((ebpf, CopyPath::Reserve)),
            // The verifier's refusal (or EINVAL from an older kernel): the other variant needs
            // nothing the first did not, so a missing privilege fails there too, with its error.
            Err(e @ CaptureError::Program { .. }) if hook == HookKind::Tc => {
                let full = e.to_string();
                tracing::debug!(error = %full, "one-copy classifiers refused");
                tracing::warn!(
                    error = full.lines().next().unwrap_or_default(),
                    "the kernel refused the one-copy classifiers; using the scratch-copy fallback"
                );
                Ok((try_path(CopyPath::Scratch)?, CopyPath::Scratch))
            }
            Err(e) => Err(e),
        },
    }
}

/// The variant live capture would run with `policy` on this kernel: loads the classifiers
/// (ingress only, smallest ring) without attaching them. Needs the privileges to load BPF.
pub fn probe_copy_path(policy: CopyPolicy) -> Result<CopyPath, CaptureError> {
    load(policy, HookKind::Tc, 4096, false, false).map(|(_, path)| path)
}

/// Checks that every interface of `target` exists, or that every cgroup is a cgroup v2
/// directory (returned open), before anything is loaded: each is a mistake of the operator's.
pub fn check_target(target: &Target) -> Result<Vec<(PathBuf, std::fs::File)>, CaptureError> {
    match target {
        Target::Interfaces(entries) => {
            let patterns = IfacePatterns::parse(entries).map_err(CaptureError::Invalid)?;
            for name in patterns.names() {
                ifindex(name)?;
            }
            Ok(Vec::new())
        }
        Target::Cgroups(paths) => paths
            .iter()
            .map(|p| Ok((p.clone(), attach::cgroup::open(p)?)))
            .collect(),
    }
}

fn validate(cfg: &LiveConfig) -> Result<(), CaptureError> {
    let invalid = |s: String| Err(CaptureError::Invalid(s));
    match &cfg.target {
        Target::Interfaces(names) if names.is_empty() => {
            return invalid("no interface to capture on: give --iface".into());
        }
        Target::Cgroups(paths) if paths.is_empty() => {
            return invalid("no cgroup to capture: give --cgroup".into());
        }
        _ => {}
    }
    if cfg.ports.is_empty() {
        return invalid("no ports to capture: give at least one --port".into());
    }
    if cfg.ports.len() > mirror_common::MAX_PORTS as usize {
        return invalid(format!("at most {} ports", mirror_common::MAX_PORTS));
    }
    if cfg.ports.contains(&0) {
        return invalid("port 0 is not a valid port".into());
    }
    if cfg.capture_basis_points > 10000 {
        return invalid("capture percent must be between 0 and 100".into());
    }
    if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 4096 {
        return invalid(format!(
            "ring buffer size {} is not a power of two of at least 4096",
            cfg.ring_size
        ));
    }
    Ok(())
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(CaptureError::Missing(name))?;
    T::try_from(map).map_err(|source| CaptureError::Map { name, source })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DRAIN_INTERVAL_MAX, DRAIN_INTERVAL_MIN, DrainClock, drain_period};

    #[test]
    fn the_drain_period_brings_a_batch_at_the_rate_seen_within_its_bounds() {
        let ms = Duration::from_millis;
        // Nothing read: no rate to go by, and the next records may be a burst's first.
        assert_eq!(drain_period(0, ms(30)), DRAIN_INTERVAL_MIN);
        // 3500 records a second: a batch would take 290 ms; capped.
        assert_eq!(drain_period(105, ms(30)), DRAIN_INTERVAL_MAX);
        // 51200 records a second: 1024 records take 20 ms.
        assert_eq!(drain_period(1024, ms(20)), ms(20));
        // 121000 records a second: 8.5 ms, raised to the shortest period (bursts stay the
        // size they were with a fixed 10 ms).
        assert_eq!(drain_period(1210, ms(10)), DRAIN_INTERVAL_MIN);
        // A cycle that read several batches in a row (a backlog) keeps the shortest period.
        assert_eq!(drain_period(8192, ms(12)), DRAIN_INTERVAL_MIN);
    }

    #[test]
    fn a_wait_cut_short_before_a_read_keeps_the_cycle_and_its_deadline() {
        let ms = Duration::from_millis;
        let t0 = tokio::time::Instant::now();
        let mut clock = DrainClock::new(t0);
        assert_eq!(
            clock.deadline(t0),
            t0 + DRAIN_INTERVAL_MIN,
            "no traffic yet: the shortest period"
        );
        // 300 records in 10 ms (30k a second): a batch would take 34 ms, so the longest
        // period, from now.
        clock.on_read(300);
        assert_eq!(clock.deadline(t0 + ms(10)), t0 + ms(40));
        // A tick 5 ms into that wait: the same cycle, the same deadline (not a whole period
        // from the tick).
        assert_eq!(clock.deadline(t0 + ms(15)), t0 + ms(40));
        // A tick after the deadline, before the read the deadline was due to bring: still the
        // same cycle, not an idle one; the deadline has passed, so the next wait ends at once.
        assert_eq!(clock.deadline(t0 + ms(41)), t0 + ms(40));
        // The read brings the cycle's records: 900 in 32 ms, the longest period again.
        clock.on_read(900);
        assert_eq!(clock.deadline(t0 + ms(42)), t0 + ms(72));
        // A read that finds the ring empty before the period is over (a wake-up for the other
        // ring) does not end the cycle.
        clock.on_read(0);
        assert_eq!(clock.deadline(t0 + ms(50)), t0 + ms(72));
        // Traffic stops: a read that finds nothing once the period is over ends the cycle,
        // and an idle cycle is followed by the shortest period.
        clock.on_read(0);
        assert_eq!(
            clock.deadline(t0 + ms(73)),
            t0 + ms(73) + DRAIN_INTERVAL_MIN
        );
        // Ticks during that idle wait keep its deadline.
        assert_eq!(clock.deadline(t0 + ms(75)), t0 + ms(83));
    }
}
