//! TLS plaintext from uprobes on libssl (issue 14 B): the kernel side's loading and reading.
//!
//! Owns attaching the TLS programs (`mirror-ebpf/src/tls.rs`): the SSL read and write probes,
//! entry and return, on each target file (a libssl, or a statically linked binary; for every
//! process that maps it, including processes started later; where on the file:
//! [`super::tls_points`]), the socket tracepoints (the call's socket, its endpoints when
//! established, its close), the read/write-family syscall tracepoints (the call's fd, only when
//! connections were open at start); decoding the records of `MIRROR_TLS_RING` into
//! [`TlsChunk`]s and reading them as segments while live (`TlsReader`); the counters and the
//! per-process report. What procfs tells (targets for `--tls auto`, connections open at start)
//! is [`super::tls_procfs`]. The live capture attaches the programs on its own [`Ebpf`]
//! instance (they share the port map and the sampling settings with the classifiers, and mark
//! the ports whose ciphertext the classifiers then leave alone); [`TlsCapture`] runs them alone.
//!
//! Needs tracefs for the tracepoints (mounted at `/sys/kernel/tracing` when it is not) and the
//! privileges to load tracing programs (CAP_BPF and CAP_PERFMON, or root). The socket
//! tracepoints (`sock_recv_length`, `sock_send_length`: Linux 6.3) may be missing on older
//! kernels: then only the connections open at start can be matched (said at start and in
//! `mirror-agent check`).

use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::{TracePointLink, TracePointLinkId};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use mirror_common::{TLS_HEADER_LEN, TlsRecordHeader, maps, port_state, tls};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::tls_open_before::OpenBefore;
use super::{CaptureError, object, take};
pub use crate::capture::tls_stream::TlsChunk;
use crate::capture::tls_stream::{TlsStreamStats, TlsStreams, header_endpoints as close_endpoints};
use crate::capture::{SegmentDirection, SegmentRef, clock};

/// The uprobes: (program, libssl function).
const PROBES: [(&str, &str); 8] = [
    ("mirror_ssl_read", "SSL_read"),
    ("mirror_ssl_read_ex", "SSL_read_ex"),
    ("mirror_ssl_write", "SSL_write"),
    ("mirror_ssl_write_ex", "SSL_write_ex"),
    ("mirror_ssl_ret", "SSL_read"),
    ("mirror_ssl_ex_ret", "SSL_read_ex"),
    ("mirror_ssl_ret", "SSL_write"),
    ("mirror_ssl_ex_ret", "SSL_write_ex"),
];

/// The syscalls whose fd names a call's connection (OpenSSL's socket BIO uses read/write;
/// libcurl's own BIO recvfrom/sendto; the vector forms for completeness).
const SYSCALLS: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_write",
    "sys_enter_recvfrom",
    "sys_enter_sendto",
    "sys_enter_readv",
    "sys_enter_writev",
    "sys_enter_recvmsg",
    "sys_enter_sendmsg",
];

/// The entry probes on OpenSSL's internal read and write functions ([`super::tls_points`]);
/// their returns go to `mirror_ssl_ex_ret`.
const INTERNAL_READ: &str = "mirror_ssl_internal_read";
const INTERNAL_WRITE: &str = "mirror_ssl_internal_write";
const EX_RET: &str = "mirror_ssl_ex_ret";

const SYSCALL_PROGRAM: &str = "mirror_tls_syscall";
const SOCK_IO_PROGRAM: &str = "mirror_tls_sock_io";
const SOCK_STATE_PROGRAM: &str = "mirror_tls_sock_state";
const TRACEFS: &str = "/sys/kernel/tracing";

/// A record's header and data, or `None` for a record shorter than its header says.
pub fn decode(record: &[u8]) -> Option<TlsChunk<'_>> {
    let head = record.get(..TLS_HEADER_LEN)?;
    // SAFETY: TlsRecordHeader is repr(C), plain integers, no padding (asserted in
    // mirror-common): any TLS_HEADER_LEN bytes are a valid value; read unaligned.
    let header: TlsRecordHeader =
        unsafe { head.as_ptr().cast::<TlsRecordHeader>().read_unaligned() };
    let data = record.get(TLS_HEADER_LEN..TLS_HEADER_LEN + header.captured_len as usize)?;
    Some(TlsChunk { header, data })
}

