//! The one place where sources meet outputs: every pipeline event, from live capture or a pcap
//! file, goes to the recording, the replay to the mirrors, the primary's side of the
//! comparison and the telemetry, wired here the same way for every run mode.
//!
//! Owns that wiring only: which outputs run is settled by `config`, what each does is its
//! module's. Replay hears about nothing but its own interface: the app composes its observer
//! from telemetry's and the comparison's ([`Observer`]).

use std::time::Duration;

use super::AppError;
use crate::capture::ebpf::Counters;
use crate::compare::difflog::DiffLog;
use crate::compare::{CompareHub, CompareSnapshot, PrimaryObserver};
use crate::config::Settings;
use crate::output_queue::{OutputQueue, OutputReport, OutputStats};
use crate::pipeline::CapturedRequest;
use crate::pipeline::{PipelineEvent, PipelineStats};
use crate::record::{RecordError, RecordWriter};
use crate::replay::stats::ReplaySnapshot;
use crate::replay::{ConnectionHooks, Replayer};
use crate::telemetry::export_stats::ExportSnapshot;
use crate::telemetry::{ReplayTelemetry, Telemetry};

/// Replay's observer in every run mode: telemetry's spans and histograms, then the comparison.
pub type Observer = (Option<ReplayTelemetry>, Option<CompareHub>);

/// How long a request waits for its other side (primary or mirror) in the comparison.
const COMPARE_TTL: Duration = Duration::from_secs(30);
/// How long the end of a run waits for the comparison thread to catch up.
const COMPARE_FLUSH: Duration = Duration::from_secs(5);
/// Bound on primary requests waiting for their response, and on comparison entries.
const MAX_PRIMARY_WAITING: usize = 65536;
/// How long queued copies may still be sent at the end.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How often the mirror progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the end of a run waits for an output thread to write what is queued.
pub const OUTPUT_FLUSH: Duration = Duration::from_secs(5);

/// The outputs of one run.
pub struct Outputs {
    /// `--record`, on its own thread ([`crate::output_queue`]).
    record: Option<OutputQueue<CapturedRequest>>,
    /// Every output thread's counters, for the metrics (the recording's, `--write-pcap`'s).
    watched: Vec<OutputStats>,
    replayer: Option<Replayer<Observer>>,
    progress: Option<tokio::task::JoinHandle<()>>,
    /// The primary's side of the comparison (`--compare`).
    primary: Option<PrimaryObserver>,
    compare: Option<CompareHub>,
    telemetry: Telemetry,
    /// `--record -`: stdout carries the recording.
    record_to_stdout: bool,
    /// The requests of the events [`Self::on_events`] is handling (kept for its allocation).
    requests: Vec<CapturedRequest>,
}

/// What the outputs counted, for the exit report.
pub struct OutputsReport {
    pub replay: Option<ReplaySnapshot>,
    pub compare: Option<CompareSnapshot>,
    pub otlp: Option<ExportSnapshot>,
    /// How the recording ended (`--record`).
    pub record: Option<OutputReport>,
    pub record_to_stdout: bool,
}

impl Outputs {
    /// Opens the recording and the diff log, starts the telemetry, the comparison and the
    /// replayer (inside a tokio runtime). `hooks` tell live capture of the mirror connections.
    pub async fn start(settings: &Settings, hooks: ConnectionHooks) -> Result<Self, AppError> {
        let record = match settings.record.as_deref() {
            None => None,
            Some(target) => {
                let writer =
                    RecordWriter::create(target, settings.overwrite).map_err(AppError::Output)?;
                let queue = OutputQueue::start("record", writer, settings.output_queue).map_err(
                    |source| {
                        AppError::Output(RecordError::Io {
                            path: target.to_owned(),
                            source,
                        })
                    },
                )?;
                Some(queue)
            }
        };
        let watched = record.iter().map(OutputQueue::stats).collect();
        let telemetry = Telemetry::start(settings.telemetry.clone()).await?;
        let mirrors = &settings.replay.mirrors;
        let compare = match &settings.compare {
            None => None,
            Some(c) => {
                let names = mirrors.iter().map(|m| m.name.clone()).collect();
                let hub = CompareHub::new(
                    names,
                    COMPARE_TTL,
                    MAX_PRIMARY_WAITING,
                    Some(telemetry.compare_subscriber()),
                );
                let log = match &c.diff_log {
                    Some((path, rate)) => Some(
                        DiffLog::create(
                            path,
                            *rate,
                            c.rules.redacted_headers.clone(),
                            settings.overwrite,
                        )
                        .map_err(|e| AppError::DiffLog(e.to_string()))?,
                    ),
                    None => None,
                };
                // A baseline's verdicts teach noise; a candidate's verdict waits for the
                // baseline's answer to its request at most as long as a pairing does.
                let baseline = mirrors
                    .iter()
                    .position(|m| m.role == crate::replay::spec::MirrorRole::Baseline)
                    .map(|i| (i, COMPARE_TTL));
                // Headers and bodies too (both sides keep them only in this mode).
                Some(hub.with_content_and_baseline(c.rules.clone(), log, baseline))
            }
        };
        let replayer = (!mirrors.is_empty()).then(|| {
            let observer = (Some(telemetry.replay_observer(mirrors)), compare.clone());
            Replayer::start(settings.replay.clone(), hooks, observer)
        });
        let progress = replayer.as_ref().map(|r| r.spawn_progress(PROGRESS_EVERY));
        let primary = compare
            .clone()
            .map(|hub| PrimaryObserver::new(hub, MAX_PRIMARY_WAITING));
        Ok(Self {
            record,
            watched,
            replayer,
            progress,
            primary,
            compare,
            telemetry,
            record_to_stdout: settings.record.as_deref() == Some("-"),
            requests: Vec::new(),
        })
    }

