//! Pipeline: segments in, requests (and responses) out. Wires flow table, reassembly and framing.
