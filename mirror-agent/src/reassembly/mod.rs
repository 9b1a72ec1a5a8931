//! TCP stream reassembly, one direction at a time.
//!
//! Owns [`Stream`]: sequence-numbered segments in, ordered bytes and gap events out. It knows
//! nothing about flows (see [`crate::pipeline`]) or HTTP (see [`crate::http`]).

pub mod stream;

pub use stream::{Stream, StreamConfig, StreamEvent, StreamStats};
