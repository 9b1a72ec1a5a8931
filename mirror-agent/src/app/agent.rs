//! The agent's main mode: live capture → pipeline → recording and replay to the mirrors.
//!
//! Owns the wiring only: settings from flags and the config file, the kernel ignore map hooked
//! into the replayer's connections (no replay loops), the pipeline driven from capture batches
//! and idle ticks on the capture's clock ([`crate::capture::clock`]), and the end report (capture
//! line on stdout, pipeline summary and mirror table on stderr), and the telemetry (metrics
//! endpoint, OTLP) fed from the stages' snapshots about once a second. Capture itself is
//! [`super::live`], the stages are the library's.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::app::from::DRAIN_GRACE;
use crate::capture::ebpf::{Counters, FlowIgnore};
use crate::capture::{Segment, clock};
use crate::cli::RunArgs;
use crate::compare::difflog::{self, DiffLog};
use crate::compare::rules::CompareRules;
use crate::compare::{CompareHub, CompareSnapshot, PrimaryObserver};
use crate::config::{ConfigError, Settings};
use crate::pipeline::{Pipeline, PipelineConfig, PipelineEvent, PipelineStats};
use crate::record::RecordWriter;
use crate::replay::stats::ReplaySnapshot;
use crate::replay::{ConnectionHooks, Replayer};
use crate::telemetry::{ReplayTelemetry, Telemetry, TelemetryConfig};

use super::live;

/// How often (capture time) gap timeouts and idle expiry run.
const TICK_NS: u64 = 100_000_000;
/// Test aid, not a product option: `MIRROR_DISABLE_IGNORE_MAP=1` leaves the agent's own mirror
/// connections out of the kernel ignore map, so a test can show the replay loop the map prevents
/// (`tests/tests/mirror_loop.rs`). Warned about at start; never set it in production.
pub const DISABLE_IGNORE_ENV: &str = "MIRROR_DISABLE_IGNORE_MAP";
/// How often the mirror progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Live mode from the command line; returns the exit status (2: bad flags or config).
pub fn main(args: &RunArgs) -> i32 {
    let settings = match Settings::load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return ConfigError::EXIT_CODE;
        }
    };
    let effective = effective_args(args, &settings);
    let opts = match live::options_from_args(&effective) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return e.exit_code();
        }
    };
    let mut pipeline_cfg = match PipelineConfig::from_run_args(&effective) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return ConfigError::EXIT_CODE;
        }
    };
    // Responses are only on the ring when the egress classifier runs.
    pipeline_cfg.responses = args.compare;
    let rules = match CompareRules::from_args(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return ConfigError::EXIT_CODE;
        }
    };
    pipeline_cfg.capture_responses = rules.as_ref().map(CompareRules::capture_limit);
    let diff_log = match (&args.diff_log, &rules) {
        (Some(path), Some(r)) => match DiffLog::create(
            path,
            args.diff_log_rate.unwrap_or(difflog::DEFAULT_RATE),
            r.redacted_headers.clone(),
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("mirror-agent: {e}");
                return ConfigError::EXIT_CODE;
            }
        },
        _ => None,
    };
    let telemetry_cfg = match TelemetryConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return e.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirror-agent: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run(
        settings,
        opts,
        pipeline_cfg,
        args.record.clone(),
        telemetry_cfg,
        rules.map(|r| (r, diff_log)),
    ))
}

/// The flags with what the config file settled (interface, ports, capture percent) filled in,
/// so capture validation sees one set of values.
fn effective_args(args: &RunArgs, settings: &Settings) -> RunArgs {
    let mut eff = args.clone();
    eff.iface = settings.iface.clone().or(eff.iface);
    if eff.ports.is_empty() {
        eff.ports = settings.ports.iter().map(|&p| u32::from(p)).collect();
    }
    if eff.capture_percent.is_none() && !settings.replay.mirrors.is_empty() {
        eff.capture_percent = Some(settings.capture_percent);
    }
    eff
}