    /// One event from the pipeline: never blocks (replay only enqueues).
    pub fn on_event(&mut self, ev: PipelineEvent) {
        self.on_events(std::iter::once(ev));
    }

    /// A batch of events from the pipeline, in order: never blocks. The requests among them go
    /// to the mirrors together (one lock per mirror queue for the batch, see
    /// [`Replayer::submit_all`]), then to the recording.
    pub fn on_events(&mut self, events: impl IntoIterator<Item = PipelineEvent>) {
        for mut ev in events {
            if let Some(p) = self.primary.as_mut() {
                p.on_event_mut(&mut ev);
            }
            if let PipelineEvent::Request(r) = ev {
                self.requests.push(r);
            }
        }
        if let Some(rep) = &self.replayer {
            rep.submit_all(&self.requests);
        }
        match &self.record {
            Some(q) => {
                for r in self.requests.drain(..) {
                    // What the request holds in memory while it waits: its bytes and a little
                    // more.
                    let cost = r.request.raw.len() + 256;
                    q.submit(r, cost);
                }
            }
            None => self.requests.clear(),
        }
    }

    /// Counts an output thread started elsewhere (`--write-pcap`) in the metrics.
    pub fn watch(&mut self, output: OutputStats) {
        self.watched.push(output);
    }

    /// The source is attached or open: `/readyz` answers 200.
    pub fn ready(&self) {
        self.telemetry.set_ready(true);
    }

    /// The fullest mirror or recording queue, 0 to 1 (file sources pace themselves on it:
    /// with no live primary to keep up with, a slow sink makes them wait rather than drop).
    pub fn max_queue_fill(&self) -> f64 {
        let mirrors = self.replayer.as_ref().map_or(0.0, Replayer::max_queue_fill);
        let record = self.record.as_ref().map_or(0.0, OutputQueue::fill);
        mirrors.max(record)
    }

    /// The replay counters so far (`None` without mirrors).
    pub fn replay_snapshot(&self) -> Option<ReplaySnapshot> {
        self.replayer.as_ref().map(Replayer::snapshot)
    }

    /// Hands the stages' counters to the telemetry (about once a second).
    pub fn update_metrics(&self, kernel: Option<&Counters>, pipeline: Option<&PipelineStats>) {
        let replay = self.replayer.as_ref().map(Replayer::snapshot);
        self.telemetry
            .update_from(kernel, pipeline, replay.as_ref());
        self.telemetry.update_outputs(&self.watched);
        if let Some(c) = self.compare_snapshot() {
            self.telemetry.update_compare(Some(&c));
        }
    }

    /// Primary-vs-mirror comparison counters so far (`--compare`).
    fn compare_snapshot(&self) -> Option<CompareSnapshot> {
        let (hub, primary) = (self.compare.as_ref()?, self.primary.as_ref()?);
        hub.expire();
        let mut c = hub.snapshot();
        primary.fill(&mut c);
        Some(c)
    }

    /// Sends what is queued (up to [`DRAIN_GRACE`]), flushes the recording and the
    /// comparison, exports the final counters and stops the telemetry.
    pub async fn finish(
        mut self,
        kernel: Option<&Counters>,
        pipeline: Option<&PipelineStats>,
    ) -> OutputsReport {
        if let Some(p) = self.progress.take() {
            p.abort();
        }
        let replay = match &self.replayer {
            Some(r) => Some(r.shutdown(DRAIN_GRACE).await),
            None => None,
        };
        // A thread blocked on a sink that stopped reading is left behind; a tokio worker must
        // not wait on it.
        let record = self.record.take();
        let record = match record {
            Some(q) => tokio::task::spawn_blocking(move || q.finish(OUTPUT_FLUSH))
                .await
                .ok(),
            None => None,
        };
        self.telemetry
            .update_from(kernel, pipeline, replay.as_ref());
        self.telemetry.update_outputs(&self.watched);
        if let Some(hub) = &self.compare {
            // Verdicts still queued for the comparison thread, and the diff log, land first.
            hub.flush(COMPARE_FLUSH);
        }
        let compare = self.compare_snapshot();
        self.telemetry.update_compare(compare.as_ref());
        let otlp = self.telemetry.shutdown().await;
        OutputsReport {
            replay,
            compare,
            otlp,
            record,
            record_to_stdout: self.record_to_stdout,
        }
    }
}

impl OutputsReport {
    /// Requests the recording wrote.
    pub fn records_written(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.counters.written)
    }

    /// The recording's write error, if it had one (the run is then incomplete).
    pub fn record_error(&self) -> Option<&str> {
        self.record.as_ref().and_then(|r| r.error.as_deref())
    }

    /// The recording's block, the mirror table, the comparison table and the OTLP line, on
    /// stderr.
    pub fn print(&self) {
        if let Some(r) = &self.record {
            eprint!("{}", r.summary());
        }
        if let Some(r) = &self.replay {
            eprint!("{}", r.table());
        }
        if let Some(c) = &self.compare {
            eprint!("{}", c.table());
        }
        if let Some(e) = &self.otlp {
            eprintln!("{}", e.line());
        }
    }
}
