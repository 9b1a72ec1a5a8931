//! Live mode: validate the flags, attach the capture, feed segments to a consumer, report.
//!
//! Owns the operator-facing behaviour of live capture: one-line errors with exit status 2 for bad
//! input (nothing is attached when validation fails), a progress line every few seconds, a final
//! summary on SIGINT/SIGTERM or after `--duration`, and `--write-pcap`. What happens to the
//! segments is the caller's business: they are handed to a sink (the pipeline plugs in there).

mod pcap_out;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

pub use self::pcap_out::{PcapOut, PcapOutError};
use crate::capture::ebpf::{
    AttachedCapture, CaptureError, CopyPath, Counters, FlowIgnore, LinkMonitor, LiveCapture,
    LiveConfig, MAX_BATCH,
};
use crate::capture::{Segment, SegmentRef};
use crate::output_queue::{OutputQueue, OutputReport, OutputStats, QueueLimits};

/// Interval of the progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Interval of the empty batches handed to the sink when the ring is quiet.
pub const IDLE_TICK: Duration = Duration::from_millis(200);
/// How often the kernel counters are handed to the sink.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// How long the end of a run waits for the pcap thread to write what is queued.
const PCAP_FLUSH: Duration = Duration::from_secs(5);

/// Validated live-mode settings.
pub struct LiveOptions {
    pub capture: LiveConfig,
    /// The classifiers, attached by the caller before the runtime started (see
    /// [`crate::privileges`]); reading starts in [`run`].
    pub attached: AttachedCapture,
    pub duration: Option<Duration>,
    pub write_pcap: Option<PathBuf>,
    /// `--write-pcap` may replace an existing regular file.
    pub overwrite: bool,
    /// `--write-pcap`'s queue: segments waiting for the pcap thread. Past it segments are
    /// dropped for the pcap file only, counted; capture and the other outputs go on.
    pub pcap_queue: QueueLimits,
    /// `--threads`, for the start line (the runtime is built by the caller).
    pub threads: usize,
}

/// Why live mode stopped or never started. `exit_code` maps each to the process status.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Bad flags or environment the operator must fix; nothing was attached.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Pcap(#[from] PcapOutError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl LiveError {
    /// 2 for input the operator must fix (flags, privileges, interface, kernel), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            // A bad --write-pcap path is bad input, as in every mode.
            LiveError::Usage(_) | LiveError::Pcap(PcapOutError::Create(_)) => 2,
            LiveError::Capture(
                CaptureError::NoObject
                | CaptureError::UnknownInterface(_)
                | CaptureError::Cgroup { .. }
                | CaptureError::Invalid(_),
            ) => 2,
            _ => 1,
        }
    }
}

/// Checks what the flags cannot: privileges, BPF support and the interfaces or cgroups, without
/// touching the kernel's BPF state (the flags themselves were validated by `config`).
pub fn check_environment(capture: &LiveConfig) -> Result<(), LiveError> {
    if let Some(reason) = crate::check::missing_privileges() {
        return Err(LiveError::Usage(reason));
    }
    if !crate::check::bpf_syscall_available() {
        return Err(LiveError::Usage(
            "this kernel has no BPF support (bpf syscall missing)".into(),
        ));
    }
    crate::capture::ebpf::check_target(&capture.target)?;
    if capture.tls != crate::capture::ebpf::tls::TlsSetting::Off
        && let Some(reason) = crate::check::missing_tls_privileges()
    {
        return Err(LiveError::Usage(reason));
    }
    Ok(())
}

/// What a live run saw, for the final summary and for tests.
#[derive(Debug, Clone, Default)]
pub struct LiveSummary {
    pub segments: u64,
    pub payload_bytes: u64,
    /// How `--write-pcap` ended (segments written and dropped).
    pub pcap: Option<OutputReport>,
    pub kernel: Counters,
    /// The classifier variant that ran (`None` before attaching).
    pub copy: Option<CopyPath>,
}

