//! `--from FILE.jsonl`: replays a recording made with `--record` to the mirrors.
//!
//! Owns the recorded-replay source: read records in order, pace them (`--speed`), hand them to
//! the same [`Outputs`] as the other run modes (replay and telemetry; a recording has no
//! primary responses to compare), print a progress line every few seconds and the per-mirror
//! table at the end. Pacing:
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
use super::outputs::Outputs;
use crate::config::Settings;
use crate::pipeline::PipelineEvent;
use crate::record::{RecordError, RecordReader};
use crate::replay::ConnectionHooks;
use crate::replay::stats::ReplaySnapshot;
use crate::telemetry::export_stats::ExportSnapshot;

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
}

impl FromError {
    /// 2 for what the operator must fix (no mirrors), 1 for a file that cannot be opened.
    pub fn exit_code(&self) -> i32 {
        match self {
            FromError::NoMirrors => 2,
            FromError::Open { .. } => 1,
        }
    }
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

/// Replays `path` with `settings` (its mirrors, telemetry and pace); `progress` receives a
/// line every [`PROGRESS_EVERY`].
pub fn run(
    settings: &Settings,
    path: &Path,
    progress: impl FnMut(&str),
) -> Result<FromReport, AppError> {
    run_file(settings, open(settings, path)?, progress)
}

/// Opens the recording to replay (after checking there is a mirror to replay it to).
fn open(settings: &Settings, path: &Path) -> Result<File, AppError> {
    if settings.replay.mirrors.is_empty() {
        return Err(FromError::NoMirrors.into());
    }
    Ok(File::open(path).map_err(|source| FromError::Open {
        path: path.to_path_buf(),
        source,
    })?)
}

/// [`run`] on a recording already open.
fn run_file(
    settings: &Settings,
    file: File,
    mut progress: impl FnMut(&str),
) -> Result<FromReport, AppError> {
    let runtime = super::runtime()?;
    let mut outputs = runtime.block_on(Outputs::start(settings, ConnectionHooks::default()))?;
    // The input (file) is open and the mirrors are set up: ready.
    outputs.ready();
    let speed = settings.speed;
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    let (mut records, mut bad_lines, mut first_bad) = (0u64, 0u64, None);
    let mut last_progress = (Instant::now(), outputs.replay_snapshot());
    let mut metrics_due = Instant::now();
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
            super::offline::wait_for_room(&outputs, settings.replay.timeout);
        }
        outputs.on_event(PipelineEvent::Request(req));
        if metrics_due.elapsed() >= Duration::from_secs(1) {
            metrics_due = Instant::now();
            outputs.update_metrics(None, None);
        }
        if last_progress.0.elapsed() >= PROGRESS_EVERY
            && let Some(snap) = outputs.replay_snapshot()
        {
            let line = snap.progress_line(last_progress.1.as_ref(), last_progress.0.elapsed());
            progress(&line);
            last_progress = (Instant::now(), Some(snap));
        }
    }
    let out = runtime.block_on(outputs.finish(None, None));
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(FromReport {
        records,
        bad_lines,
        first_bad,
        replay: out.replay.unwrap_or_default(),
        otlp: out.otlp,
    })
}

/// The `--from` mode: replays the recording, prints the mirror table; a file with bad lines
/// is reported after the rest was replayed.
pub fn main(settings: &Settings) -> Result<(), AppError> {
    let Some(path) = settings.from.clone() else {
        return Ok(());
    };
    let file = open(settings, &path)?;
    // The input is open: nothing from here needs a privilege (see crate::privileges). Done
    // before the runtime starts its threads, which inherit what this thread keeps.
    crate::privileges::confine(crate::privileges::Needs {
        bind_low_port: super::binds_low_port(settings),
        ..Default::default()
    })?;
    let report = run_file(settings, file, |line| eprintln!("mirror-agent: {line}"))?;
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
