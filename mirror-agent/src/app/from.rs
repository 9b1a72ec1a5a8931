//! `--from FILE.jsonl`: replays a recording made with `--record` to the mirrors.
//!
//! Owns the recorded-replay driver: read records in order, pace them (`--speed`), hand them to a
//! [`Session`] (a tokio runtime plus a [`Replayer`], reusable by the other run modes), print a
//! progress line every few seconds and the per-mirror table at the end. Pacing:
//! - `--speed 1` keeps the recorded gaps between requests (from `ts_ns`), `--speed 10` divides
//!   them by ten;
//! - `--speed 0` is as fast as the mirrors take it: there is no live primary to protect, so the
//!   reader waits (up to one request timeout) while a mirror's queue is more than 3/4 full, instead
//!   of dropping copies; a mirror that stays stuck still only drops its own (counted).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::AppError;
use crate::config::Settings;
use crate::pipeline::CapturedRequest;
use crate::record::{RecordError, RecordReader};
use crate::replay::stats::ReplaySnapshot;
use crate::replay::{ConnectionHooks, ReplayConfig, Replayer};
use crate::telemetry::export_stats::ExportSnapshot;
use crate::telemetry::{ReplayTelemetry, Telemetry, TelemetryConfig, TelemetryError};

pub use super::outputs::DRAIN_GRACE;

/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why `--from` could not run.
#[derive(Debug, thiserror::Error)]
pub enum FromError {
    #[error("--from {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--from needs at least one --mirror (or mirrors in --config)")]
    NoMirrors,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

impl FromError {
    /// 2 for what the operator must fix (no mirrors, bad telemetry flags), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            FromError::NoMirrors => 2,
            FromError::Telemetry(e) => e.exit_code(),
            FromError::Open { .. } | FromError::Runtime(_) => 1,
        }
    }
}

/// A running replayer with its own runtime and the run's telemetry (`--metrics-addr`, OTLP:
/// the same per-mirror metrics and spans as live mode); `submit` may be called from any thread.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    replayer: Replayer<ReplayTelemetry>,
    telemetry: Telemetry,
    /// Copies the replay counters into the telemetry once a second.
    metrics_task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Session {
    pub fn start(cfg: ReplayConfig, telemetry: TelemetryConfig) -> Result<Self, FromError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mirror-replay")
            .enable_all()
            .build()
            .map_err(FromError::Runtime)?;
        let timeout = cfg.timeout;
        let telemetry = runtime.block_on(Telemetry::start(telemetry))?;
        let observer = telemetry.replay_observer(&cfg.mirrors);
        let (replayer, metrics_task) = {
            let _guard = runtime.enter();
            let replayer = Replayer::start(cfg, ConnectionHooks::default(), observer);
            let task = spawn_metrics_updates(&telemetry, replayer.stats());
            (replayer, task)
        };
        // The input (file) is open and the mirrors are set up: ready.
        telemetry.set_ready(true);
        Ok(Self {
            runtime,
            replayer,
            telemetry,
            metrics_task,
            timeout,
        })
    }

    pub fn replayer(&self) -> &Replayer<ReplayTelemetry> {
        &self.replayer
    }

    pub fn submit(&self, req: CapturedRequest) {
        self.replayer.submit(req);
    }

    /// Waits (up to one request timeout) until every mirror's queue is at most 3/4 full.
    pub fn wait_for_room(&self) {
        let deadline = Instant::now() + self.timeout;
        while self.replayer.max_queue_fill() > 0.75 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends what is queued (up to `grace`), exports the final counters (OTLP's last export)
    /// and returns them, with the OTLP exports' outcomes when OTLP is on.
    pub fn finish(self, grace: Duration) -> (ReplaySnapshot, Option<ExportSnapshot>) {
        let snap = self.runtime.block_on(self.replayer.shutdown(grace));
        self.metrics_task.abort();
        self.telemetry.update_from(None, None, Some(&snap));
        let exports = self.runtime.block_on(self.telemetry.shutdown());
        self.runtime.shutdown_timeout(Duration::from_millis(100));
        (snap, exports)
    }
}

/// Hands the replay counters to the telemetry every second until aborted.
fn spawn_metrics_updates(
    telemetry: &Telemetry,
    stats: std::sync::Arc<crate::replay::stats::ReplayStats>,
) -> tokio::task::JoinHandle<()> {
    let handle = telemetry.updater();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            handle.update_from(None, None, Some(&stats.snapshot()));
        }
    })
}

/// Counters of a `--from` run.
#[derive(Debug)]
pub struct FromReport {
    pub records: u64,
    /// Lines that are not records (counted, the first error kept); the rest is replayed.
    pub bad_lines: u64,
    pub first_bad: Option<String>,
    pub replay: ReplaySnapshot,
    /// The OTLP exports' outcomes (with OTLP on).
    pub otlp: Option<ExportSnapshot>,
}

/// Replays `path` with `settings`; `progress` receives a line every [`PROGRESS_EVERY`].
pub fn run(
    settings: &Settings,
    telemetry: TelemetryConfig,
    path: &Path,
    mut progress: impl FnMut(&str),
) -> Result<FromReport, FromError> {
    if settings.replay.mirrors.is_empty() {
        return Err(FromError::NoMirrors);
    }
    let file = File::open(path).map_err(|source| FromError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let session = Session::start(settings.replay.clone(), telemetry)?;
    let speed = settings.speed;
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    let (mut records, mut bad_lines, mut first_bad) = (0u64, 0u64, None);
    let mut last_progress = (Instant::now(), session.replayer().snapshot());
    for item in RecordReader::new(BufReader::new(file)) {
        let req = match item {
            Ok(r) => r,
            Err(e @ RecordError::Io { .. }) => {
                // The file cannot be read further: stop here, replay what was read.
                first_bad.get_or_insert_with(|| e.to_string());
                bad_lines += 1;
                break;
            }
            Err(e) => {
                first_bad.get_or_insert_with(|| e.to_string());
                bad_lines += 1;
                continue;
            }
        };
        records += 1;
        if speed > 0.0 {
            let base = *first_ts.get_or_insert(req.request.ts_ns);
            let offset = req.request.ts_ns.saturating_sub(base) as f64 / speed;
            let due = started + Duration::from_nanos(offset as u64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        } else {
            session.wait_for_room();
        }
        session.submit(req);
        if last_progress.0.elapsed() >= PROGRESS_EVERY {
            let snap = session.replayer().snapshot();
            progress(&snap.progress_line(Some(&last_progress.1), last_progress.0.elapsed()));
            last_progress = (Instant::now(), snap);
        }
    }
    let (replay, otlp) = session.finish(DRAIN_GRACE);
    Ok(FromReport {
        records,
        bad_lines,
        first_bad,
        replay,
        otlp,
    })
}

/// The `--from` mode: replays the recording, prints the mirror table; a file with bad lines
/// is reported after the rest was replayed.
pub fn main(settings: &Settings) -> Result<(), AppError> {
    let Some(path) = settings.from.clone() else {
        return Ok(());
    };
    let report = run(settings, settings.telemetry.clone(), &path, |line| {
        eprintln!("mirror-agent: {line}")
    })?;
    eprint!("{}", report.replay.table());
    if let Some(o) = report.otlp {
        eprintln!("{}", o.line());
    }
    eprintln!(
        "records replayed: {}; bad lines: {}",
        report.records, report.bad_lines
    );
    match report.first_bad {
        Some(e) => Err(AppError::Incomplete(format!("{}: {e}", path.display()))),
        None => Ok(()),
    }
}
