//! The agent's main mode: live capture → pipeline → recording and replay to the mirrors.
//!
//! Owns the wiring only: settings from flags and the config file, the kernel ignore map hooked
//! into the replayer's connections (no replay loops), the pipeline driven from capture batches
//! and idle ticks on the capture's clock ([`crate::capture::clock`]), and the end report (capture
//! line on stdout, pipeline summary and mirror table on stderr), and the telemetry (metrics
//! endpoint, OTLP) fed from the stages' snapshots about once a second. Capture itself is
//! [`super::live`], the stages are the library's.

use std::sync::{Arc, OnceLock};

use super::AppError;
use super::outputs::Outputs;
use crate::capture::ebpf::{AttachMode, AttachedCapture, Counters, FlowIgnore};
use crate::capture::{SegmentRef, clock};
use crate::config::Settings;
use crate::pipeline::{Pipeline, PipelineEvent};
use crate::replay::ConnectionHooks;

use super::live;

/// How often (capture time) gap timeouts and idle expiry run.
const TICK_NS: u64 = 100_000_000;
/// Test aid, not a product option: `MIRROR_DISABLE_IGNORE_MAP=1` leaves the agent's own mirror
/// connections out of the kernel ignore map, so a test can show the replay loop the map prevents
/// (`tests/tests/mirror_loop.rs`). Warned about at start; never set it in production.
pub const DISABLE_IGNORE_ENV: &str = "MIRROR_DISABLE_IGNORE_MAP";

/// Live mode: checks the environment and the mirrors (nothing is attached when that fails),
/// attaches, gives up the privileges it no longer needs, then runs.
///
/// The order matters: capabilities are per thread and threads inherit them, so attaching and
/// confining happen here, on the main thread, while it is the only one; the runtime's threads
/// start after, with only what the mode keeps. The mirror check resolves names on a runtime of
/// its own, shut down (its threads joined) before attaching.
pub fn main(settings: Settings) -> Result<(), AppError> {
    let capture = settings.live.capture()?;
    live::check_environment(&capture)?;
    if !settings.replay.mirrors.is_empty() {
        let prelude = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AppError::Runtime)?;
        prelude.block_on(settings.check_not_primary())?;
    }
    let attached = AttachedCapture::attach(capture.clone()).map_err(live::LiveError::from)?;
    let needs = crate::privileges::Needs {
        bind_low_port: super::binds_low_port(&settings),
        attach_later: attached.follows_interfaces(),
        tls_attach_later: attached.follows_tls(),
        ..crate::privileges::Needs::live(
            crate::check::kernel_version(),
            attached.mode() == AttachMode::Netlink,
        )
    };
    crate::privileges::confine(needs)?;
    let opts = live::LiveOptions {
        capture,
        attached,
        duration: settings.live.duration,
        write_pcap: settings.live.write_pcap.clone(),
        overwrite: settings.live.overwrite,
        pcap_queue: settings.output_queue,
        threads: settings.threads,
    };
    super::runtime_with(settings.threads)?.block_on(run(settings, opts))
}

/// The hooks that keep the agent's own mirror connections out of capture: each connection's
/// local end goes into the kernel ignore map before its SYN leaves (NAT cannot change that
/// end), and leaves it shortly after the connection closes, before its port can be reused.
fn ignore_hooks(ignore: &Arc<OnceLock<FlowIgnore>>) -> ConnectionHooks {
    if std::env::var_os(DISABLE_IGNORE_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(
            "{DISABLE_IGNORE_ENV}=1: the agent's own mirror connections are NOT excluded from \
             capture (test aid: a mirror on the captured interface and port will loop)"
        );
        return ConnectionHooks::default();
    }
    let (opened, closed) = (ignore.clone(), ignore.clone());
    ConnectionHooks {
        opened: Some(Arc::new(move |local, remote| {
            if let Some(ig) = opened.get()
                && let Err(e) = ig.ignore(local, remote)
            {
                // The LRU map never refuses an insert; an error here is a kernel-side failure
                // and the flow may be captured back (the pipeline would then see the mirror's
                // port).
                tracing::warn!(%local, %remote, error = %e, "cannot register a mirror connection");
            }
        })),
        closed: Some(Arc::new(move |local, _remote| {
            if let Some(ig) = closed.get() {
                ig.closed(local);
            }
        })),
    }
}

