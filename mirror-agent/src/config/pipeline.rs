//! The limit flags and the captured ports into [`PipelineConfig`].

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
) -> PipelineConfig {
    PipelineConfig {
        ports: ports.to_vec(),
        max_flows: a.max_flows.max(1),
        memory_budget: a.memory_budget,
        stream: StreamConfig {
            max_buffered_bytes: a.flow_buffer,
            gap_timeout_ns: a.gap_timeout_ms.saturating_mul(1_000_000),
            ..StreamConfig::default()
        },
        http: HttpLimits {
            max_head_bytes: a.max_head_bytes,
            max_headers: a.max_headers,
            ..HttpLimits::default()
        },
        flow_idle_ns: a.flow_idle_secs.saturating_mul(1_000_000_000),
        responses,
        capture_responses,
        ..PipelineConfig::default()
    }
}
