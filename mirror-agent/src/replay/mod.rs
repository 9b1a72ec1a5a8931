//! Replay of captured requests to mirror services: the [`Replayer`] facade.
//!
//! Data flow per captured request: [`Replayer::submit`] (synchronous, never blocks) → for each
//! mirror: [`sampler`] → [`filter`] → [`rewrite`] → the mirror's bounded queue
//! ([`dispatcher`]) → a worker's keep-alive connection from the [`pool`] → the [`exchange`]
//! (write, read and frame the response, which is discarded) → status and latency into
//! [`stats`]. Mirrors share nothing but the request bytes (`Bytes`, reference counted), so a
//! slow or dead mirror only drops its own copies.
//!
//! Owns its interface outward ([`observer`]): the app passes a [`ReplayObserver`] (telemetry,
//! comparison, or both) and the [`ConnectionHooks`] (the kernel ignore map) to
//! [`Replayer::start`]; replay imports neither the exporters, the comparison nor the config.
//! [`ReplayConfig`] holds replay's own settings with their defaults; `config` fills it from
//! flags and the config file.
//!
//! Wiring a run mode (as `app` does):
//! 1. `Replayer::start(cfg, hooks, observer)` inside a tokio runtime;
//! 2. `submit(&captured)` for every request from the pipeline, from any thread;
//! 3. every few seconds `snapshot().progress_line(..)`; at exit `shutdown(grace).await` and
//!    print `table()`.

pub mod dispatcher;
pub mod exchange;
pub mod filter;
pub mod h2;
pub mod job;
pub mod observer;
pub mod pool;
pub mod rewrite;
pub mod sampler;
pub mod spec;
pub mod stats;
#[cfg(test)]
pub(crate) mod testutil;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::http::request::HttpLimits;
use crate::pipeline::CapturedRequest;
use crate::sync::lock;
use dispatcher::{Dispatcher, Phase, Transport};
use filter::Filter;
use job::{Job, Tell};
pub use observer::{ConnectionHooks, CopyHead, MirrorCopy, NoObserver, NotSent, ReplayObserver};
use pool::{Pool, PoolConfig};
use rewrite::{RewriteOptions, Rewriter, Skip};
use sampler::{Sampler, Sampling};
use spec::{MirrorProtocol, MirrorSpec};
use stats::{DropReason, MirrorStats, ReplaySnapshot, ReplayStats, Ticket};

/// Per-mirror queue length.
pub const DEFAULT_QUEUE_SIZE: usize = 4096;
/// Per-mirror connections (one worker each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// Per-mirror bound on queued request bytes.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 64 << 20;
/// Per-request timeout to a mirror.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);

/// The bound on opening a mirror connection (TCP connect and TLS handshake): half the
/// per-request timeout, so that a connection that cannot open fails as a connect, with backoff,
/// before the copy waiting for it times out.
pub fn connect_timeout(request_timeout: Duration) -> Duration {
    request_timeout / 2
}

/// Replay's own settings, with their defaults ([`Self::new`]).
#[derive(Debug, Clone)]
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
    /// Sampling seed; random per run unless set (tests).
    pub seed: Option<u64>,
    /// Limits of the mirrors' response framing.
    pub limits: HttpLimits,
    /// Each mirror samples on its own, or all on one value per request (`--sampling`).
    pub sampling: Sampling,
    /// TLS clients of the `https://` mirrors, by mirror name, built from their files when the
    /// configuration was checked (before privileges are dropped); one missing here is built
    /// when replay starts.
    pub tls_clients: std::collections::HashMap<String, tls::MirrorTls>,
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
            queue_size: DEFAULT_QUEUE_SIZE,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ordered: true,
            timeout: DEFAULT_TIMEOUT,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            seed: None,
            limits: HttpLimits::default(),
            tls_clients: std::collections::HashMap::new(),
            sampling: Sampling::Independent,
        }
    }
}

struct Mirror<O: ReplayObserver> {
    sampler: Sampler,
    rewriter: Rewriter,
    protocol: MirrorProtocol,
    /// Copies over HTTP/1.1 (`None` with `protocol=h2`).
    http1: Option<Dispatcher<O>>,
    /// Copies over HTTP/2 (`None` with `protocol=h1`).
    http2: Option<Dispatcher<O>>,
}