async fn run(settings: Settings, opts: live::LiveOptions) -> Result<(), AppError> {
    // Requests only arrive once capture is read, and it is read only after the slot is filled
    // (`LiveSink::started`), so no mirror connection misses the ignore map.
    let ignore: Arc<OnceLock<FlowIgnore>> = Arc::default();
    let outputs = Outputs::start(&settings, ignore_hooks(&ignore)).await?;
    let mut driver = Driver {
        pipeline: Pipeline::new(settings.pipeline.clone()),
        events: Vec::new(),
        outputs,
        ignore,
        next_tick: 0,
        kernel: None,
        skips: Vec::new(),
    };
    let result = live::run(opts, &mut driver).await;
    driver.pipeline.finish(&mut driver.events);
    driver.handle_events();
    let pipeline_stats = driver.pipeline.stats();
    let kernel = result.as_ref().ok().map(|s| s.kernel.clone());
    let report = driver
        .outputs
        .finish(kernel.as_ref(), Some(&pipeline_stats))
        .await;
    let summary = result?;
    eprint!("{pipeline_stats}");
    report.print();
    if let Some(t) = &summary.kernel.tls {
        eprint!("{}", tls_report(t));
    }
    if let Some(p) = &summary.pcap {
        eprint!("{}", p.summary());
    }
    // The capture line goes to stdout (tests and scripts parse it) unless stdout carries the
    // recording.
    if report.record_to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    match report.record_error() {
        Some(e) => Err(AppError::Incomplete(format!("recording: {e}"))),
        None => Ok(()),
    }
}

/// The exit report's TLS lines: which processes' plaintext was read ("is this service being
/// read?"), and what was lost.
fn tls_report(t: &crate::capture::ebpf::tls::TlsCounters) -> String {
    let mut out = format!(
        "TLS plaintext (--tls): uprobes on {} file(s) ({}), socket tracepoints {}; {} \
         connection(s) read, {} record chunk(s) lost to a full ring\n",
        t.targets,
        if t.writes {
            "reads and writes"
        } else {
            "reads: the responses are not compared"
        },
        if t.socket_tracepoints {
            "on"
        } else {
            "missing (procfs only)"
        },
        t.streams.connections_from_start + t.streams.connections_resolved_procfs,
        t.kernel.ring_full,
    );
    if t.processes.is_empty() {
        out.push_str("  no process's TLS connections on the captured ports were read\n");
    }
    for p in &t.processes {
        out.push_str(&format!(
            "  {} (pid {}): {} connection(s), {} plaintext bytes\n",
            if p.name.is_empty() { "?" } else { &p.name },
            p.pid,
            p.connections,
            p.plaintext_bytes
        ));
    }
    if t.kernel.unread > 0 {
        out.push_str(&format!(
            "  {} connection(s) of TLS ports closed without plaintext read: ones that sent no \
             request (TCP-only checks, clients closing unused connections), or served by a \
             process whose TLS library is not probed (another libssl file: --tls PATH; OpenSSL \
             linked in: --tls-binary; another TLS stack: not readable)\n",
            t.kernel.unread
        ));
    }
    if t.open_before_given_up > 0 {
        out.push_str(&format!(
            "  {} connection(s) open before the agent started were still idle after \
             --tls-open-wait-secs and were given up: their later requests were not read\n",
            t.open_before_given_up
        ));
    }
    out
}

/// The consumer of live capture: the pipeline, then the outputs.
struct Driver {
    pipeline: Pipeline,
    events: Vec<PipelineEvent>,
    outputs: Outputs,
    ignore: Arc<OnceLock<FlowIgnore>>,
    next_tick: u64,
    kernel: Option<Counters>,
    /// Bodies capture need not copy, until the live loop takes them.
    skips: Vec<(std::net::SocketAddr, std::net::SocketAddr, u32)>,
}

impl Driver {
    fn handle_events(&mut self) {
        let skips = &mut self.skips;
        let events = self.events.drain(..).filter_map(|ev| match ev {
            PipelineEvent::SkipClientBytes {
                client,
                server,
                until_seq,
            } => {
                skips.push((client, server, until_seq));
                None
            }
            ev => Some(ev),
        });
        self.outputs.on_events(events);
    }
}

impl live::LiveSink for Driver {
    fn started(&mut self, ignore: FlowIgnore) {
        let _ = self.ignore.set(ignore);
        self.outputs.ready();
    }

    fn segment(&mut self, seg: SegmentRef<'_>) {
        self.pipeline.on_segment_ref(seg, &mut self.events);
    }

    fn batch_done(&mut self) {
        let now = clock::wall_clock_ns();
        if now >= self.next_tick {
            self.pipeline.on_tick(now, &mut self.events);
            self.next_tick = now + TICK_NS;
        }
        self.handle_events();
    }

    fn output_started(&mut self, stats: crate::output_queue::OutputStats) {
        self.outputs.watch(stats);
    }

    fn take_skips(&mut self, out: &mut Vec<(std::net::SocketAddr, std::net::SocketAddr, u32)>) {
        out.append(&mut self.skips);
    }

    fn kernel_counters(&mut self, counters: &Counters) {
        self.kernel = Some(counters.clone());
        // Lift the exclusion of mirror connections closed a while ago (their ports may be
        // handed to other sockets).
        if let Some(ig) = self.ignore.get() {
            ig.purge();
        }
        self.outputs
            .update_metrics(self.kernel.as_ref(), Some(&self.pipeline.stats()));
    }
}
