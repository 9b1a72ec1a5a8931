//! Per-direction TCP stream reassembly and the flow table.