/// The TLS programs' counters, summed over CPUs (see `mirror_common::tls::counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsKernelCounters {
    pub calls: u64,
    pub records: u64,
    pub ring_full: u64,
    pub truncated_bytes: u64,
    pub no_fd: u64,
    pub read_errors: u64,
    pub unmatched: u64,
    pub sampled_out: u64,
    pub close_lost: u64,
    pub sockets: u64,
    pub client_side: u64,
    pub other: u64,
    /// Connections of a TLS port closed without a TLS call seen (see
    /// `mirror_common::tls::counter::UNREAD`).
    pub unread: u64,
}

/// The TLS programs attached on an [`Ebpf`] instance: their ring and counters.
pub struct TlsProbes {
    pub(super) ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// The files the uprobes are on.
    pub targets: Vec<PathBuf>,
    /// Of those, the ones probed at OpenSSL's internal functions (no single-step per call).
    pub internal_targets: u64,
    /// The write calls are probed too (`--compare`: the server's responses).
    pub writes: bool,
    /// The socket tracepoints are attached (else only the connections open at start are read).
    pub socket_tracepoints: bool,
    /// The syscall tracepoints are attached (connections were open at start).
    pub syscall_tracepoints: bool,
    /// The connections of the captured ports already open when the programs were attached,
    /// by (pid, fd): the kernel has no endpoints for them ([`super::tls_procfs::snapshot_connections`]).
    pub open_before: super::tls_open_before::Snapshot,
    /// The syscall tracepoints, owned (detached when dropped).
    syscall_links: Vec<TracePointLink>,
}

/// Loads the TLS programs of `ebpf` into the kernel (not attached). Must run while the maps
/// they use are still in `ebpf`: a map taken out and dropped is closed, and a program loaded
/// after cannot refer to it.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    for name in PROBES
        .iter()
        .map(|(name, _)| *name)
        .chain([INTERNAL_READ, INTERNAL_WRITE])
    {
        let program = uprobe(ebpf, name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| CaptureError::Program { name, source })?;
        }
    }
    for name in [SYSCALL_PROGRAM, SOCK_STATE_PROGRAM, SOCK_IO_PROGRAM] {
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { name, source })?;
        program
            .load()
            .map_err(|source| CaptureError::Program { name, source })?;
    }
    Ok(())
}

/// Attaches the read probes of `ebpf` (and with `writes` the write probes) to one file, for
/// every process that maps it: at OpenSSL's internal functions where
/// [`super::tls_points`] finds them (`true`), else at the exported ones.
pub(super) fn attach_target(
    ebpf: &mut Ebpf,
    target: &Path,
    writes: bool,
) -> Result<bool, CaptureError> {
    let points = super::tls_points::probe_points(target);
    tracing::info!(target = %target.display(), ?points, "TLS uprobes");
    match points {
        super::tls_points::ProbePoints::Internal { read, write } => {
            let mut points = vec![(INTERNAL_READ, read), (EX_RET, read)];
            if writes {
                points.extend([(INTERNAL_WRITE, write), (EX_RET, write)]);
            }
            for (name, offset) in points {
                uprobe(ebpf, name)?
                    .attach(offset, target, UProbeScope::AllProcesses)
                    .map_err(|source| CaptureError::Program { name, source })?;
            }
            Ok(true)
        }
        super::tls_points::ProbePoints::Exported => {
            for (name, function) in PROBES
                .into_iter()
                .filter(|(_, function)| writes || !function.starts_with("SSL_write"))
            {
                uprobe(ebpf, name)?
                    .attach(function, target, UProbeScope::AllProcesses)
                    .map_err(|source| CaptureError::Program { name, source })?;
            }
            Ok(false)
        }
    }
}

