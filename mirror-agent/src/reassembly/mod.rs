//! TCP stream reassembly, one direction at a time.
//!
//! Owns [`Stream`]: sequence-numbered segments in, ordered bytes and gap events out. It knows
//! nothing about flows (see [`crate::pipeline`]) or HTTP (see [`crate::http`]). The pipeline owns
//! the flow table, decides which direction a segment belongs to and enforces the global memory
//! budget (it reads [`Stream::buffered_bytes`]).
//!
//! Policy, in short:
//! - the first copy of every byte wins; later copies are counted as retransmitted, and those
//!   that differ from a copy still held as conflicting;
//! - a hole waits `gap_timeout_ns` (time comes only from segment timestamps and `poll`) or until
//!   the out-of-order buffer is full, then it is declared lost with a `Gap` and what follows is
//!   released; bytes are never invented or spliced without a `Gap` between them;
//! - every byte pushed is delivered, held, or counted in one [`StreamStats`] drop counter (the
//!   identity is in the `StreamStats` docs and checked by the tests).

mod buffer;
pub mod stream;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use stream::{Stream, StreamConfig, StreamEvent, StreamStats};