impl<O: ReplayObserver> Mirror<O> {
    /// The dispatcher a copy goes through: by the mirror's protocol, and for `auto` by how the
    /// request was captured.
    fn dispatcher(&self, captured_h2: bool) -> &Dispatcher<O> {
        self.dispatcher_at(self.route(captured_h2))
    }

    /// Which of the mirror's dispatchers a copy goes through: 0 over HTTP/1.1, 1 over HTTP/2.
    fn route(&self, captured_h2: bool) -> usize {
        let h2 = self.protocol.sends_h2(captured_h2);
        match (h2, &self.http1, &self.http2) {
            (true, _, Some(_)) | (false, None, Some(_)) => 1,
            _ => 0,
        }
    }

    fn dispatcher_at(&self, route: usize) -> &Dispatcher<O> {
        let chosen = if route == 1 { &self.http2 } else { &self.http1 };
        chosen.as_ref().expect("a mirror has a dispatcher")
    }

    fn dispatchers(&self) -> impl Iterator<Item = &Dispatcher<O>> {
        self.http1.iter().chain(self.http2.iter())
    }
}

/// Replays captured requests to every configured mirror; `O` hears about every copy.
pub struct Replayer<O: ReplayObserver = NoObserver> {
    mirrors: Vec<Mirror<O>>,
    filter: Filter,
    stats: Arc<ReplayStats>,
    phase: watch::Sender<Phase>,
    closed: AtomicBool,
    ordered: bool,
    sampling: Sampling,
    /// The run's sampling seed (consistent sampling hashes each request with it).
    seed: u64,
    /// Numbers the copies when they are not ordered by client connection: each is its own
    /// line in the mirrors' queues.
    unordered_seq: AtomicU64,
    /// The copies of one [`Self::submit_all`] call, per mirror and route (`2 * mirror + route`),
    /// before each dispatcher takes its share under one lock.
    staged: Mutex<Vec<Vec<Job<O::Flight>>>>,
}

