//! Pipeline: segments in, requests (and responses) out.
//!
//! Owns the flow table and the per-flow wiring of reassembly ([`crate::reassembly`]) and framing
//! ([`crate::http`]). Plain state machine: no I/O, no clock of its own (time comes with segments
//! and ticks).
// Implementation in progress; the output types below are agreed with record and replay.

use std::net::SocketAddr;

use crate::http::Request;

/// A request with the connection it was seen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedRequest {
    /// Client address (the side that sent the request).
    pub src: SocketAddr,
    /// Server address (the primary).
    pub dst: SocketAddr,
    /// Identifies the connection within one run (stable for all its requests).
    pub flow_id: u64,
    /// Position of this request on its connection, from 0.
    pub seq_in_flow: u64,
    pub request: Request,
}