async fn run(
    settings: Settings,
    opts: live::LiveOptions,
    pipeline_cfg: PipelineConfig,
    record: Option<String>,
    telemetry_cfg: TelemetryConfig,
    content: Option<(CompareRules, Option<DiffLog>)>,
) -> i32 {
    let mirrors = !settings.replay.mirrors.is_empty();
    if mirrors && let Err(e) = settings.check_not_primary().await {
        eprintln!("mirror-agent: {e}");
        return ConfigError::EXIT_CODE;
    }
    let writer = match record.as_deref().map(RecordWriter::create).transpose() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return ConfigError::EXIT_CODE;
        }
    };
    let telemetry = match Telemetry::start(telemetry_cfg).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return e.exit_code();
        }
    };
    // Requests only arrive after capture is attached, and capture is attached only after the
    // slot is filled (`LiveSink::started`), so no mirror connection misses the ignore map.
    let ignore: Arc<OnceLock<FlowIgnore>> = Arc::default();
    let mut hooks = ConnectionHooks::default();
    if std::env::var_os(DISABLE_IGNORE_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(
            "{DISABLE_IGNORE_ENV}=1: the agent's own mirror connections are NOT excluded from \
             capture (test aid: a mirror on the captured interface and port will loop)"
        );
    } else {
        let slot = ignore.clone();
        hooks.opened = Some(Arc::new(move |local, remote| {
            if let Some(ig) = slot.get()
                && let Err(e) = ig.ignore(local, remote)
            {
                // The LRU map never refuses an insert; an error here is a kernel-side failure
                // and the flow may be captured back (the pipeline would then see the mirror's
                // port).
                tracing::warn!(%local, %remote, error = %e, "cannot register a mirror connection");
            }
        }));
        let slot = ignore.clone();
        hooks.closed = Some(Arc::new(move |local, _remote| {
            if let Some(ig) = slot.get() {
                ig.closed(local);
            }
        }));
    }
    // With --compare the primary's responses are captured too: each mirrored copy's status and
    // latency is compared with the primary's answer to the same request.
    let compare = pipeline_cfg.responses.then(|| {
        let names = settings.replay.mirrors.iter().map(|m| m.name.clone());
        let hub = CompareHub::new(
            names.collect(),
            COMPARE_TTL,
            MAX_PRIMARY_WAITING,
            Some(telemetry.compare_subscriber()),
        );
        // Headers and bodies too (both sides keep them only in this mode), and --diff-log.
        match content {
            Some((rules, log)) => hub.with_content(rules, log),
            None => hub,
        }
    });
    let observer = (
        Some(telemetry.replay_observer(&settings.replay.mirrors)),
        compare.clone(),
    );
    let replayer = mirrors.then(|| Replayer::start(settings.replay.clone(), hooks, observer));
    let progress = replayer.as_ref().map(|r| r.spawn_progress(PROGRESS_EVERY));
    let primary = compare
        .clone()
        .map(|hub| PrimaryObserver::new(hub, MAX_PRIMARY_WAITING));
    let mut driver = Driver {
        pipeline: Pipeline::new(pipeline_cfg),
        events: Vec::new(),
        writer,
        record_error: None,
        replayer,
        telemetry,
        primary,
        compare,
        ignore,
        next_tick: 0,
        kernel: None,
    };
    let result = live::run(opts, &mut driver).await;
    driver.pipeline.finish(&mut driver.events);
    driver.handle_events();
    if let Some(p) = progress {
        p.abort();
    }
    let replay = match &driver.replayer {
        Some(r) => Some(r.shutdown(DRAIN_GRACE).await),
        None => None,
    };
    let flushed = driver.writer.as_mut().map(|w| w.flush()).transpose();
    let pipeline_stats = driver.pipeline.stats();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            driver.telemetry.shutdown().await;
            return e.exit_code();
        }
    };
    driver.telemetry.update_from(
        Some(&summary.kernel),
        Some(&pipeline_stats),
        replay.as_ref(),
    );
    if let Some(hub) = &driver.compare {
        // Verdicts still queued for the comparison thread, and the diff log, land first.
        hub.flush(COMPARE_FLUSH);
    }
    let compared = driver.compare_snapshot();
    driver.telemetry.update_compare(compared.as_ref());
    let exports = driver.telemetry.shutdown().await;
    report(&pipeline_stats, replay.as_ref());
    if let Some(c) = &compared {
        eprint!("{}", c.table());
    }
    if let Some(e) = exports {
        eprintln!("{}", e.line());
    }
    // The capture line goes to stdout (tests and scripts parse it) unless stdout carries the
    // recording.
    if record.as_deref() == Some("-") {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if let Some(e) = driver.record_error.or(flushed.err()) {
        eprintln!("mirror-agent: error: recording: {e}");
        return 1;
    }
    0
}

