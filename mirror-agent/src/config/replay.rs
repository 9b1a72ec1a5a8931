//! The replay flags and the file's mirroring options into [`ReplayConfig`]: what each mirror
//! receives (rewrite, body), which requests (filter), and the queue and connection bounds.
//! A flag given overrides the file; lists from flags replace the file's lists.

use crate::replay::sampler::Sampling;
use crate::replay::spec::MirrorRole;
use std::time::Duration;

use super::file::{FileConfig, Mirroring};
use super::{ConfigError, DEFAULT_HOST_SUFFIX};
use crate::cli::RunArgs;
use crate::replay::ReplayConfig;
use crate::replay::filter::Filter;
use crate::replay::rewrite::{self, HostMode, RewriteOptions};
use crate::replay::spec::MirrorSpec;

/// Replay's settings for `mirrors`, of which the kernel captures `capture_percent`.
pub fn build(
    args: &RunArgs,
    fc: &FileConfig,
    mirroring: Option<&Mirroring>,
    mirrors: Vec<MirrorSpec>,
    capture_percent: f64,
) -> Result<ReplayConfig, ConfigError> {
    let list = |flag: &[String], file: &Option<Vec<String>>| {
        if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag.to_vec()
        }
    };
    let set_headers = if args.replay.mirror_headers.is_empty() {
        fc.mirror_headers
            .iter()
            .flatten()
            .map(|h| h.0.clone())
            .collect()
    } else {
        args.replay
            .mirror_headers
            .iter()
            .map(|h| rewrite::parse_header(h))
            .collect::<Result<_, _>>()?
    };
    let strip_headers: Vec<String> = list(&args.replay.strip_headers, &fc.strip_headers)
        .iter()
        .map(|h| rewrite::parse_header_name(h))
        .collect::<Result<_, _>>()?;
    let host_mode = args.replay.host_mode.as_ref().or(fc.host_mode.as_ref());
    let host_suffix = args
        .replay
        .host_suffix
        .clone()
        .or(fc.host_suffix.clone())
        .unwrap_or_else(|| DEFAULT_HOST_SUFFIX.into());
    let host = match host_mode {
        None => HostMode::Keep,
        Some(m) => HostMode::parse(m, &host_suffix)?,
    };
    let mirror_body = args
        .replay
        .mirror_body
        .or(mirroring.and_then(|m| m.mirror_body))
        .or(fc.mirror_body)
        .unwrap_or(true);
    let max_body_size = match args.replay.max_body_size {
        Some(n) => Some(n),
        None => mirroring
            .and_then(|m| m.max_body_size)
            .or(fc.max_body_size)
            .and_then(|l| l.0),
    };
    let filter = Filter::new(
        &list(&args.replay.methods, &fc.methods),
        &list(&args.replay.path_allow, &fc.path_allow),
        &list(&args.replay.path_deny, &fc.path_deny),
        &list(&args.replay.header_match, &fc.header_match),
    )?;
    // A flag, else the file's value, else the default; at least 1 and at most `max` (a typo
    // must not size a queue or a pool to exhaust the machine).
    let positive =
        |flag: &'static str, v: Option<u64>, file: Option<u64>, default: u64, max| match v.or(file)
        {
            Some(0) => Err(ConfigError::Flag {
                flag,
                msg: "must be at least 1".into(),
            }),
            Some(v) => super::bounded(flag, v, 1, max),
            None => Ok(default),
        };
    let defaults = ReplayConfig::new(Vec::new());
    let queue_size = positive(
        "--queue-size",
        args.replay.queue_size.map(|v| v as u64),
        fc.queue_size.map(|v| v.0),
        defaults.queue_size as u64,
        1 << 20,
    )?;
    let max_connections = positive(
        "--max-connections",
        args.replay.max_connections.map(|v| v as u64),
        fc.max_connections.map(|v| v.0),
        defaults.max_connections as u64,
        4096,
    )?;
    let max_queue_bytes = positive(
        "--max-queue-bytes",
        args.replay.max_queue_bytes,
        fc.max_queue_bytes.map(|v| v.0),
        defaults.max_queue_bytes,
        64 << 30,
    )?;
    let timeout_ms = positive(
        "--timeout-ms",
        args.replay.timeout_ms,
        fc.timeout_ms.map(|v| v.0),
        defaults.timeout.as_millis() as u64,
        3_600_000,
    )?;
    let ordered = match args
        .replay
        .ordering
        .as_ref()
        .or(fc.ordering.as_ref())
        .map(String::as_str)
    {
        None | Some("connection") => true,
        Some("none") => false,
        Some(other) => {
            return Err(ConfigError::Flag {
                flag: "--ordering",
                msg: format!("{other:?} is not connection or none"),
            });
        }
    };
    let sampling = match args.replay.sampling.as_ref().or(fc.sampling.as_ref()) {
        // A baseline is compared request by request with the candidates: they must get the
        // same requests (a baseline at P% gets every request a candidate at <= P% gets).
        None if mirrors.iter().any(|m| m.role == MirrorRole::Baseline) => Sampling::Consistent,
        None => Sampling::Independent,
        Some(s) => Sampling::parse(s).ok_or_else(|| ConfigError::Flag {
            flag: "--sampling",
            msg: format!("{s:?} is not independent or consistent"),
        })?,
    };
    let mut replay = ReplayConfig::new(mirrors);
    replay.sampling = sampling;
    replay.capture_percent = capture_percent;
    replay.rewrite = RewriteOptions {
        set_headers,
        strip_headers,
        host,
        mirror_body,
        max_body_size,
    };
    replay.filter = filter;
    replay.queue_size = queue_size as usize;
    replay.max_connections = max_connections as usize;
    replay.ordered = ordered;
    replay.max_queue_bytes = max_queue_bytes;
    replay.timeout = Duration::from_millis(timeout_ms);
    replay.limits.max_head_bytes = args.limits.max_head_bytes;
    replay.limits.max_headers = args.limits.max_headers;
    // The TLS files are read now, before privileges are dropped, and a bad one is this
    // configuration's error.
    for m in &replay.mirrors {
        if let Some(tls) = &m.tls {
            let client = crate::replay::tls::MirrorTls::new(&m.host, tls).map_err(|msg| {
                ConfigError::MirrorTls {
                    name: m.name.clone(),
                    msg,
                }
            })?;
            replay.tls_clients.insert(m.name.clone(), client);
        }
    }
    Ok(replay)
}