impl<O: ReplayObserver> Replayer<O> {
    /// Starts one dispatcher per mirror. Must be called inside a tokio runtime.
    pub fn start(cfg: ReplayConfig, hooks: ConnectionHooks, observer: O) -> Self {
        let observer = Arc::new(observer);
        let sample = observer.response_sample_limit();
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
            let pool_config = PoolConfig {
                host: spec.host.clone(),
                port: spec.port,
                max_connections: cfg.max_connections,
                backoff_min: cfg.backoff_min,
                backoff_max: cfg.backoff_max,
                connect_timeout: connect_timeout(cfg.timeout),
                hooks: hooks.clone(),
                limits: cfg.limits.clone(),
                sample,
                tls: spec
                    .tls
                    .as_ref()
                    .map(|t| match cfg.tls_clients.get(&spec.name) {
                        Some(client) => Ok(client.clone()),
                        None => tls::MirrorTls::new(&spec.host, t),
                    }),
            };
            let tell = || Tell {
                mirror: i,
                observer: observer.clone(),
            };
            let start = |transport| {
                Dispatcher::start(
                    transport,
                    cfg.queue_size,
                    cfg.max_queue_bytes,
                    cfg.timeout,
                    phase_rx.clone(),
                    tell(),
                )
            };
            let http1 = (spec.protocol != MirrorProtocol::Http2).then(|| {
                start(Transport::Http1(Pool::new(
                    pool_config.clone(),
                    stats.clone(),
                )))
            });
            let http2 = (spec.protocol != MirrorProtocol::Http1).then(|| {
                let mut h2_config = pool_config.clone();
                h2_config.tls = h2_config.tls.map(|t| t.map(|t| t.for_h2()));
                let tls = h2_config.tls.is_some();
                start(Transport::Http2(h2::H2Pool::new(
                    Pool::new(h2_config, stats.clone()),
                    spec.authority(),
                    tls,
                    sample,
                )))
            });
            mirrors.push(Mirror {
                sampler: Sampler::new(probability, sampler::mirror_seed(seed, i)),
                rewriter: Rewriter::new(cfg.rewrite.clone(), spec.authority()),
                protocol: spec.protocol,
                http1,
                http2,
            });
        }
        let n_mirrors = mirrors.len();
        let stats = Arc::new(ReplayStats::new(
            mirrors
                .iter()
                .map(|m| m.dispatcher(false).stats.clone())
                .collect(),
        ));
        Self {
            mirrors,
            filter: cfg.filter,
            stats,
            phase,
            closed: AtomicBool::new(false),
            ordered: cfg.ordered,
            sampling: cfg.sampling,
            seed,
            unordered_seq: AtomicU64::new(0),
            staged: Mutex::new((0..2 * n_mirrors).map(|_| Vec::new()).collect()),
        }
    }

    /// Offers one captured request to every mirror. Never blocks: each mirror samples it,
    /// filters, rewrites (or shares `raw` as is) and queues it, or counts why not and tells
    /// the observer.
    pub fn submit(&self, captured: &CapturedRequest) {
        self.submit_all(std::slice::from_ref(captured));
    }

    /// [`Self::submit`] of each request, in order; each mirror queue takes its copies of all of
    /// them under one lock (see [`Dispatcher::offer_all`]). Counted in once for them all: an
    /// atomic add per request waited for the pipeline's earlier stores to cold lines.
    pub fn submit_all(&self, captured: &[CapturedRequest]) {
        self.stats.on_submitted(captured.len());
        let mut staged = lock(&self.staged);
        for c in captured {
            self.stage(c, &mut staged);
        }
        for (i, jobs) in staged.iter_mut().enumerate() {
            if !jobs.is_empty() {
                self.mirrors[i / 2].dispatcher_at(i % 2).offer_all(jobs);
            }
        }
    }

    /// Decides one request's copies: each mirror samples it, filters, rewrites (or shares
    /// `raw` as is) and stages it in `staged`, or counts why not and tells the observer.
    fn stage(&self, captured: &CapturedRequest, staged: &mut [Vec<Job<O::Flight>>]) {
        let req = &captured.request;
        let head = CopyHead::of(captured);
        let closed = self.closed.load(Ordering::Relaxed);
        // Evaluated once, on first need.
        let mut verdict: Option<bool> = None;
        let key = captured.key();
        let captured_h2 = req.h2_stream.is_some();
        // The streams of one HTTP/2 connection are concurrent on the primary: each is a line
        // of its own, so none waits for another's answer.
        let line = if self.ordered && !captured_h2 {
            captured.flow_id
        } else {
            self.unordered_seq.fetch_add(1, Ordering::Relaxed)
        };
        let value = match self.sampling {
            Sampling::Independent => None,
            Sampling::Consistent => Some(sampler::request_value(
                self.seed,
                captured.flow_id,
                captured.seq_in_flow,
            )),
        };
        for (i, m) in self.mirrors.iter().enumerate() {
            let route = m.route(captured_h2);
            let dispatcher = m.dispatcher_at(route);
            let taken = match value {
                None => m.sampler.sample(),
                Some(v) => m.sampler.sample_at(v),
            };
            if !taken {
                dispatcher.not_sampled(key);
                continue;
            }
            let ticket = Ticket::new(dispatcher.stats.clone());
            if closed {
                dispatcher.not_sent(key, ticket, DropReason::Shutdown);
                continue;
            }
            // CONNECT is never mirrored: the mirror would open a tunnel to the client's target.
            let pass = *verdict
                .get_or_insert_with(|| req.method() != "CONNECT" && self.filter.check(req).is_ok());
            if !pass {
                dispatcher.not_sent(key, ticket, DropReason::Filtered);
                continue;
            }
            let (bytes, trace) = match m.rewriter.apply(req) {
                Ok(b) => b,
                Err(Skip::BodyTooLarge) => {
                    dispatcher.not_sent(key, ticket, DropReason::BodyTooLarge);
                    continue;
                }
            };
            let mut head = head;
            head.over_h2 = m.protocol.sends_h2(captured_h2);
            staged[2 * i + route].push(Job {
                copy: MirrorCopy { bytes, head, trace },
                ticket,
                line,
                flight: None,
            });
        }
    }

    /// The fullest mirror queue, 0 to 1 (recorded replay paces itself on it).
    pub fn max_queue_fill(&self) -> f64 {
        self.mirrors
            .iter()
            .flat_map(Mirror::dispatchers)
            .map(Dispatcher::queue_fill)
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
            for d in self.mirrors.iter().flat_map(Mirror::dispatchers) {
                d.join().await;
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

impl<O: ReplayObserver> Drop for Replayer<O> {
    fn drop(&mut self) {
        let _ = self.phase.send(Phase::Abort);
    }
}
