//! Replay of captured requests to mirror services: the [`Replayer`] facade.
//!
//! Data flow per captured request: [`Replayer::submit`] (synchronous, never blocks) → for each
//! mirror: [`sampler`] → [`filter`] → [`rewrite`] → the mirror's bounded queue
//! ([`dispatcher`]) → its keep-alive [`pool`] → response read and discarded, status and latency
//! into [`stats`]. Mirrors share nothing but the request bytes (`Bytes`, reference counted), so a
//! slow or dead mirror only drops its own copies. Mirror specs and options are parsed in [`spec`]
//! and `crate::config`.
//!
//! Wiring a run mode (as `app::from` does for recordings and pcap files):
//! 1. `config::Settings::load(&args)?` (exit 2 on error), then, in live mode,
//!    `settings.check_not_primary().await?` (refuses a mirror that is the primary itself);
//! 2. live mode sets `settings.replay.on_connect` to put the local end of each mirror connection
//!    into the kernel's ignore map before its SYN leaves, so replayed requests are never captured
//!    again (NAT cannot change that end), and `on_close` to remove it shortly after the
//!    connection is closed, before the kernel can hand its port to another socket;
//! 3. `Replayer::start(settings.replay)` inside a tokio runtime (or `app::from::Session`);
//! 4. `submit(&captured)` for every request from the pipeline, from any thread;
//! 5. every few seconds `snapshot().progress_line(..)`; at exit `shutdown(grace).await` and
//!    print `table()`.

pub mod dispatcher;
pub mod filter;
pub mod pipeline;
pub mod pool;
pub mod rewrite;
pub mod sampler;
pub mod spec;
pub mod stats;
#[doc(hidden)]
pub mod testutil;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::http::Version;
use crate::http::request::HttpLimits;
use crate::http::response::ExpectedResponse;
use crate::pipeline::CapturedRequest;
use dispatcher::{Dispatcher, Job, Phase};
use filter::Filter;
use pool::{OnConnect, Outgoing, Pool, PoolConfig};
use rewrite::{RewriteOptions, Rewriter, Skip};
use sampler::Sampler;
use spec::MirrorSpec;
use stats::{DropReason, MirrorStats, Outcome, ReplaySnapshot, ReplayStats, Ticket};

/// Everything the replayer needs; built from [`crate::config::Settings`] or directly in tests.
#[derive(Clone)]
pub struct ReplayConfig {
    pub mirrors: Vec<MirrorSpec>,
    /// Share of flows the kernel captures (the largest mirror percent unless set).
    pub capture_percent: f64,
    pub rewrite: RewriteOptions,
    pub filter: Filter,
    pub queue_size: usize,
    /// Per-mirror bound on queued request bytes (a full queue by bytes is a `QueueFull` drop).
    pub max_queue_bytes: u64,
    pub max_connections: usize,
    /// A client connection's copies reach each mirror in order, one batch in flight at a time
    /// (`--ordering connection`, the default); `false`: each copy on its own.
    pub ordered: bool,
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// See [`OnConnect`]: live mode tells the kernel to ignore the agent's own flows.
    pub on_connect: Option<OnConnect>,
    /// Called when a connection registered with `on_connect` is closed (live mode lifts the
    /// kernel exclusion shortly after).
    pub on_close: Option<OnConnect>,
    /// Sampling seed; random per run unless set (tests).
    pub seed: Option<u64>,
    pub limits: HttpLimits,
    /// Per-copy duration histogram and mirror span (`crate::telemetry`); `None`: off.
    pub telemetry: Option<crate::telemetry::MirrorRequestRecorder>,
    /// Primary/mirror comparison (`--compare`); needs `telemetry`. Mirror indexes are the
    /// order of `mirrors`.
    pub compare: Option<crate::telemetry::compare::CompareHub>,
}

