//! mirror-agent: passive HTTP/1.x traffic mirroring.
//!
//! Data flow (see "How it works" in the README): a capture source produces
//! [`capture::Segment`]s; the [`pipeline`] keeps a flow table, reassembles each direction
//! ([`reassembly`]) and frames HTTP ([`http`]); the resulting requests are recorded ([`record`])
//! and/or replayed to mirrors ([`replay`]). Everything between capture and replay is synchronous,
//! I/O-free state machines.

// The library names every dependency it uses; one it does not is a stale manifest line. Only the
// lib target itself: its unit-test build also sees the dev-dependencies that only the integration
// tests use, and the bin and integration tests are separate crates that see every dependency.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod app;
pub mod capture;
pub mod check;
pub mod cli;
pub mod compare;
pub mod config;
pub mod http;
pub mod http2;
pub mod pipeline;
pub mod privileges;
pub mod reassembly;
pub mod record;
pub mod replay;
pub mod telemetry;

mod output_file;
pub mod output_queue;
mod prefetch;
mod sync;

// Used by the bin only (`main.rs` installs the log subscriber); cargo has no per-target
// dependencies, so the lib acknowledges it here for `unused_crate_dependencies`.
use tracing_subscriber as _;
