//! The agent's main mode: live capture → pipeline → recording and replay to the mirrors.
//!
//! Owns the wiring only: settings from flags and the config file, the kernel ignore map hooked
//! into the replayer's connections (no replay loops), capture timestamps moved to wall-clock
//! time, the pipeline driven from capture batches and idle ticks, and the end report (capture
//! line on stdout, pipeline summary and mirror table on stderr). Capture itself is
//! [`super::live`], the stages are the library's.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::app::from::DRAIN_GRACE;
use crate::capture::ebpf::FlowIgnore;
use crate::cli::RunArgs;
use crate::config::{ConfigError, Settings};
use crate::pipeline::{Pipeline, PipelineConfig, PipelineEvent, PipelineStats};
use crate::record::RecordWriter;
use crate::replay::Replayer;
use crate::replay::stats::ReplaySnapshot;

use super::live;

/// How often (capture time) gap timeouts and idle expiry run.
const TICK_NS: u64 = 100_000_000;
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
    runtime.block_on(run(settings, opts, pipeline_cfg, args.record.clone()))
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
    mut settings: Settings,
    opts: live::LiveOptions,
    pipeline_cfg: PipelineConfig,
    record: Option<String>,
) -> i32 {
    let mirrors = !settings.replay.mirrors.is_empty();
    if mirrors && let Err(e) = settings.check_not_primary().await {
        eprintln!("mirror-agent: {e}");
        return ConfigError::EXIT_CODE;
    }
    let mut writer = match record.as_deref().map(RecordWriter::create).transpose() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return ConfigError::EXIT_CODE;
        }
    };
    // The replayer connects before capture is attached only if a request arrives first, which
    // cannot happen; the slot is filled by `on_start` before the first batch.
    let ignore: Arc<OnceLock<FlowIgnore>> = Arc::default();
    let slot = ignore.clone();
    settings.replay.on_connect = Some(Arc::new(move |local, remote| {
        if let Some(ig) = slot.get()
            && let Err(e) = ig.ignore(local, remote)
        {
            // The LRU map never refuses an insert; an error here is a kernel-side failure and
            // the flow may be captured back (the pipeline would then see the mirror's port).
            tracing::warn!(%local, %remote, error = %e, "cannot register a mirror connection");
        }
    }));
    let replayer = mirrors.then(|| Replayer::start(settings.replay.clone()));
    let progress = replayer.as_ref().map(|r| r.spawn_progress(PROGRESS_EVERY));

    let mut pipeline = Pipeline::new(pipeline_cfg);
    let mut events = Vec::new();
    let mut record_error = None;
    let mut handle = |events: &mut Vec<PipelineEvent>| {
        for ev in events.drain(..) {
            let PipelineEvent::Request(r) = ev else {
                continue;
            };
            if let Some(w) = writer.as_mut().filter(|_| record_error.is_none())
                && let Err(e) = w.write(&r)
            {
                record_error = Some(e);
            }
            if let Some(rep) = &replayer {
                rep.submit(&r);
            }
        }
    };
    let wall_offset = wall_minus_monotonic_ns();
    let mut next_tick = 0u64;
    let result = live::run(
        opts,
        |ig| {
            let _ = ignore.set(ig);
        },
        |batch| {
            for mut seg in batch {
                seg.ts_ns = seg.ts_ns.wrapping_add(wall_offset);
                pipeline.on_segment(seg, &mut events);
            }
            let now = monotonic_ns().wrapping_add(wall_offset);
            if now >= next_tick {
                pipeline.on_tick(now, &mut events);
                next_tick = now + TICK_NS;
            }
            handle(&mut events);
        },
    )
    .await;
    pipeline.finish(&mut events);
    handle(&mut events);
    if let Some(p) = progress {
        p.abort();
    }
    let replay = match &replayer {
        Some(r) => Some(r.shutdown(DRAIN_GRACE).await),
        None => None,
    };
    let flushed = writer.as_mut().map(|w| w.flush()).transpose();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mirror-agent: {e}");
            return e.exit_code();
        }
    };
    report(&pipeline.stats(), replay.as_ref());
    // The capture line goes to stdout (tests and scripts parse it) unless stdout carries the
    // recording.
    if record.as_deref() == Some("-") {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if let Some(e) = record_error.or(flushed.err()) {
        eprintln!("mirror-agent: error: recording: {e}");
        return 1;
    }
    0
}

fn report(pipeline: &PipelineStats, replay: Option<&ReplaySnapshot>) {
    eprint!("{pipeline}");
    if let Some(r) = replay {
        eprint!("{}", r.table());
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel stamps records with `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Added to a monotonic stamp it gives Unix time, as recordings and pcap files carry.
fn wall_minus_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).wrapping_sub(monotonic_ns())
}
