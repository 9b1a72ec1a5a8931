//! pcap mode: a capture file through the pipeline to the outputs (recording, mirrors,
//! comparison with the primary's responses the file holds), then a summary.
//!
//! Owns the driving loop for files (segments in capture order, ticks from capture time, the
//! end-of-file flush), the pace (as fast as the mirrors take it: there is no live primary to
//! protect, so the reader waits while a mirror's queue is more than 3/4 full, up to one request
//! timeout) and the end summary. Live capture has its own driver; both feed the same
//! [`Pipeline`] and the same [`Outputs`].

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use super::AppError;
use super::outputs::Outputs;
use crate::capture::pcap::{DecodeStats, FragStats, PcapError, PcapSource};
use crate::config::Settings;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineEvent, PipelineStats};
use crate::replay::ConnectionHooks;

/// How often (in capture time) gap timeouts and idle expiry run.
const TICK_NS: u64 = 100_000_000;

/// Everything counted in one run over a file.
#[derive(Debug, Default)]
pub struct OfflineReport {
    pub frames: u64,
    pub decode: DecodeStats,
    pub frag: FragStats,
    pub pipeline: PipelineStats,
    pub records_written: u64,
    /// The file could not be read to its end; everything before the error was processed.
    pub source_error: Option<PcapError>,
}

/// Drives `source` through `pipeline` to the end of the file, calling `sink` for every event,
/// then flushes the pipeline. A read error ends the input early and is returned after the
/// flush, so no request before it is lost.
pub fn drive<R: Read>(
    source: &mut PcapSource<R>,
    pipeline: &mut Pipeline,
    mut sink: impl FnMut(PipelineEvent),
) -> Result<(), PcapError> {
    let mut out = Vec::new();
    let mut next_tick = 0u64;
    let result = loop {
        match source.next_segment() {
            Ok(Some(seg)) => {
                let ts = seg.ts_ns;
                if ts >= next_tick {
                    if next_tick != 0 {
                        pipeline.on_tick(ts, &mut out);
                    }
                    next_tick = ts.saturating_add(TICK_NS);
                }
                pipeline.on_segment(seg, &mut out);
                out.drain(..).for_each(&mut sink);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    pipeline.finish(&mut out);
    out.drain(..).for_each(&mut sink);
    result
}

/// Runs one capture file with `cfg`; `on_event` sees every event in capture order.
pub fn process_file(
    path: &Path,
    cfg: PipelineConfig,
    on_event: impl FnMut(PipelineEvent),
) -> Result<OfflineReport, PcapError> {
    Ok(process_source(PcapSource::open(path)?, cfg, on_event))
}

/// [`process_file`] on a source already open.
pub fn process_source(
    mut source: PcapSource,
    cfg: PipelineConfig,
    mut on_event: impl FnMut(PipelineEvent),
) -> OfflineReport {
    let mut pipeline = Pipeline::new(cfg);
    let source_error = drive(&mut source, &mut pipeline, &mut on_event).err();
    OfflineReport {
        frames: source.frames(),
        decode: source.decoder.stats.clone(),
        frag: source.decoder.defrag.stats.clone(),
        pipeline: pipeline.stats(),
        records_written: 0,
        source_error,
    }
}

/// pcap mode: the file's events to the outputs; prints the summary, the mirror and comparison
/// tables. A file that ends early is reported after everything before the error was handled.
pub fn main(settings: &Settings) -> Result<(), AppError> {
    let Some(path) = settings.pcap.as_deref() else {
        return Ok(());
    };
    let pcap_error = |source| AppError::Pcap {
        path: path.display().to_string(),
        source,
    };
    // The input is open: nothing from here needs a privilege (see crate::privileges). Done
    // before the runtime starts its threads, which inherit what this thread keeps.
    let source = PcapSource::open(path).map_err(pcap_error)?;
    crate::privileges::confine(crate::privileges::Needs {
        bind_low_port: super::binds_low_port(settings),
        ..Default::default()
    })?;
    let runtime = super::runtime()?;
    let mut outputs = runtime.block_on(Outputs::start(settings, ConnectionHooks::default()))?;
    outputs.ready();
    let room_wait = settings.replay.timeout;
    let mut metrics_due = Instant::now();
    let mut report = process_source(source, settings.pipeline.clone(), |ev| {
        if matches!(ev, PipelineEvent::Request(_)) {
            wait_for_room(&outputs, room_wait);
        }
        outputs.on_event(ev);
        if metrics_due.elapsed() >= Duration::from_secs(1) {
            metrics_due = Instant::now();
            outputs.update_metrics(None, None);
        }
    });
    let out = runtime.block_on(outputs.finish(None, Some(&report.pipeline)));
    runtime.shutdown_timeout(Duration::from_millis(100));
    report.records_written = out.records_written();
    eprint!("{report}");
    out.print();
    if let Some(e) = out.record_error() {
        return Err(AppError::Incomplete(format!("recording: {e}")));
    }
    // A file that breaks off or turns corrupt is bad input like one that cannot be opened
    // (exit 2, the path named), reported after what it held was processed and summarised.
    match report.source_error {
        Some(source) => Err(pcap_error(source)),
        None => Ok(()),
    }
}

/// Waits (up to `limit`) until every mirror's queue is at most 3/4 full.
pub(super) fn wait_for_room(outputs: &Outputs, limit: Duration) {
    let deadline = Instant::now() + limit;
    while outputs.max_queue_fill() > 0.75 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl fmt::Display for OfflineReport {
    /// The end summary: input, decoding losses, then the pipeline's counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.decode;
        let g = &self.frag;
        writeln!(f, "mirror-agent: pcap summary")?;
        let lines: &[(&str, u64)] = &[
            ("packets", self.frames),
            ("tcp_segments", d.segments),
            ("records_written", self.records_written),
            ("skipped.non_ip_packets", d.non_ip),
            ("skipped.non_tcp_packets", d.non_tcp),
            ("lost.malformed_packets", d.malformed),
            ("lost.unsupported_link_packets", d.unsupported_link),
            ("lost.snaplen_truncated_segments", d.snaplen_truncated),
            ("ip_fragments", g.fragments),
            ("ip_datagrams_reassembled", g.reassembled),
            ("lost.ip_datagrams_timed_out", g.timed_out),
            ("lost.ip_datagrams_evicted", g.evicted),
            ("lost.ip_datagrams_invalid", g.invalid),
            ("lost.ip_datagrams_incomplete", g.incomplete_at_end),
            ("lost.ip_datagrams_bad_tcp", d.malformed_reassembled),
        ];
        for (name, v) in lines {
            writeln!(f, "  {name:<40} {v}")?;
        }
        write!(f, "{}", self.pipeline)
    }
}
