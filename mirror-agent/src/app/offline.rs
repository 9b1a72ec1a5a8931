//! pcap mode: read a capture file through the pipeline, record requests, print a summary.
//!
//! Owns the driving loop for files (segments in capture order, ticks from capture time, the
//! end-of-file flush) and the end summary. Live capture has its own driver; both feed the same
//! [`Pipeline`].

use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::capture::pcap::{DecodeStats, FragStats, PcapError, PcapSource};
use crate::cli::RunArgs;
use crate::pipeline::{
    CapturedRequest, ConfigError, Pipeline, PipelineConfig, PipelineEvent, PipelineStats,
};
use crate::record::{RecordError, RecordWriter};

/// How often (in capture time) gap timeouts and idle expiry run.
const TICK_NS: u64 = 100_000_000;

/// Why pcap mode could not run (a truncated file is not one: see [`OfflineReport::source_error`]).
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("--pcap is not set")]
    NoPcap,
}

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

/// Runs one capture file with `cfg`; `on_request` sees every request in capture order.
pub fn process_file(
    path: &Path,
    cfg: PipelineConfig,
    mut on_event: impl FnMut(PipelineEvent),
) -> Result<OfflineReport, PcapError> {
    let mut source = PcapSource::open(path)?;
    let mut pipeline = Pipeline::new(cfg);
    let source_error = drive(&mut source, &mut pipeline, &mut on_event).err();
    Ok(OfflineReport {
        frames: source.frames(),
        decode: source.decoder.stats.clone(),
        frag: source.decoder.defrag.stats.clone(),
        pipeline: pipeline.stats(),
        records_written: 0,
        source_error,
    })
}

/// pcap mode from the command line: records with `--record`, hands requests to `on_request`
/// (the replay stage plugs in here).
pub fn run(
    args: &RunArgs,
    mut on_request: impl FnMut(&CapturedRequest),
) -> Result<OfflineReport, OfflineError> {
    let path = args.pcap.as_deref().ok_or(OfflineError::NoPcap)?;
    let cfg = PipelineConfig::from_run_args(args)?;
    let mut writer = args
        .record
        .as_deref()
        .map(RecordWriter::create)
        .transpose()?;
    let mut write_error = None;
    let mut report = process_file(path, cfg, |ev| {
        if let PipelineEvent::Request(r) = ev {
            if let Some(w) = writer.as_mut().filter(|_| write_error.is_none())
                && let Err(e) = w.write(&r)
            {
                write_error = Some(e);
            }
            on_request(&r);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Some(w) = writer.as_mut() {
        w.flush()?;
        report.records_written = w.written();
    }
    Ok(report)
}

/// The `--pcap` entry point of the binary: runs, prints the summary on stderr, returns the
/// exit status (0 done, 1 the file could not be read to its end or output failed, 2 bad flags).
pub fn main(args: &RunArgs) -> i32 {
    match run(args, |_| {}) {
        Ok(report) => {
            eprint!("{report}");
            match &report.source_error {
                Some(e) => {
                    eprintln!("mirror-agent: error: {e}");
                    1
                }
                None => 0,
            }
        }
        Err(e @ OfflineError::Config(_)) => {
            eprintln!("mirror-agent: {e}");
            2
        }
        Err(e) => {
            eprintln!("mirror-agent: error: {e}");
            1
        }
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