impl TlsProbes {
    /// Attaches the TLS programs of `ebpf` (loaded by [`load_programs`]; its TLS maps sized
    /// by its loader) to `targets` (libssl files or binaries with OpenSSL linked in).
    /// `always_fds`: attach the syscall tracepoints (the calls' fds) even when no connection
    /// was open before (diagnostics and tests). `writes`: also probe the write calls (the
    /// server's responses, which only `--compare` reads): every probed call costs the process
    /// two traps, and a server makes about as many write calls as read calls with data.
    pub fn attach(
        ebpf: &mut Ebpf,
        targets: &[PathBuf],
        ports: &[u16],
        always_fds: bool,
        writes: bool,
    ) -> Result<Self, CaptureError> {
        mount_tracefs()?;
        let mut internal = 0;
        for target in targets {
            if attach_target(ebpf, target, writes)? {
                internal += 1;
            }
        }
        tracepoint(ebpf, SOCK_STATE_PROGRAM, &[("sock", "inet_sock_set_state")])?;
        // Every socket read (write) of the node runs the program: the sends only when the
        // write calls are probed.
        let io_points: &[(&str, &str)] = if writes {
            &[("sock", "sock_recv_length"), ("sock", "sock_send_length")]
        } else {
            &[("sock", "sock_recv_length")]
        };
        let socket_tracepoints = match tracepoint(ebpf, SOCK_IO_PROGRAM, io_points) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no sock_recv_length/sock_send_length tracepoints (Linux 6.3): TLS calls \
                     cannot be matched to connections established from now on; only those \
                     open at start are read"
                );
                false
            }
        };
        // After the socket tracepoints: a connection established in between is in both (the
        // kernel's endpoints win), none is in neither.
        let open_before = super::tls_procfs::snapshot_connections(ports);
        tracing::info!(
            connections = open_before.len(),
            "TLS: connections of the captured ports open before attaching, found in procfs"
        );
        // The fds only find those connections in the snapshot. The syscall tracepoints that
        // give them put every syscall of the node on the kernel's slower tracing path, so they
        // are attached only when there is something to find.
        let syscall_tracepoints = always_fds || !open_before.is_empty();
        let syscall_links = if syscall_tracepoints {
            let ids = tracepoint(
                ebpf,
                SYSCALL_PROGRAM,
                SYSCALLS.map(|s| ("syscalls", s)).as_slice(),
            )?;
            // Owned, so they can be detached once they are no longer needed.
            let program = tracepoint_program(ebpf, SYSCALL_PROGRAM)?;
            ids.into_iter()
                .map(|id| {
                    program
                        .take_link(id)
                        .map_err(|source| CaptureError::Program {
                            name: SYSCALL_PROGRAM,
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            ring: take(ebpf, tls::RING)?,
            counters: take(ebpf, tls::COUNTERS)?,
            targets: targets.to_vec(),
            internal_targets: internal,
            writes,
            socket_tracepoints,
            syscall_tracepoints,
            open_before,
            syscall_links,
        })
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&self) -> Result<TlsKernelCounters, CaptureError> {
        read_counters(&self.counters)
    }

    /// Registers the ring with the current tokio runtime's reactor; `ports`, `sample` as for
    /// [`TlsStreams::new`]; `config`: the programs' settings when `TLS_OPEN_BEFORE` is set
    /// (cleared once every connection open at start is accounted for, or `open_wait` is over).
    pub(super) fn start_reading(
        self,
        ports: Vec<u16>,
        sample: Option<(u64, u64)>,
        config: Option<aya::maps::Array<MapData, u64>>,
        open_wait: Option<std::time::Duration>,
    ) -> Result<TlsReader, CaptureError> {
        // SAFETY: the RingBuf owns its fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|e| CaptureError::Io {
                what: "registering the TLS ring buffer with the reactor",
                source: std::io::Error::from(e),
            })?;
        let open_before = OpenBefore::new(
            self.open_before,
            &ports,
            self.syscall_links,
            config,
            open_wait,
        );
        Ok(TlsReader {
            ring,
            counters: self.counters,
            streams: TlsStreams::new(ports, sample),
            wall_minus_mono: clock::wall_minus_monotonic_ns(),
            ciphertext: CiphertextFilter::default(),
            malformed: 0,
            targets: self.targets,
            internal_targets: self.internal_targets,
            targets_later: 0,
            follow_errors: 0,
            writes: self.writes,
            socket_tracepoints: self.socket_tracepoints,
            syscall_tracepoints: self.syscall_tracepoints,
            open_before,
            names: std::collections::HashMap::new(),
        })
    }
}

