//! Runners of the agent's modes: the async wiring around the library stages.

pub mod from;
pub mod live;
pub mod offline;