impl ReplayConfig {
    /// Defaults for everything but the mirrors (capture percent: the largest mirror percent).
    pub fn new(mirrors: Vec<MirrorSpec>) -> Self {
        let capture_percent = mirrors.iter().map(|m| m.percent).fold(0.0, f64::max);
        Self {
            mirrors,
            capture_percent,
            rewrite: RewriteOptions::default(),
            filter: Filter::default(),
            queue_size: crate::config::DEFAULT_QUEUE_SIZE,
            max_queue_bytes: crate::config::DEFAULT_MAX_QUEUE_BYTES,
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            ordered: true,
            timeout: Duration::from_millis(crate::config::DEFAULT_TIMEOUT_MS),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            on_connect: None,
            on_close: None,
            seed: None,
            limits: HttpLimits::default(),
            telemetry: None,
            compare: None,
        }
    }
}

impl std::fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConfig")
            .field("mirrors", &self.mirrors)
            .field("capture_percent", &self.capture_percent)
            .field("rewrite", &self.rewrite)
            .field("filter", &self.filter)
            .field("queue_size", &self.queue_size)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

struct Mirror {
    sampler: Sampler,
    rewriter: Rewriter,
    dispatcher: Dispatcher,
}

/// Replays captured requests to every configured mirror.
pub struct Replayer {
    mirrors: Vec<Mirror>,
    filter: Filter,
    stats: Arc<ReplayStats>,
    phase: watch::Sender<Phase>,
    closed: AtomicBool,
    ordered: bool,
    /// Numbers the copies when they are not ordered by client connection: each is its own
    /// line in the mirrors' queues.
    unordered_seq: AtomicU64,
    /// Told of copies that will never be sent (`--compare`, with telemetry on).
    compare: Option<crate::telemetry::compare::CompareHub>,
}

impl Replayer {
    /// Starts one dispatcher per mirror. Must be called inside a tokio runtime.
    pub fn start(cfg: ReplayConfig) -> Self {
        let seed = cfg.seed.unwrap_or_else(rand::random);
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let mut mirrors = Vec::with_capacity(cfg.mirrors.len());
        for (i, spec) in cfg.mirrors.iter().enumerate() {
            let probability = Sampler::probability(spec.percent, cfg.capture_percent);
            let stats = Arc::new(MirrorStats::new(
                spec.name.clone(),
                spec.percent,
                probability,
            ));
            let pool = Pool::new(
                PoolConfig {
                    host: spec.host.clone(),
                    port: spec.port,
                    max_connections: cfg.max_connections,
                    backoff_min: cfg.backoff_min,
                    backoff_max: cfg.backoff_max,
                    on_connect: cfg.on_connect.clone(),
                    on_close: cfg.on_close.clone(),
                    limits: cfg.limits.clone(),
                    capture: cfg
                        .compare
                        .as_ref()
                        .filter(|_| cfg.telemetry.is_some())
                        .and_then(|h| h.capture_limit()),
                },
                stats,
            );
            mirrors.push(Mirror {
                sampler: Sampler::new(probability, sampler::mirror_seed(seed, i)),
                rewriter: Rewriter::new(cfg.rewrite.clone(), spec.authority()),
                dispatcher: Dispatcher::start(
                    pool,
                    cfg.queue_size,
                    cfg.max_queue_bytes,
                    cfg.timeout,
                    phase_rx.clone(),
                    cfg.telemetry.clone().map(|recorder| dispatcher::Telemetry {
                        recorder,
                        mirror: spec.name.clone(),
                        host: spec.host.clone(),
                        port: spec.port,
                        compare: cfg.compare.clone().map(|hub| (hub, i)),
                    }),
                ),
            });
        }
        let stats = Arc::new(ReplayStats::new(
            mirrors.iter().map(|m| m.dispatcher.stats.clone()).collect(),
        ));
        Self {
            mirrors,
            compare: cfg.compare.clone().filter(|_| cfg.telemetry.is_some()),
            filter: cfg.filter,
            stats,
            phase,
            closed: AtomicBool::new(false),
            ordered: cfg.ordered,
            unordered_seq: AtomicU64::new(0),
        }
    }