fn read_counters(map: &PerCpuArray<MapData, u64>) -> Result<TlsKernelCounters, CaptureError> {
    {
        let get = |index: u32| -> Result<u64, CaptureError> {
            Ok(map
                .get(&index, 0)
                .map_err(|source| CaptureError::Map {
                    name: tls::COUNTERS,
                    source,
                })?
                .iter()
                .sum())
        };
        use tls::counter as c;
        Ok(TlsKernelCounters {
            calls: get(c::CALLS)?,
            records: get(c::RECORDS)?,
            ring_full: get(c::RING_FULL)?,
            truncated_bytes: get(c::TRUNCATED_BYTES)?,
            no_fd: get(c::NO_FD)?,
            read_errors: get(c::READ_ERRORS)?,
            unmatched: get(c::UNMATCHED)?,
            sampled_out: get(c::SAMPLED_OUT)?,
            close_lost: get(c::CLOSE_LOST)?,
            sockets: get(c::SOCKETS)?,
            client_side: get(c::CLIENT_SIDE)?,
            other: get(c::OTHER)?,
            unread: get(c::UNREAD)?,
        })
    }
}

/// A process whose TLS plaintext is read (the server side of its connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsProcess {
    /// 0: the processes beyond the ones counted one by one.
    pub pid: u32,
    /// Its `comm` ("" when gone before it was read).
    pub name: String,
    pub connections: u64,
    pub plaintext_bytes: u64,
}

/// What the TLS side of live capture did (the exit summary and the metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsCounters {
    pub kernel: TlsKernelCounters,
    pub streams: TlsStreamStats,
    /// Segments (and their payload bytes) of TLS ports the classifiers recorded before the
    /// port was marked, read after: dropped here, not passed to the pipeline as ciphertext.
    pub late_ciphertext_segments: u64,
    pub late_ciphertext_bytes: u64,
    /// Records the reader could not decode (should stay 0).
    pub malformed_records: u64,
    /// Files the uprobes are on.
    pub targets: u64,
    /// Of those, probed at OpenSSL's internal functions ([`super::tls_points`]).
    pub internal_targets: u64,
    /// Of those, found after start (`--tls follow`).
    pub targets_later: u64,
    /// Files found after start that could not be probed (`--tls follow`; logged).
    pub follow_errors: u64,
    /// The write calls are probed too (`--compare`).
    pub writes: bool,
    /// The socket tracepoints are attached.
    pub socket_tracepoints: bool,
    /// The syscall tracepoints are attached.
    pub syscall_tracepoints: bool,
    /// ... and detached since: every connection open at start is accounted for.
    pub syscall_tracepoints_detached: bool,
    /// Server-side connections open at start not accounted for yet (neither a call nor a
    /// close seen), and those that closed without a call.
    pub open_before_pending: u64,
    pub open_before_closed_idle: u64,
    /// Server-side connections open at start given up, still idle and open, after
    /// `--tls-open-wait-secs` (their later calls are counted in the kernel's `other`, not read).
    pub open_before_given_up: u64,
    /// The processes read, by pid.
    pub processes: Vec<TlsProcess>,
}

/// The TLS ring of a running live capture: records become segments ([`TlsStreams`]).
pub(super) struct TlsReader {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    streams: TlsStreams,
    wall_minus_mono: u64,
    ciphertext: CiphertextFilter,
    malformed: u64,
    targets: Vec<PathBuf>,
    internal_targets: u64,
    targets_later: u64,
    follow_errors: u64,
    writes: bool,
    socket_tracepoints: bool,
    syscall_tracepoints: bool,
    /// The connections open at start, until each is accounted for.
    open_before: OpenBefore,
    /// Process names, read once per pid (bounded as the processes are).
    names: std::collections::HashMap<u32, String>,
}

impl TlsReader {
    /// Whether the write calls are probed.
    pub(super) fn writes(&self) -> bool {
        self.writes
    }

    /// A file found after start: probed (`Some(internal)`) or not (`None`, counted).
    pub(super) fn note_later_target(&mut self, target: PathBuf, internal: Option<bool>) {
        match internal {
            Some(internal) => {
                self.internal_targets += u64::from(internal);
                self.targets_later += 1;
                self.targets.push(target);
            }
            None => self.follow_errors += 1,
        }
    }

