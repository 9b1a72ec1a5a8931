//! Live capture from the eBPF ring buffer.
//!
//! Owns loading the object built by `cargo xtask build-ebpf` (embedded at build time, see
//! `build.rs`) with the one-copy classifiers or, where the kernel refuses them, the scratch-copy
//! ones ([`copy`]), configuring its maps, attaching the classifiers ([`attach`]), reading the ring
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

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use mirror_common::{config, maps};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use self::attach::{AttachMode, AttachPolicy, ifindex};
pub use self::copy::{CopyPath, CopyPolicy};
pub use self::counters::Counters;
pub use self::ignore::FlowIgnore;
use super::{Segment, SegmentRef, clock};

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Interface name, resolved in the agent's network namespace.
    pub iface: String,
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
}

impl LiveConfig {
    /// Bytes queued in the ring before a record forces a wakeup: an eighth of the ring, capped,
    /// so the reader wakes well before the ring fills but not per packet.
    fn wakeup_bytes(&self) -> u64 {
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
/// Period of the userspace drain: records submitted without a wakeup wait at most this long.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Programs loaded, configured and attached; the ring buffer not read yet. Made without a
/// tokio runtime, so the agent can attach (the part that needs privileges) before any other
/// thread exists, then give the privileges up ([`crate::privileges`]) and start reading.
pub struct AttachedCapture {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    ignore: FlowIgnore,
    mode: AttachMode,
    copy: CopyPath,
    // Last field: dropped after the maps, detaching the programs (TCX links close with it).
    attached: attach::Attached,
    ebpf: Ebpf,
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
    // Last field: dropped after the maps, detaching the programs (TCX links close with it).
    _attached: attach::Attached,
    _ebpf: Ebpf,
}

impl LiveCapture {
    /// Loads the object, configures it, attaches the classifiers to `cfg.iface` and starts
    /// reading ([`AttachedCapture::attach`] then [`AttachedCapture::start_reading`]).
    ///
    /// Must run inside a tokio runtime (the ring buffer is registered with its reactor).
    pub fn start(cfg: LiveConfig) -> Result<Self, CaptureError> {
        AttachedCapture::attach(cfg)?.start_reading()
    }
}

impl AttachedCapture {
    /// Loads the object, configures it and attaches the classifiers to `cfg.iface`. Needs no
    /// runtime.
    pub fn attach(cfg: LiveConfig) -> Result<Self, CaptureError> {
        validate(&cfg)?;
        let l2_len = attach::l2_len(&cfg.iface)?;
        let (mut ebpf, copy) = load(cfg.copy, cfg.ring_size, cfg.attach_egress)?;

        let mut settings: Array<_, u64> = take(&mut ebpf, maps::CONFIG)?;
        let hash_seed: u64 = rand::random();
        for (index, value) in [
            (config::SAMPLE_BASIS_POINTS, cfg.capture_basis_points as u64),
            (config::WAKEUP_BYTES, cfg.wakeup_bytes()),
            (config::HASH_SEED, hash_seed),
            (config::L2_LEN, l2_len),
        ] {
            settings
                .set(index, value, 0)
                .map_err(|source| CaptureError::Map {
                    name: maps::CONFIG,
                    source,
                })?;
        }
        let mut ports: HashMap<_, u16, u8> = take(&mut ebpf, maps::PORTS)?;
        for port in &cfg.ports {
            ports
                .insert(port, 1, 0)
                .map_err(|source| CaptureError::Map {
                    name: maps::PORTS,
                    source,
                })?;
        }
        let ignore = FlowIgnore::new(take(&mut ebpf, maps::IGNORE)?);
        let counters = take(&mut ebpf, maps::COUNTERS)?;
        let ring: RingBuf<MapData> = take(&mut ebpf, maps::RING)?;

        let attached = attach::attach(
            &mut ebpf,
            &cfg.iface,
            copy.programs(),
            cfg.attach_egress,
            cfg.attach,
        )?;
        let mode = attached.mode();
        tracing::info!(
            iface = %cfg.iface,
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
            attached,
            ebpf,
        })
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
        Ok(LiveCapture {
            ring,
            counters: self.counters,
            ignore: self.ignore,
            mode: self.mode,
            copy: self.copy,
            decoder: decode::RingDecoder::new(clock::wall_minus_monotonic_ns()),
            _attached: self.attached,
            _ebpf: self.ebpf,
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
    pub fn counters(&self) -> Result<Counters, CaptureError> {
        let mut c = Counters::read(&self.counters)?;
        c.malformed_records = self.decoder.malformed();
        Ok(c)
    }

    /// Waits for records and returns the segments they hold (at most a batch of them), copied
    /// out of the ring. The agent itself reads in place ([`Self::wait`] and
    /// [`Self::read_in_place`]); this is for callers that keep the segments.
    ///
    /// The kernel wakes the reader only when enough bytes are queued; the rest is picked up by a
    /// drain every few milliseconds, so the wait is bounded. Never returns an empty batch.
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

    /// Waits until the kernel wakes the reader (enough bytes queued) or a drain period passes,
    /// whichever comes first; then [`Self::read_in_place`] takes what is there.
    pub async fn wait(&mut self) -> Result<(), CaptureError> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard.map_err(|source| CaptureError::Io {
                    what: "waiting on the ring buffer",
                    source,
                })?;
                guard.clear_ready();
            }
            _ = tokio::time::sleep(DRAIN_INTERVAL) => {}
        }
        Ok(())
    }

    /// Hands up to [`MAX_BATCH`] records to `f`, each as a segment that borrows its payload
    /// from the ring: the record's slot is released when `f` returns, so whatever `f` keeps it
    /// copies (the pipeline keeps only out-of-order bytes and the requests it frames). Returns
    /// the number of records read; 0 when the ring is empty. Never waits.
    pub fn read_in_place(&mut self, mut f: impl FnMut(SegmentRef<'_>)) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while n < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            self.decoder.visit(&item, &mut f);
            n += 1;
        }
        n
    }

    /// Raw file descriptor of the ring buffer (for diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// Creates the maps and loads the classifiers of the variant `policy` asks for: with `Auto`, the
/// one-copy programs, and where the kernel refuses them the scratch-copy ones, with a warning.
/// The scratch map has one entry per possible CPU for the scratch-copy programs, one (unused)
/// for the one-copy ones. Nothing is attached yet.
fn load(
    policy: CopyPolicy,
    ring_size: u32,
    egress: bool,
) -> Result<(Ebpf, CopyPath), CaptureError> {
    let data = object().ok_or(CaptureError::NoObject)?;
    let try_path = |path: CopyPath| -> Result<Ebpf, CaptureError> {
        let scratch_entries = match path {
            CopyPath::Reserve => 1,
            CopyPath::Scratch => aya::util::nr_cpus().map_err(|(_, e)| CaptureError::Io {
                what: "counting possible CPUs",
                source: e,
            })? as u32,
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::RING, ring_size)
            .map_max_entries(maps::SCRATCH, scratch_entries)
            .load(data)
            .map_err(CaptureError::Load)?;
        attach::load(&mut ebpf, path.programs(), egress)?;
        Ok(ebpf)
    };
    match policy {
        CopyPolicy::Reserve => Ok((try_path(CopyPath::Reserve)?, CopyPath::Reserve)),
        CopyPolicy::Scratch => Ok((try_path(CopyPath::Scratch)?, CopyPath::Scratch)),
        CopyPolicy::Auto => match try_path(CopyPath::Reserve) {
            Ok(ebpf) => Ok((ebpf, CopyPath::Reserve)),
            // The verifier's refusal (or EINVAL from an older kernel): the other variant needs
            // nothing the first did not, so a missing privilege fails there too, with its error.
            Err(e @ CaptureError::Program { .. }) => {
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
    load(policy, 4096, false).map(|(_, path)| path)
}

fn validate(cfg: &LiveConfig) -> Result<(), CaptureError> {
    let invalid = |s: String| Err(CaptureError::Invalid(s));
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