impl std::fmt::Display for LiveSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = &self.kernel;
        write!(
            f,
            "segments={} bytes={} seen={} matched={} records={} ring_full={} sampled_out={} \
             ignored={} empty={} truncated={} unparseable={} load_errors={} malformed_records={} \
             captured={} chunked_records={} chunks_lost={} max_skb_payload={} capture_copy={} \
             interfaces={} iface_attached={} iface_detached={} iface_attach_errors={} \
             iface_resyncs={} skipped={} skipped_bytes={} skip_requests={} skip_failed={} \
             tls_ciphertext={}{}{}",
            self.segments,
            self.payload_bytes,
            k.seen,
            k.matched,
            k.records,
            k.ring_full,
            k.sampled_out,
            k.ignored,
            k.empty,
            k.truncated,
            k.unparseable,
            k.load_error,
            k.malformed_records,
            k.captured,
            k.chunked_records,
            k.chunks_lost,
            k.max_skb_payload,
            self.copy.map_or("none", CopyPath::name),
            k.interfaces,
            k.iface.attached,
            k.iface.detached,
            k.iface.attach_errors,
            k.iface.resyncs,
            k.skipped,
            k.skipped_bytes,
            k.skip.requested,
            k.skip.failed,
            k.tls_ciphertext,
            match &k.tls {
                Some(t) => format!(
                    " tls_targets={} tls_internal_targets={} tls_targets_later={} tls_follow_errors={} \
                     tls_write_probes={} tls_socket_tracepoints={} \
                     tls_syscall_tracepoints_detached={} tls_open_before_pending={} \
                     tls_open_before_closed_idle={} tls_open_before_given_up={} \
                     tls_syscall_tracepoints={} tls_calls={} tls_records={} \
                     tls_ring_full={} tls_truncated_bytes={} tls_no_fd={} tls_read_errors={} \
                     tls_unmatched={} tls_sampled_out={} tls_close_lost={} tls_sockets={} tls_client_side={} \
                     tls_other_calls={} tls_connections_unread={} \
                     tls_connections={} tls_connections_from_start={} \
                     tls_connections_procfs={} tls_connections_closed={} \
                     tls_connections_replaced={} tls_closes_unmatched={} tls_bytes={} \
                     tls_segment_bytes={} tls_lost_bytes={} tls_client_side_bytes={} \
                     tls_unresolved_bytes={} tls_other_bytes={} tls_sampled_out_bytes={} \
                     tls_late_ciphertext_segments={} tls_malformed_records={}",
                    t.targets,
                    t.internal_targets,
                    t.targets_later,
                    t.follow_errors,
                    u8::from(t.writes),
                    u8::from(t.socket_tracepoints),
                    u8::from(t.syscall_tracepoints_detached),
                    t.open_before_pending,
                    t.open_before_closed_idle,
                    t.open_before_given_up,
                    u8::from(t.syscall_tracepoints),
                    t.kernel.calls,
                    t.kernel.records,
                    t.kernel.ring_full,
                    t.kernel.truncated_bytes,
                    t.kernel.no_fd,
                    t.kernel.read_errors,
                    t.kernel.unmatched,
                    t.kernel.sampled_out,
                    t.kernel.close_lost,
                    t.kernel.sockets,
                    t.kernel.client_side,
                    t.kernel.other,
                    t.kernel.unread,
                    t.streams.connections,
                    t.streams.connections_from_start,
                    t.streams.connections_resolved_procfs,
                    t.streams.connections_closed,
                    t.streams.connections_replaced,
                    t.streams.closes_unmatched,
                    t.streams.bytes,
                    t.streams.segment_bytes,
                    t.streams.lost_bytes,
                    t.streams.client_side_bytes,
                    t.streams.unresolved_bytes,
                    t.streams.other_bytes,
                    t.streams.sampled_out_bytes,
                    t.late_ciphertext_segments,
                    t.malformed_records,
                ),
                None => String::new(),
            },
            match &self.pcap {
                Some(p) => format!(
                    " pcap_segments={} pcap_dropped={}",
                    p.counters.written,
                    p.counters.dropped()
                ),
                None => String::new(),
            }
        )
    }
}

