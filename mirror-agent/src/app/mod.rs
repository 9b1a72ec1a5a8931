//! Run modes: the thin drivers that connect a source, the pipeline and the outputs.

pub mod from;
pub mod offline;
