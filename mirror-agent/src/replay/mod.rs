//! Replay of captured requests to mirror services.

pub mod filter;
pub mod rewrite;
pub mod sampler;
pub mod spec;
#[doc(hidden)]
pub mod testutil;
