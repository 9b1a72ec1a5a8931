//! Run modes: the thin drivers that connect a source, the pipeline and the outputs.

pub mod offline;