    /// Hands up to `max` records' segments to `f`; returns the records read.
    pub(super) fn read(&mut self, max: usize, f: &mut impl FnMut(SegmentRef<'_>)) -> usize {
        let Self {
            ring,
            streams,
            wall_minus_mono,
            ciphertext,
            malformed,
            open_before,
            ..
        } = self;
        let ring = ring.get_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            n += 1;
            let Some(chunk) = decode(&item) else {
                *malformed += 1;
                continue;
            };
            if chunk.header.kind == tls::kind::CLOSE
                && let Some((local, remote)) = close_endpoints(&chunk.header)
                && open_before.on_close(local, remote)
            {
                // A connection open at start that closed without a call: no flow to end.
                continue;
            }
            // Connections the kernel has no endpoints for were open before attaching: found in
            // the snapshot taken then (procfs cannot be read later: the agent has given up the
            // privileges to look into other processes).
            let mut resolve = |pid: u32, fd: i32| open_before.resolve(pid, fd);
            let ts = chunk.header.ts_ns.wrapping_add(*wall_minus_mono);
            streams.on_chunk(&chunk, ts, &mut resolve, &mut |seg| {
                ciphertext.learn(&seg);
                f(seg)
            });
        }
        open_before.settle(std::time::Instant::now());
        n
    }

    /// Whether a classifier segment belongs to a port seen carrying TLS (its ciphertext, read
    /// after the port was marked): counted, to be dropped.
    pub(super) fn is_ciphertext(&mut self, seg: &SegmentRef<'_>) -> bool {
        self.ciphertext.drops(seg)
    }

