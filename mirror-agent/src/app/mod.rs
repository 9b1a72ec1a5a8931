//! Run modes: the thin drivers that connect a source, the pipeline and the outputs.
//!
//! One skeleton for every mode: `config` settles the [`Settings`](crate::config::Settings),
//! a source (live capture in [`agent`] and [`live`], a pcap file in [`offline`], a recording
//! in [`from`]) feeds the pipeline, and the pipeline's events go to one fan-out of outputs
//! ([`outputs`]: record, replay, comparison, telemetry). Every failure is one [`AppError`],
//! printed once by [`run`] with its exit status.

pub mod agent;
pub mod from;
pub mod live;
pub mod offline;
pub mod outputs;

use crate::config::{ConfigError, Settings};
use crate::record::RecordError;
use crate::telemetry::TelemetryError;

/// Why a run failed; [`AppError::exit_code`] is the process status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad flags, config file or environment the operator must fix: nothing was attached.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Live capture could not start or stopped.
    #[error(transparent)]
    Live(#[from] live::LiveError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The recording (`--record`) cannot be created.
    #[error("{0}")]
    Output(RecordError),
    /// The diff log (`--diff-log`) cannot be created.
    #[error("{0}")]
    DiffLog(String),
    /// A recording replay (`--from`) could not start or read its file.
    #[error(transparent)]
    From(#[from] from::FromError),
    /// The pcap file cannot be opened or is not a capture: bad input, named.
    #[error("--pcap {path}: {source}")]
    Pcap {
        path: String,
        source: crate::capture::pcap::PcapError,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Giving up privileges failed: the agent does not run with more than it needs.
    #[error(transparent)]
    Confine(#[from] crate::privileges::ConfineError),
    /// The run went through but lost output or input it had to report (a recording write, a
    /// file that ended early); the message says what.
    #[error("error: {0}")]
    Incomplete(String),
}

impl AppError {
    /// 2 for what the operator must fix before anything runs, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_)
            | AppError::Output(_)
            | AppError::DiffLog(_)
            | AppError::Pcap { .. } => ConfigError::EXIT_CODE,
            AppError::Live(e) => e.exit_code(),
            AppError::Telemetry(e) => e.exit_code(),
            AppError::From(e) => e.exit_code(),
            AppError::Runtime(_) | AppError::Confine(_) | AppError::Incomplete(_) => 1,
        }
    }
}

/// The main mode: live capture, a pcap file, or a recording, as the settings say.
pub fn run(settings: Settings) -> Result<(), AppError> {
    if settings.from.is_some() {
        from::main(&settings)
    } else if settings.pcap.is_some() {
        offline::main(&settings)
    } else {
        agent::main(settings)
    }
}

/// Whether the metrics endpoint binds a port below 1024, which needs `CAP_NET_BIND_SERVICE`
/// (it binds after the agent gave up its other privileges).
fn binds_low_port(settings: &Settings) -> bool {
    settings
        .telemetry
        .metrics_addr
        .is_some_and(|a| a.port() != 0 && a.port() < 1024)
}

/// The runtime of a mode that reads its input on the main thread, outside the runtime (a pcap
/// file, a recording): the mirror connections need workers of their own.
fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    runtime_with(crate::config::THREADS_MANY_CPUS)
}

/// A runtime for `threads` threads in all (`--threads`), the caller's among them: with one, the
/// caller's thread runs every task while it waits in `block_on` (a current-thread runtime), so
/// what the caller runs there must yield between batches; with more, `threads - 1` workers.
fn runtime_with(threads: usize) -> Result<tokio::runtime::Runtime, AppError> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads - 1);
        b
    };
    builder
        .thread_name("mirror-agent")
        .enable_all()
        .build()
        .map_err(AppError::Runtime)
}