/// What live capture hands its consumer. All methods run on the capture task, so they must not
/// block (the replay stage only enqueues).
pub trait LiveSink {
    /// Capture is attached; `ignore` registers the agent's own connections (no replay loops).
    fn started(&mut self, ignore: FlowIgnore);
    /// One segment, its payload borrowed from the ring buffer for the duration of the call:
    /// what the consumer keeps, it copies.
    fn segment(&mut self, seg: SegmentRef<'_>);
    /// After each read of the ring, and every [`IDLE_TICK`] on a quiet link: the consumer's
    /// timers (gap timeouts, idle expiry) run and its events go out.
    fn batch_done(&mut self);
    /// The kernel counters, about once a second (for metrics).
    fn kernel_counters(&mut self, _counters: &Counters) {}
    /// An output thread of live capture's own started (`--write-pcap`): its counters, for
    /// the metrics.
    fn output_started(&mut self, _stats: OutputStats) {}
    /// Moves into `out` the client byte ranges capture need not copy (bodies nobody needs):
    /// (client, server, sequence number where the body ends).
    fn take_skips(&mut self, _out: &mut Vec<(std::net::SocketAddr, std::net::SocketAddr, u32)>) {}
}

/// Runs live capture until SIGINT/SIGTERM or the duration ends, handing everything to `sink`.
pub async fn run(opts: LiveOptions, sink: &mut impl LiveSink) -> Result<LiveSummary, LiveError> {
    let pcap = opts
        .write_pcap
        .as_deref()
        .map(|p| PcapOut::create(p, opts.overwrite))
        .transpose()?
        .map(|out| OutputQueue::start("pcap", out, opts.pcap_queue))
        .transpose()
        .map_err(|source| LiveError::Io {
            what: "starting the pcap writer thread",
            source,
        })?;
    if let Some(q) = &pcap {
        sink.output_started(q.stats());
    }
    let sig = |kind| {
        signal(kind).map_err(|source| LiveError::Io {
            what: "installing a signal handler",
            source,
        })
    };
    let mut sigint = sig(SignalKind::interrupt())?;
    let mut sigterm = sig(SignalKind::terminate())?;

    let mut capture = opts.attached.start_reading()?;
    sink.started(capture.flow_ignore());
    tracing::info!(
        target = %opts.capture.target,
        mode = ?capture.mode(),
        copy = %capture.copy_path(),
        threads = opts.threads,
        "capturing; stop with SIGINT/SIGTERM"
    );

    let mut summary = LiveSummary {
        copy: Some(capture.copy_path()),
        ..LiveSummary::default()
    };
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let mut idle = tokio::time::interval(IDLE_TICK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut counters_due = tokio::time::Instant::now();
    // `--iface` globs: link notifications, waited on next to the ring.
    let mut links = capture.take_link_monitor();
    // Read before waiting: after a full read the ring may hold more, and the kernel wakes the
    // reader only when enough bytes are queued.
    let mut more = true;
    loop {
        tokio::select! {
            ready = capture.wait(), if !more => {
                ready?;
                more = true;
            }
            // Ready at once when there may be more to read; `select!` still polls the other
            // branches (signals, ticks) between reads.
            _ = std::future::ready(()), if more => {
                let n = read_segments(&mut capture, &mut summary, pcap.as_ref(), sink);
                more = n >= MAX_BATCH;
                if more {
                    // With `--threads 1` the mirror connections run on this thread: they send
                    // this batch's copies before the next batch is read.
                    tokio::task::yield_now().await;
                }
            }
            _ = progress.tick() => {
                let k = capture.counters()?;
                tracing::info!(
                    packets = k.records,
                    bytes = k.payload_bytes,
                    drops = k.dropped(),
                    sampled_out = k.sampled_out,
                    "capture progress"
                );
            }
            // The consumer runs its timers (gap timeouts, idle expiry) while no packet arrives.
            _ = idle.tick() => {
                sink.batch_done();
                skip_bodies(&mut capture, sink);
                capture.follow_tls();
                if counters_due.elapsed() >= COUNTERS_EVERY {
                    counters_due = tokio::time::Instant::now();
                    sink.kernel_counters(&capture.counters()?);
                }
            }
            events = next_link_events(&mut links) => match events {
                Ok(events) => capture.follow_links(events),
                Err(e) => {
                    // Interfaces already attached stay attached; new ones are no longer seen.
                    tracing::error!(error = %e, "link notifications failed; no longer following interfaces");
                    links = None;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
        }
    }
    // Pick up what the kernel queued before we stop reading: until a read finds the ring empty
    // twice, a drain period apart (records submitted without a wakeup), at most a second.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut empty_reads = 0;
    while empty_reads < 2 && tokio::time::Instant::now() < until {
        if read_segments(&mut capture, &mut summary, pcap.as_ref(), sink) == 0 {
            empty_reads += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            empty_reads = 0;
            tokio::task::yield_now().await;
        }
    }
    summary.kernel = capture.counters()?;
    if let Some(p) = pcap {
        // A blocking wait (bounded): the pcap thread may be stuck on a sink that stopped
        // reading, and a runtime worker must not wait on it.
        let report = tokio::task::spawn_blocking(move || p.finish(PCAP_FLUSH))
            .await
            .map_err(|e| LiveError::Io {
                what: "finishing the pcap file",
                source: std::io::Error::other(e),
            })?;
        if let Some(e) = &report.error {
            return Err(LiveError::Io {
                what: "writing the pcap file",
                source: std::io::Error::other(e.clone()),
            });
        }
        summary.pcap = Some(report);
    }
    drop(capture);
    tracing::info!(%summary, "capture stopped, detached");
    Ok(summary)
}

/// The next link notifications, or never when interfaces are not followed.
async fn next_link_events(
    links: &mut Option<LinkMonitor>,
) -> std::io::Result<Vec<crate::capture::ebpf::LinkEvent>> {
    match links {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// One read of the ring, in place: each segment goes to the sink borrowed from the ring (and,
/// with `--write-pcap`, a copy to the pcap thread, which must keep it); then the sink's timers
/// run. Returns the records read. Never blocks.
fn read_segments(
    capture: &mut LiveCapture,
    summary: &mut LiveSummary,
    pcap: Option<&OutputQueue<Segment>>,
    sink: &mut impl LiveSink,
) -> usize {
    let n = capture.read_in_place(|seg| {
        summary.segments += 1;
        summary.payload_bytes += seg.payload.len() as u64;
        if let Some(p) = pcap {
            p.submit_with(seg.payload.len() + 64, || seg.to_owned());
        }
        sink.segment(seg);
    });
    if n > 0 {
        sink.batch_done();
        skip_bodies(capture, sink);
    }
    n
}

/// Hands the sink's requests to skip bodies nobody needs to the kernel.
fn skip_bodies(capture: &mut LiveCapture, sink: &mut impl LiveSink) {
    let mut skips = Vec::new();
    sink.take_skips(&mut skips);
    if !skips.is_empty() {
        capture.skip_bodies(&skips);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
