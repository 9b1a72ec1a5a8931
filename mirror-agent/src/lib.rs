//! mirror-agent: passive HTTP/1.x traffic mirroring.
//!
//! Data flow (see `docs/` and the README): a capture source produces [`capture::Segment`]s; the
//! [`pipeline`] keeps a flow table, reassembles each direction ([`reassembly`]) and frames HTTP
//! ([`http`]); the resulting requests are recorded ([`record`]) and/or replayed to mirrors
//! ([`replay`]). Everything between capture and replay is synchronous, I/O-free state machines.

pub mod app;
pub mod capture;
pub mod check;
pub mod cli;
pub mod compare;
pub mod config;
pub mod http;
pub mod pipeline;
pub mod reassembly;
pub mod record;
pub mod replay;
pub mod telemetry;