    pub(super) async fn readable(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    pub(super) fn counters(&mut self) -> Result<TlsCounters, CaptureError> {
        let mut processes: Vec<TlsProcess> = self
            .streams
            .processes()
            .iter()
            .map(|(&pid, p)| TlsProcess {
                pid,
                name: self
                    .names
                    .entry(pid)
                    .or_insert_with(|| super::tls_procfs::process_name(pid))
                    .clone(),
                connections: p.connections,
                plaintext_bytes: p.bytes,
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        Ok(TlsCounters {
            processes,
            kernel: read_counters(&self.counters)?,
            streams: self.streams.stats(),
            late_ciphertext_segments: self.ciphertext.segments,
            late_ciphertext_bytes: self.ciphertext.bytes,
            malformed_records: self.malformed,
            targets: self.targets.len() as u64,
            internal_targets: self.internal_targets,
            targets_later: self.targets_later,
            follow_errors: self.follow_errors,
            writes: self.writes,
            socket_tracepoints: self.socket_tracepoints,
            syscall_tracepoints: self.syscall_tracepoints,
            syscall_tracepoints_detached: self.open_before.detached(),
            open_before_pending: self.open_before.pending() as u64,
            open_before_closed_idle: self.open_before.closed_idle(),
            open_before_given_up: self.open_before.given_up(),
        })
    }
}

/// The server ports seen carrying TLS plaintext, learnt from the TLS ring's segments, and the
/// classifiers' segments of those ports dropped since (their ciphertext, read after the kernel
/// began marking the port; the kernel counts those it left out itself).
#[derive(Debug, Default)]
struct CiphertextFilter {
    ports: Vec<u16>,
    segments: u64,
    bytes: u64,
}

impl CiphertextFilter {
    /// Notes the server port of a plaintext segment from the client (a handful of ports: a
    /// vector scan is cheaper than hashing).
    fn learn(&mut self, plaintext: &SegmentRef<'_>) {
        if plaintext.direction == Some(SegmentDirection::FromClient)
            && !self.ports.contains(&plaintext.dst.port())
        {
            self.ports.push(plaintext.dst.port());
        }
    }

    /// Whether a classifier segment is of a port seen carrying TLS: counted, to be dropped.
    fn drops(&mut self, seg: &SegmentRef<'_>) -> bool {
        if self.ports.is_empty() {
            return false;
        }
        let server_port = match seg.direction {
            Some(SegmentDirection::FromServer) => seg.src.port(),
            _ => seg.dst.port(),
        };
        if !self.ports.contains(&server_port) {
            return false;
        }
        self.segments += 1;
        self.bytes += seg.payload.len() as u64;
        true
    }
}

/// The TLS programs on an instance of their own, without classifiers (tests and diagnostics):
/// `ports` are the captured (server) ports, whose sockets get endpoints.
pub struct TlsCapture {
    probes: TlsProbes,
    // Last field: dropped after the maps, detaching the programs.
    _ebpf: Ebpf,
}

impl TlsCapture {
    /// Loads the TLS programs and attaches them to `libssl` (every process that maps that
    /// file) and to the tracepoints. `ring_size`: a power of two of at least 4096.
    pub fn attach(libssl: &Path, ports: &[u16], ring_size: u32) -> Result<Self, CaptureError> {
        let data = object().ok_or(CaptureError::NoObject)?;
        let mut ebpf = EbpfLoader::new()
            // This instance carries no TC capture: its maps cost a page each.
            .map_max_entries(maps::RING, 4096)
            .map_max_entries(maps::SCRATCH, 1)
            .map_max_entries(maps::IGNORE, 1)
            .map_max_entries(maps::SKIP, 1)
            .map_max_entries(maps::IFACES, 1)
            .map_max_entries(maps::IFACE_SLOTS, 1)
            .map_max_entries(tls::RING, ring_size)
            .load(data)
            .map_err(CaptureError::Load)?;
        load_programs(&mut ebpf)?;
        {
            let mut map: aya::maps::Array<_, u8> = aya::maps::Array::try_from(
                ebpf.map_mut(maps::PORTS)
                    .ok_or(CaptureError::Missing(maps::PORTS))?,
            )
            .map_err(|source| CaptureError::Map {
                name: maps::PORTS,
                source,
            })?;
            for port in ports {
                map.set(u32::from(*port), port_state::CAPTURED, 0)
                    .map_err(|source| CaptureError::Map {
                        name: maps::PORTS,
                        source,
                    })?;
            }
        }
        {
            // Every flow, every call copied (the config array's other settings are the
            // classifiers').
            let mut settings: aya::maps::Array<_, u64> = take(&mut ebpf, maps::CONFIG)?;
            for (index, value) in [
                (mirror_common::config::SAMPLE_BASIS_POINTS, 10000),
                (mirror_common::config::TLS_OPEN_BEFORE, 1),
            ] {
                settings
                    .set(index, value, 0)
                    .map_err(|source| CaptureError::Map {
                        name: maps::CONFIG,
                        source,
                    })?;
            }
        }
        let probes = TlsProbes::attach(&mut ebpf, &[libssl.to_path_buf()], ports, true, true)?;
        Ok(Self {
            probes,
            _ebpf: ebpf,
        })
    }

    /// Hands every record in the ring to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(TlsChunk<'_>)) -> usize {
        let mut n = 0;
        while let Some(item) = self.probes.ring.next() {
            n += 1;
            if let Some(chunk) = decode(&item) {
                f(chunk);
            }
        }
        n
    }

    /// The programs' counters.
    pub fn counters(&self) -> Result<TlsKernelCounters, CaptureError> {
        self.probes.counters()
    }
}

/// What `--tls` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsSetting {
    /// No TLS programs.
    #[default]
    Off,
    /// The libssl of the processes listening on the captured ports
    /// ([`super::tls_procfs::discover`]).
    Auto,
    /// As `Auto`, and these binaries (`--tls-binary`).
    AutoAnd(Vec<PathBuf>),
    /// These files (libssl, or binaries with OpenSSL linked in).
    Files(Vec<PathBuf>),
}

/// What `--tls` needs from this node, for `mirror-agent check`: `(ok, detail)`. Mounts tracefs
/// when it is not (as the agent does) to look for the tracepoints.
pub fn mechanisms() -> (bool, String) {
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    let tracefs = mount_tracefs().is_ok();
    let event = |p: &str| tracefs && Path::new(TRACEFS).join("events").join(p).is_dir();
    let syscalls = SYSCALLS.iter().all(|s| event(&format!("syscalls/{s}")));
    let state = event("sock/inet_sock_set_state");
    let sock_io = event("sock/sock_recv_length") && event("sock/sock_send_length");
    let libssl = super::tls_procfs::system_libssl();
    let yes = |b: bool| if b { "yes" } else { "MISSING" };
    let detail = format!(
        "uprobes {}, syscall tracepoints {}, inet_sock_set_state {}, sock_recv/send_length {}{}; \
         system libssl: {}; needs at start CAP_SYS_ADMIN (uprobes) and CAP_SYS_PTRACE (other \
         processes' /proc), given up once attached (kept with --tls follow)",
        yes(uprobes),
        yes(syscalls),
        yes(state),
        if sock_io {
            "yes"
        } else {
            "no (Linux < 6.3: connections found through procfs only)"
        },
        if tracefs {
            ""
        } else {
            " (tracefs could not be mounted)"
        },
        if libssl.is_empty() {
            "none found".into()
        } else {
            libssl
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    (uprobes && syscalls && state, detail)
}

fn tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    points: &[(&str, &str)],
) -> Result<Vec<TracePointLinkId>, CaptureError> {
    let program = tracepoint_program(ebpf, name)?;
    points
        .iter()
        .map(|(category, point)| {
            program
                .attach(category, point)
                .map_err(|source| CaptureError::Program { name, source })
        })
        .collect()
}

fn tracepoint_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut TracePoint, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })
}

