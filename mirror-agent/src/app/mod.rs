//! Run modes: the thin async drivers that connect a source, the pipeline and the outputs.

pub mod agent;
pub mod from;
pub mod live;
pub mod offline;
