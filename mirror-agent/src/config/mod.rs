//! One validated [`Settings`] from the command line and the optional YAML config file.
//!
//! The only reader of the flags (`cli`) and of the YAML file: it merges them (a flag given on
//! the command line overrides the file; `--mirror` flags replace the file's mirrors as a
//! whole), validates each value once, and builds each stage's own config struct (the stages
//! own those structs and their defaults): [`ReplayConfig`], [`PipelineConfig`], the live
//! capture's [`LiveSettings`], [`TelemetryConfig`] and the comparison's [`CompareSettings`].
//! Every error is one line, one [`ConfigError`]; the app maps it to exit status 2. It does not
//! run anything.

pub mod compare;
pub mod file;
pub mod listeners;
pub mod live;
pub mod pipeline;
pub mod replay;
pub mod telemetry;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cli::RunArgs;
use crate::compare::rules::RuleError;
use crate::pipeline::PipelineConfig;
use crate::replay::ReplayConfig;
use crate::replay::filter::FilterError;
use crate::replay::rewrite::RewriteError;
use crate::replay::spec::{self, MirrorRole, MirrorSpec, SpecError};
use crate::telemetry::{TelemetryConfig, TelemetryError};
pub use compare::CompareSettings;
use file::{FileConfig, MirrorEntry, Mirroring};
pub use live::LiveSettings;

/// Suffix of `--host-mode suffix` when `--host-suffix` is not given (Envoy's).
pub const DEFAULT_HOST_SUFFIX: &str = "-shadow";
/// The kernel's port map holds this many ports.
pub const MAX_PORTS: usize = 64;