/// Mounts tracefs at its usual place when nothing is mounted there (aya finds the tracepoints'
/// ids in it).
fn mount_tracefs() -> Result<(), CaptureError> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(CaptureError::Io {
            what: "mounting tracefs at /sys/kernel/tracing",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::TcpFlags;

    #[test]
    fn short_or_mislabelled_records_are_not_decoded() {
        assert_eq!(decode(&[0u8; 10]), None);
        let mut r = vec![0u8; TLS_HEADER_LEN + 4];
        // captured_len (offset 36) says 8 bytes follow; only 4 do.
        r[36] = 8;
        assert_eq!(decode(&r), None);
        r[36] = 4;
        r[TLS_HEADER_LEN..].copy_from_slice(b"GET ");
        let c = decode(&r).unwrap();
        assert_eq!((c.data, c.is_read()), (&b"GET "[..], true));
    }

    /// The classifiers' segments of a port the TLS ring showed carrying plaintext are dropped
    /// and counted, both directions (the server's port is the destination from the client and
    /// the source from the server); other ports' pass; nothing is dropped before a port is
    /// learnt, and the server's own writes teach nothing.
    #[test]
    fn ciphertext_of_ports_seen_carrying_plaintext_is_dropped_and_counted() {
        let seg = |src: &str, dst: &str, direction, payload: &'static [u8]| SegmentRef {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq: 1,
            ack: 0,
            flags: TcpFlags(TcpFlags::ACK),
            direction: Some(direction),
            ts_ns: 0,
            payload,
        };
        let (client, server, other) = ("10.0.0.1:50000", "10.0.0.2:443", "10.0.0.2:8080");
        let mut f = CiphertextFilter::default();
        let hello = seg(
            client,
            server,
            SegmentDirection::FromClient,
            b"\x16\x03\x01",
        );
        assert!(!f.drops(&hello), "no port learnt yet");
        f.learn(&seg(
            server,
            client,
            SegmentDirection::FromServer,
            b"HTTP/1.1",
        ));
        assert!(!f.drops(&hello), "a server's write names no new port");
        f.learn(&seg(
            client,
            server,
            SegmentDirection::FromClient,
            b"GET / HTTP/1.1",
        ));
        f.learn(&seg(
            client,
            server,
            SegmentDirection::FromClient,
            b"GET / HTTP/1.1",
        ));
        assert_eq!(f.ports, [443]);
        assert!(f.drops(&hello));
        assert!(f.drops(&seg(
            server,
            client,
            SegmentDirection::FromServer,
            b"\x17\x03\x03\x00"
        )));
        assert!(!f.drops(&seg(client, other, SegmentDirection::FromClient, b"GET")));
        assert!(!f.drops(&seg(other, client, SegmentDirection::FromServer, b"HTTP")));
        assert_eq!((f.segments, f.bytes), (2, 3 + 4));
    }
}