/// How long a request waits for its other side (primary or mirror) in the comparison.
const COMPARE_TTL: Duration = Duration::from_secs(30);
/// How long the end of a run waits for the comparison thread to catch up.
const COMPARE_FLUSH: Duration = Duration::from_secs(5);
/// Bound on primary requests waiting for their response in the telemetry observer.
const MAX_PRIMARY_WAITING: usize = 65536;

/// The consumer of live capture: pipeline, then recording, replay and telemetry.
struct Driver {
    pipeline: Pipeline,
    events: Vec<PipelineEvent>,
    writer: Option<RecordWriter>,
    record_error: Option<crate::record::RecordError>,
    replayer: Option<Replayer<(Option<ReplayTelemetry>, Option<CompareHub>)>>,
    telemetry: Telemetry,
    primary: Option<PrimaryObserver>,
    compare: Option<CompareHub>,
    ignore: Arc<OnceLock<FlowIgnore>>,
    next_tick: u64,
    kernel: Option<Counters>,
}

impl Driver {
    fn handle_events(&mut self) {
        for mut ev in self.events.drain(..) {
            if let Some(p) = self.primary.as_mut() {
                p.on_event_mut(&mut ev);
            }
            let PipelineEvent::Request(r) = ev else {
                continue;
            };
            if let Some(w) = self.writer.as_mut().filter(|_| self.record_error.is_none())
                && let Err(e) = w.write(&r)
            {
                self.record_error = Some(e);
            }
            if let Some(rep) = &self.replayer {
                rep.submit(r);
            }
        }
    }
}

impl Driver {
    /// Primary-vs-mirror comparison counters so far (`--compare`).
    fn compare_snapshot(&self) -> Option<CompareSnapshot> {
        let (hub, primary) = (self.compare.as_ref()?, self.primary.as_ref()?);
        hub.expire();
        let mut c = hub.snapshot();
        primary.fill(&mut c);
        Some(c)
    }
}

impl live::LiveSink for Driver {
    fn started(&mut self, ignore: FlowIgnore) {
        let _ = self.ignore.set(ignore);
        self.telemetry.set_ready(true);
    }

    fn segments(&mut self, batch: Vec<Segment>) {
        for seg in batch {
            self.pipeline.on_segment(seg, &mut self.events);
        }
        let now = clock::wall_clock_ns();
        if now >= self.next_tick {
            self.pipeline.on_tick(now, &mut self.events);
            self.next_tick = now + TICK_NS;
        }
        self.handle_events();
    }

    fn kernel_counters(&mut self, counters: &Counters) {
        self.kernel = Some(*counters);
        // Lift the exclusion of mirror connections closed a while ago (their ports may be
        // handed to other sockets).
        if let Some(ig) = self.ignore.get() {
            ig.purge();
        }
        let replay = self.replayer.as_ref().map(Replayer::snapshot);
        self.telemetry.update_from(
            self.kernel.as_ref(),
            Some(&self.pipeline.stats()),
            replay.as_ref(),
        );
        if let Some(c) = self.compare_snapshot() {
            self.telemetry.update_compare(Some(&c));
        }
    }
}

fn report(pipeline: &PipelineStats, replay: Option<&ReplaySnapshot>) {
    eprint!("{pipeline}");
    if let Some(r) = replay {
        eprint!("{}", r.table());
    }
}