/// A configuration problem; printed as one line, exit status 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is larger than any config the agent reads.
    #[error("config {path}: larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    /// Syntax, unknown field, or a value refused while reading the file.
    #[error("config {path}: line {line} column {column}: {msg}")]
    Yaml {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    /// A problem found after reading: `field` is the path in the file; line when known.
    #[error("config {path}{}: {field}: {msg}", line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        field: String,
        msg: String,
    },
    #[error("--mirror: {0}")]
    Mirror(#[from] SpecError),
    /// An `https://` mirror's TLS files: unreadable, or nothing usable in them.
    #[error("mirror `{name}`: {msg}")]
    MirrorTls { name: String, msg: String },
    #[error("{0}")]
    Filter(#[from] FilterError),
    #[error("{0}")]
    Rewrite(#[from] RewriteError),
    /// A comparison flag.
    #[error(transparent)]
    Compare(#[from] RuleError),
    /// A telemetry flag or `OTEL_*` variable.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// `--compare` with `--from`: a recording has no primary responses.
    #[error("--compare needs the primary's responses: live capture or --pcap, not --from")]
    CompareWithoutPrimary,
    /// A flag value out of range.
    #[error("{flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
    /// Two mirrors with one name would share a table row.
    #[error("two mirrors are named `{0}`; give each a distinct name")]
    DuplicateName(String),
    /// A mirror that is the primary itself would receive every request twice (and, without the
    /// kernel ignore map, its own copies again, forever).
    #[error("mirror `{name}` ({addr}) is the primary itself: {why}")]
    MirrorIsPrimary {
        name: String,
        addr: SocketAddr,
        port: u16,
        /// What showed it (the listener that would accept, or the primary's own name).
        why: String,
    },
}

impl ConfigError {
    /// Exit status for a configuration error (usage error, as clap uses).
    pub const EXIT_CODE: i32 = 2;
}

/// Everything the run modes need, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub iface: Option<String>,
    /// Captured ports (flags, else the file's `ports`, else the primary's port).
    pub ports: Vec<u16>,
    pub capture_percent: f64,
    pub from: Option<PathBuf>,
    pub speed: f64,
    /// Mirrors, rewrite and filter options, limits; `on_connect` is set by the live mode.
    pub replay: ReplayConfig,
    /// The primary's name from the file (Traefik `name`/`service`), for display.
    pub primary: Option<String>,
    /// Where the primary's name points: host (the file provider's server URL, else the name,
    /// `name.namespace` with a namespace) and port. A mirror resolving to the same address and
    /// port is the primary itself.
    pub primary_endpoint: Option<(String, u16)>,
    /// `--pcap FILE`: segments from a capture file instead of an interface.
    pub pcap: Option<PathBuf>,
    /// The pipeline's bounds; responses are framed with `--compare` and from pcap files.
    pub pipeline: PipelineConfig,
    /// `--compare`: the rules and the diff log.
    pub compare: Option<CompareSettings>,
    pub telemetry: TelemetryConfig,
    /// `--record FILE` (`-`: stdout).
    pub record: Option<String>,
    /// `--overwrite`: output files may replace existing regular files.
    pub overwrite: bool,
    /// `--output-queue-bytes`: each output thread's queue (`--record`, `--write-pcap`).
    pub output_queue: crate::output_queue::QueueLimits,
    /// Live capture's own flags (validated; the interface is checked when attaching).
    pub live: LiveSettings,
    /// `--threads`, resolved: the live agent's threads (1: one thread for everything).
    pub threads: usize,
}

/// `--threads auto` on a machine where the agent may use more than one CPU: capture on its own
/// thread, the mirror connections and exporters on two workers.
pub const THREADS_MANY_CPUS: usize = 3;

/// The live agent's threads from `--threads`: a count in 1..=64, or `auto`, which is 1 when the
/// agent may run on only one CPU (std reads the CPU affinity and the cgroup's CPU quota): then
/// more threads would only take turns on that CPU, and each hand-off between them costs a
/// wakeup and a context switch (issue 17: 12-20% of the agent's CPU per request, BENCHMARKS.md).
fn threads(arg: &str) -> Result<usize, ConfigError> {
    if arg.trim().eq_ignore_ascii_case("auto") {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        return Ok(if cpus == 1 { 1 } else { THREADS_MANY_CPUS });
    }
    let n = arg.trim().parse::<usize>().map_err(|_| ConfigError::Flag {
        flag: "--threads",
        msg: format!("{arg:?} is neither auto nor a number"),
    })?;
    bounded("--threads", n, 1, 64)
}

/// The bounds of each output thread's queue from `--output-queue-bytes`.
fn output_queue(bytes: u64) -> Result<crate::output_queue::QueueLimits, ConfigError> {
    const MIN: u64 = 1 << 16;
    const MAX: u64 = 1 << 36;
    if !(MIN..=MAX).contains(&bytes) {
        return Err(ConfigError::Flag {
            flag: "--output-queue-bytes",
            msg: format!("{bytes} is not between {MIN} and {MAX}"),
        });
    }
    Ok(crate::output_queue::QueueLimits {
        // Items are requests or segments of at least tens of bytes each: the byte bound is the
        // one that matters; this only keeps the channel's slots proportionate.
        items: (bytes / 1024).clamp(1024, 1 << 20) as usize,
        bytes: bytes as usize,
    })
}

impl Settings {
    /// `--check-config`: what the mode needs beyond [`Settings::load`] without touching the
    /// system (live capture needs an interface and ports), then what would run, one line each.
    pub fn check(&self) -> Result<String, ConfigError> {
        let mut out = Vec::new();
        if let Some(from) = &self.from {
            out.push(format!(
                "mode: replay of {} at speed {}",
                from.display(),
                self.speed
            ));
        } else if let Some(pcap) = &self.pcap {
            out.push(format!("mode: pcap file {}", pcap.display()));
        } else {
            let c = self.live.capture()?;
            out.push(format!(
                "mode: live capture on {} (ring {} MiB, {:.2}% of flows)",
                c.target,
                c.ring_size >> 20,
                f64::from(c.capture_basis_points) / 100.0
            ));
        }
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        out.push(format!("ports: {}", ports.join(",")));
        for m in &self.replay.mirrors {
            out.push(format!(
                "mirror {}: {}://{} at {}%{}, protocol {}",
                m.name,
                if m.tls.is_some() { "https" } else { "http" },
                m.authority(),
                m.percent,
                if m.role == MirrorRole::Baseline {
                    " (baseline)"
                } else {
                    ""
                },
                match m.protocol {
                    spec::MirrorProtocol::Auto => "auto (HTTP/2 streams over HTTP/2)",
                    spec::MirrorProtocol::Http1 => "h1 (everything over HTTP/1.1)",
                    spec::MirrorProtocol::Http2 => "h2 (everything over HTTP/2)",
                }
            ));
        }
        if self.replay.mirrors.is_empty() {
            out.push("mirrors: none".into());
        } else {
            out.push(format!("sampling: {}", self.replay.sampling.as_str()));
        }
        if let Some(r) = &self.record {
            out.push(format!("record: {r}"));
        }
        if self.compare.is_some() {
            out.push("compare: on".into());
        }
        if let Some(a) = self.telemetry.metrics_addr {
            out.push(format!("metrics: http://{a}/metrics"));
        }
        Ok(out.join("\n"))
    }

    /// The largest request body a consumer needs, when there is such a bound (see
    /// [`crate::http::request::HttpLimits::omit_bodies_over`]): mirrors that send no body need
    /// none, mirrors that send bodies up to `maxBodySize` need that much; a recording or a
    /// comparison keeps every body.
    fn bodies_needed_up_to(
        rewrite: &crate::replay::rewrite::RewriteOptions,
        keeps_bodies: bool,
    ) -> Option<u64> {
        if keeps_bodies {
            None
        } else if !rewrite.mirror_body {
            Some(0)
        } else {
            rewrite.max_body_size
        }
    }

    /// Reads `--config` if given and merges it with the flags.
    pub fn load(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.replay.config {
            None => None,
            Some(path) => Some((path.as_path(), read_bounded(path)?)),
        };
        Self::from_parts(args, file.as_ref().map(|(p, t)| (*p, t.as_str())))
    }

    /// Merges flags with a file's text (`path` only names it in errors).
    pub fn from_parts(args: &RunArgs, file: Option<(&Path, &str)>) -> Result<Self, ConfigError> {
        let (path, text, fc) = match file {
            Some((path, text)) => (path.to_path_buf(), text, parse_file(path, text)?),
            None => (PathBuf::new(), "", FileConfig::default()),
        };
        let invalid = |field: &str, needle: Option<&str>, msg: String| ConfigError::Invalid {
            path: path.clone(),
            line: needle.and_then(|n| line_of(text, n)),
            field: field.into(),
            msg,
        };
        let (mirroring, where_) =
            find_mirroring(&fc).map_err(|m| invalid("http.services", None, m))?;

        let mirrors = mirrors(args, &fc, mirroring, &where_, &invalid)?;
        let ports = ports(args, &fc, mirroring)?;
        let capture_percent = capture_percent(args, &fc, &mirrors)?;
        if args.replay.from.is_some() && args.capture.pcap.is_some() {
            return Err(ConfigError::Flag {
                flag: "--from",
                msg: "replays a recording; it cannot be combined with --pcap".into(),
            });
        }
        if !(args.replay.speed.is_finite() && args.replay.speed >= 0.0) {
            return Err(ConfigError::Flag {
                flag: "--speed",
                msg: format!("{} is not a number >= 0", args.replay.speed),
            });
        }
        let replay = replay::build(args, &fc, mirroring, mirrors, capture_percent)?;
        let compare = compare::build(&args.compare, &replay.rewrite.strip_headers)?;
        if compare.is_some() && args.replay.from.is_some() {
            return Err(ConfigError::CompareWithoutPrimary);
        }
        let baselines = replay
            .mirrors
            .iter()
            .filter(|m| m.role == MirrorRole::Baseline);
        match baselines.count() {
            0 => {}
            1 if compare.is_some() => {}
            1 => {
                return Err(ConfigError::Flag {
                    flag: "role=baseline",
                    msg: "needs --compare (the baseline's answers teach the comparison its noise)"
                        .into(),
                });
            }
            _ => {
                return Err(ConfigError::Flag {
                    flag: "role=baseline",
                    msg: "one mirror at most may be the baseline".into(),
                });
            }
        }
        let mut pipeline = pipeline::build(
            &args.limits,
            &ports,
            compare.is_some() || args.capture.pcap.is_some(),
            compare.as_ref().map(|c| c.rules.capture_limit()),
        )?;
        pipeline.http.omit_bodies_over = Self::bodies_needed_up_to(
            &replay.rewrite,
            args.output.record.is_some() || compare.is_some(),
        );
        let iface = args.capture.iface.clone().or(fc.interface.clone());
        let cgroups = if args.capture.cgroups.is_empty() {
            fc.cgroups.clone().unwrap_or_default()
        } else {
            args.capture.cgroups.clone()
        };
        let mut live = live::build(
            &args.capture,
            iface.clone(),
            cgroups,
            &ports,
            capture_percent,
            compare.is_some(),
        )?;
        live.write_pcap = args.output.write_pcap.clone();
        // Bodies the pipeline omits need not be copied by the kernel either, unless the raw
        // packets are written out.
        // (Live capture only: a file or a recording has no kernel to tell.)
        live.skip_bodies = pipeline.http.omit_bodies_over.is_some()
            && live.write_pcap.is_none()
            && args.capture.pcap.is_none()
            && args.replay.from.is_none();
        pipeline.skip_omitted_bodies = live.skip_bodies;
        // The stamps are seen only as the primary's latency, in recordings and in packets
        // written out; live mirroring alone orders and expires by them, where a timer tick
        // of lag does not matter.
        live.precise_clock =
            compare.is_some() || args.output.record.is_some() || live.write_pcap.is_some();
        live.overwrite = args.output.overwrite;
        let output_queue = output_queue(args.output.output_queue_bytes)?;
        let threads = threads(&args.limits.threads)?;
        Ok(Settings {
            pcap: args.capture.pcap.clone(),
            pipeline,
            compare,
            telemetry: telemetry::build(&args.telemetry)?,
            record: args.output.record.clone(),
            overwrite: args.output.overwrite,
            output_queue,
            live,
            threads,
            iface,
            ports,
            capture_percent,
            from: args.replay.from.clone(),
            speed: args.replay.speed,
            replay,
            primary: mirroring.and_then(|m| m.name.clone().or(m.service.clone())),
            primary_endpoint: primary_endpoint(mirroring, &fc),
        })
    }

    /// Refuses a mirror that is the primary itself: mirroring the primary onto itself doubles
    /// every request it serves. Two ways to tell:
    ///
    /// - the mirror resolves to a local address on a captured port, and the listening socket
    ///   that would accept its connections is the primary's: the only listener on that port, or a
    ///   wildcard one (see [`listeners::classify`]). A listener bound to the mirror's own address
    ///   next to another listener on the port is a distinct service and is allowed; the kernel
    ///   ignore map then keeps its copies from being captured again;
    /// - the config names the primary and the mirror resolves to the primary's address and port.
    ///
    /// Names that do not resolve yet are let through with a warning (the mirror counts its
    /// connect errors).
    pub async fn check_not_primary(&self) -> Result<(), ConfigError> {
        let primary = match &self.primary_endpoint {
            Some((host, port)) => resolve(host, *port).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let mut listening: Option<Vec<SocketAddr>> = None;
        for m in &self.replay.mirrors {
            let Some(addrs) = resolve(&m.host, m.port).await else {
                tracing::warn!(mirror = %m.name, host = %m.host, "mirror does not resolve yet");
                continue;
            };
            let refuse = |addr: SocketAddr, why: String| ConfigError::MirrorIsPrimary {
                name: m.name.clone(),
                addr,
                port: m.port,
                why,
            };
            if let Some(&addr) = addrs.iter().find(|a| primary.contains(a)) {
                let name = self.primary.as_deref().unwrap_or("?");
                return Err(refuse(addr, format!("the primary `{name}` resolves to it")));
            }
            if !self.ports.contains(&m.port) {
                continue;
            }
            for addr in addrs.into_iter().filter(|a| is_local(a.ip())) {
                let listeners = listening.get_or_insert_with(listeners::read);
                let verdict = listeners::classify(listeners, addr);
                if let Some(why) = verdict.refusal(m.port) {
                    return Err(refuse(addr, why));
                }
                tracing::info!(mirror = %m.name, %addr, ?verdict,
                    "local mirror on a captured port is not the primary; \
                     its copies are kept out of the capture by the kernel ignore map");
            }
        }
        Ok(())
    }
}

/// Addresses of `host:port`, or `None` when it does not resolve within 2 s.
async fn resolve(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(a)) => Some(
            a.map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                .collect(),
        ),
        _ => None,
    }
}

/// An address of this host: binding a socket to it succeeds only if it is local.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Mirrors: the flags' replace the file's; names are unique (one table row each).
fn mirrors(
    args: &RunArgs,
    fc: &FileConfig,
    mirroring: Option<&Mirroring>,
    where_: &str,
    invalid: &dyn Fn(&str, Option<&str>, String) -> ConfigError,
) -> Result<Vec<MirrorSpec>, ConfigError> {
    let mut mirrors = Vec::new();
    if !args.replay.mirrors.is_empty() {
        for m in &args.replay.mirrors {
            mirrors.push(spec::parse_mirror(m)?);
        }
    } else if let Some(mr) = mirroring {
        for (i, entry) in mr.mirrors.iter().enumerate() {
            let field = format!("{where_}.mirrors[{i}]");
            let m =
                file_mirror(entry, fc).map_err(|msg| invalid(&field, Some(&entry.name), msg))?;
            mirrors.push(m);
        }
    }
    for (i, m) in mirrors.iter().enumerate() {
        if mirrors[..i].iter().any(|o| o.name == m.name) {
            return Err(ConfigError::DuplicateName(m.name.clone()));
        }
    }
    Ok(mirrors)
}

/// Captured ports: the flags, else the file's list, else the primary's port; at most the
/// kernel port map's size.
fn ports(
    args: &RunArgs,
    fc: &FileConfig,
    mirroring: Option<&Mirroring>,
) -> Result<Vec<u16>, ConfigError> {
    let ports: Vec<u16> = if !args.capture.ports.is_empty() {
        args.capture
            .ports
            .iter()
            .map(|&p| match p {
                1..=65535 => Ok(p as u16),
                _ => Err(ConfigError::Flag {
                    flag: "--port",
                    msg: format!("{p} is not in 1-65535"),
                }),
            })
            .collect::<Result<_, _>>()?
    } else if let Some(ps) = &fc.ports {
        ps.iter().map(|p| p.0).collect()
    } else {
        primary_port(mirroring, fc).into_iter().collect()
    };
    if ports.len() > MAX_PORTS {
        return Err(ConfigError::Flag {
            flag: "--port",
            msg: format!("{} ports given, at most {MAX_PORTS}", ports.len()),
        });
    }
    Ok(ports)
}

/// The kernel's share of flows: the flag, else the file's, else the largest mirror percent
/// (100 without mirrors); never below a mirror's own percent.
fn capture_percent(
    args: &RunArgs,
    fc: &FileConfig,
    mirrors: &[MirrorSpec],
) -> Result<f64, ConfigError> {
    let largest = mirrors.iter().map(|m| m.percent).fold(0.0, f64::max);
    let capture_percent = match (args.capture.capture_percent, &fc.capture_percent) {
        (Some(p), _) => spec::parse_percent(&p.to_string()).ok_or_else(|| ConfigError::Flag {
            flag: "--capture-percent",
            msg: format!("{p} is not in [0, 100]"),
        })?,
        (None, Some(p)) => p.0,
        (None, None) if largest > 0.0 => largest,
        (None, None) => 100.0,
    };
    if let Some(m) = mirrors.iter().find(|m| m.percent > capture_percent) {
        return Err(ConfigError::Flag {
            flag: "--capture-percent",
            msg: format!(
                "{capture_percent} is below mirror `{}`'s {}%: it could not get its share",
                m.name, m.percent
            ),
        });
    }
    Ok(capture_percent)
}

/// `value` of `flag` within `min..=max`, else one line naming the flag and the range.
pub(crate) fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Flag {
            flag,
            msg: format!("{value} is not in {min}..={max}"),
        });
    }
    Ok(value)
}

