//! The limit flags and the captured ports into [`PipelineConfig`]. Every limit has an upper
//! bound too, so a typo cannot ask for a 32 GB allocation on the first request.

use super::{ConfigError, bounded};
use crate::cli::LimitArgs;
use crate::http::request::HttpLimits;
use crate::pipeline::PipelineConfig;
use crate::reassembly::StreamConfig;

/// The pipeline's bounds; `ports` are already validated, `responses` frames the primary's side
/// (`--compare`), keeping `capture_responses` decoded body bytes of each response.
pub fn build(
    a: &LimitArgs,
    ports: &[u16],
    responses: bool,
    capture_responses: Option<usize>,
) -> Result<PipelineConfig, ConfigError> {
    Ok(PipelineConfig {
        ports: ports.to_vec(),
        max_flows: bounded("--max-flows", a.max_flows, 1, 1 << 24)?,
        memory_budget: bounded("--memory-budget", a.memory_budget, 1 << 16, 64 << 30)?,
        stream: StreamConfig {
            max_buffered_bytes: bounded("--flow-buffer", a.flow_buffer, 4096, 1 << 30)?,
            gap_timeout_ns: bounded("--gap-timeout-ms", a.gap_timeout_ms, 1, 600_000)? * 1_000_000,
            ..StreamConfig::default()
        },
        http: http_limits(a)?,
        flow_idle_ns: bounded("--flow-idle-secs", a.flow_idle_secs, 1, 86_400)? * 1_000_000_000,
        responses,
        capture_responses,
        ..PipelineConfig::default()
    })
}

/// Head limits, shared by the pipeline's framers and the mirrors' response framing.
pub fn http_limits(a: &LimitArgs) -> Result<HttpLimits, ConfigError> {
    Ok(HttpLimits {
        max_head_bytes: bounded("--max-head-bytes", a.max_head_bytes, 1024, 16 << 20)?,
        // Each header slot is allocated up front for every head parsed.
        max_headers: bounded("--max-headers", a.max_headers, 1, 4096)?,
        ..HttpLimits::default()
    })
}