    /// Offers one captured request to every mirror. Never blocks: each mirror samples it,
    /// filters, rewrites (or shares `raw` as is) and queues it, or counts why not.
    pub fn submit(&self, captured: &CapturedRequest) {
        let req = &captured.request;
        self.stats.on_submit();
        let closed = self.closed.load(Ordering::Relaxed);
        // Evaluated once, on first need.
        let mut verdict: Option<bool> = None;
        let key = (captured.flow_id, captured.seq_in_flow);
        let line = if self.ordered {
            captured.flow_id
        } else {
            self.unordered_seq.fetch_add(1, Ordering::Relaxed)
        };
        // The comparison learns of every copy that will never be sent, so it does not wait
        // for it (with `--compare` only).
        let not_mirrored = || {
            if let Some(hub) = &self.compare {
                hub.not_mirrored(key);
            }
        };
        for m in &self.mirrors {
            if !m.sampler.sample() {
                not_mirrored();
                continue;
            }
            let ticket = Ticket::new(m.dispatcher.stats.clone());
            if closed {
                ticket.resolve(Outcome::Dropped(DropReason::Shutdown));
                not_mirrored();
                continue;
            }
            // CONNECT is never mirrored: the mirror would open a tunnel to the client's target.
            let pass = *verdict
                .get_or_insert_with(|| req.method != "CONNECT" && self.filter.check(req).is_ok());
            if !pass {
                ticket.resolve(Outcome::Dropped(DropReason::Filtered));
                not_mirrored();
                continue;
            }
            let bytes = match m.rewriter.apply(req) {
                Ok(b) => b,
                Err(Skip::BodyTooLarge) => {
                    ticket.resolve(Outcome::Dropped(DropReason::BodyTooLarge));
                    not_mirrored();
                    continue;
                }
            };
            let out = Outgoing {
                bytes,
                expected: ExpectedResponse {
                    head: req.method == "HEAD",
                    connect: false,
                },
                keep_alive: keeps_alive(req),
            };
            let queued = m.dispatcher.offer(Job {
                out,
                ticket,
                line,
                key,
                flight: None,
            });
            if !queued {
                not_mirrored();
            }
        }
    }

    /// The fullest mirror queue, 0 to 1 (recorded replay paces itself on it).
    pub fn max_queue_fill(&self) -> f64 {
        self.mirrors
            .iter()
            .map(|m| m.dispatcher.queue_fill())
            .fold(0.0, f64::max)
    }

    /// Shared live counters (for the progress line and metrics).
    pub fn stats(&self) -> Arc<ReplayStats> {
        self.stats.clone()
    }

    /// Logs the progress line every `every` (info level, target `mirror_agent::progress`)
    /// until the returned task is aborted or the replayer is dropped.
    pub fn spawn_progress(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let stats = Arc::downgrade(&self.stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut prev: Option<(tokio::time::Instant, ReplaySnapshot)> = None;
            loop {
                tick.tick().await;
                let Some(stats) = stats.upgrade() else { break };
                let snap = stats.snapshot();
                let now = tokio::time::Instant::now();
                let elapsed = prev.as_ref().map_or(every, |(t, _)| now - *t);
                let line = snap.progress_line(prev.as_ref().map(|(_, s)| s), elapsed);
                tracing::info!(target: "mirror_agent::progress", "{line}");
                prev = Some((now, snap));
            }
        })
    }

    pub fn snapshot(&self) -> ReplaySnapshot {
        self.stats.snapshot()
    }

    /// Stops intake, sends what is queued for up to `grace`, then abandons the rest (counted as
    /// shutdown drops). Returns the final counters, for which the identity holds exactly.
    pub async fn shutdown(&self, grace: Duration) -> ReplaySnapshot {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.phase.send(Phase::Drain);
        let all = async {
            for m in &self.mirrors {
                m.dispatcher.join().await;
            }
        };
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            let _ = self.phase.send(Phase::Abort);
            all.await;
        }
        self.stats.snapshot()
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        let _ = self.phase.send(Phase::Abort);
    }
}

/// Whether the connection stays usable after this request (RFC 9112 9.3): HTTP/1.1 unless
/// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
fn keeps_alive(req: &crate::http::Request) -> bool {
    let has = |token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match req.version {
        Version::Http11 => !has("close"),
        Version::Http10 => has("keep-alive"),
        Version::Http09 => false,
    }
}