/// Largest config file read: a Traefik-shaped file with many mirrors is a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest flow-style nesting (`[`, `{`) accepted; the shapes read need fewer than ten levels.
pub const MAX_NESTING: usize = 64;

/// The file's text, refused when larger than [`MAX_FILE_BYTES`] (read through a bound, so a
/// growing file or a device cannot make it larger).
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_FILE_BYTES,
        });
    }
    Ok(text)
}

/// Refuses nesting deeper than [`MAX_NESTING`] before the YAML parser sees it: the parser's
/// time grows faster than linearly with depth (100k levels took 32 s). Counted cheaply and on
/// the safe side: flow brackets (`[`, `{`; every one counts, also inside quoted strings, since
/// a config never holds 64 of them; not in comments), compact block entries on one line
/// (`- - - x`, `? ? x`), and indentation (a level needs at least one more space).
fn check_nesting(path: &Path, text: &str) -> Result<(), ConfigError> {
    let deep = |n: usize| ConfigError::Yaml {
        path: path.to_path_buf(),
        line: n + 1,
        column: 0,
        msg: format!("nested deeper than {MAX_NESTING} levels"),
    };
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches([' ', '\t']);
        let indent = line.len() - body.len();
        let mut compact = 0;
        let mut rest = body;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            compact += 1;
            rest = r.trim_start_matches(' ');
        }
        if compact > MAX_NESTING || indent > 8 * MAX_NESTING {
            return Err(deep(n));
        }
        // A `#` at the start or after whitespace begins a comment (YAML 1.2, 6.6).
        let code = line
            .char_indices()
            .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with([' ', '\t'])))
            .map_or(line, |(i, _)| &line[..i]);
        for c in code.chars() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => continue,
            }
            if depth > MAX_NESTING {
                return Err(deep(n));
            }
        }
    }
    Ok(())
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    check_nesting(path, text)?;
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        // serde_yaml appends " at line L column C"; the location is already in front.
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        ConfigError::Yaml {
            path: path.to_path_buf(),
            line,
            column,
            msg,
        }
    })
}

/// The mirroring block and its field path: top level, `spec.mirroring`, or the only
/// `http.services.<svc>.mirroring`.
fn find_mirroring(fc: &FileConfig) -> Result<(Option<&Mirroring>, String), String> {
    if let Some(m) = &fc.mirroring {
        return Ok((Some(m), "mirroring".into()));
    }
    if let Some(s) = &fc.spec {
        return Ok((Some(&s.mirroring), "spec.mirroring".into()));
    }
    let found: Vec<_> = fc
        .http
        .iter()
        .flat_map(|h| &h.services)
        .filter_map(|(name, svc)| svc.mirroring.as_ref().map(|m| (name, m)))
        .collect();
    match found.as_slice() {
        [] => Ok((None, String::new())),
        [(name, m)] => Ok((Some(m), format!("http.services.{name}.mirroring"))),
        many => Err(format!(
            "{} services have a mirroring block ({}); the agent mirrors one, keep only it",
            many.len(),
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The first server URL of a file-provider service (`name` or `name@provider`).
fn service_url(fc: &FileConfig, name: &str) -> Option<Result<(String, u16, bool), String>> {
    let name = name.split('@').next().unwrap_or(name);
    let svc = fc.http.as_ref()?.services.get(name)?;
    let url = svc.load_balancer.as_ref()?.servers.first()?.url.as_ref()?;
    Some(spec::parse_url(url, url.trim_end_matches('/')).map_err(|e| e.to_string()))
}

/// The primary's host and port: the file provider's server URL, else its name (`name.namespace`
/// with a namespace, as Kubernetes DNS resolves it) on the primary port.
fn primary_endpoint(m: Option<&Mirroring>, fc: &FileConfig) -> Option<(String, u16)> {
    let mr = m?;
    let name = mr.service.as_deref().or(mr.name.as_deref())?;
    if let Some(Ok((host, port, _))) = service_url(fc, name) {
        return Some((host, port));
    }
    let host = match &mr.namespace {
        Some(ns) => format!("{name}.{ns}"),
        None => name.to_owned(),
    };
    Some((host, primary_port(m, fc)?))
}

fn primary_port(m: Option<&Mirroring>, fc: &FileConfig) -> Option<u16> {
    let m = m?;
    if let Some(p) = m.port {
        return Some(p.0);
    }
    service_url(fc, m.service.as_deref().or(m.name.as_deref())?)?
        .ok()
        .map(|(_, p, _)| p)
}

/// A mirror entry to a spec: `url`, else `host` (default: the name, `name.namespace` when a
/// namespace is given, as Kubernetes DNS resolves it) with `port`, else the file provider's
/// service of that name.
fn file_mirror(e: &MirrorEntry, fc: &FileConfig) -> Result<MirrorSpec, String> {
    spec::check_name(&e.name).map_err(|why| format!("name {:?}: {why}", e.name))?;
    let percent = e.percent.map_or(spec::DEFAULT_PERCENT, |p| p.0);
    let (host, port, https) = if let Some(u) = &e.url {
        (u.host.clone(), u.port, u.https)
    } else if let Some(p) = e.port {
        let host = match (&e.host, &e.namespace) {
            (Some(h), _) => h.0.clone(),
            (None, Some(ns)) => format!("{}.{ns}", e.name),
            (None, None) => e.name.clone(),
        };
        (host, p.0, false)
    } else if let Some(r) = service_url(fc, &e.name) {
        r?
    } else {
        return Err(format!(
            "mirror `{}` has no port: set `port` (or `url`, or define service `{}` under http.services)",
            e.name, e.name
        ));
    };
    if e.url.is_none() && e.host.is_none() {
        // The name becomes a DNS name; make sure it is one.
        spec::parse_url(&e.name, &format!("http://{host}:{port}")).map_err(|_| {
            format!(
                "mirror name `{}` is not a host name; set `host` or `url`",
                e.name
            )
        })?;
    }
    let mut tls = spec::TlsOptions::default();
    for (key, value) in [
        ("ca", e.ca.clone()),
        ("insecure", e.insecure.map(|b| b.to_string())),
        ("sni", e.sni.clone()),
        ("cert", e.cert.clone()),
        ("key", e.key.clone()),
    ] {
        if let Some(v) = value {
            tls.set(key, &v)?;
        }
    }
    let role = match &e.role {
        None => spec::MirrorRole::default(),
        Some(r) => spec::MirrorRole::parse(r)
            .ok_or_else(|| format!("role `{r}` is not baseline or candidate"))?,
    };
    let protocol = match &e.protocol {
        None => spec::MirrorProtocol::default(),
        Some(p) => spec::MirrorProtocol::parse(p)
            .ok_or_else(|| format!("protocol `{p}` is not auto, h1 or h2"))?,
    };
    Ok(MirrorSpec {
        name: e.name.clone(),
        host,
        port,
        percent,
        tls: tls.finish(https)?,
        role,
        protocol,
    })
}

/// 1-based line of the first occurrence of `needle`, to place errors found after parsing.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

#[cfg(test)]
mod tests;
