//! Shared helpers for the end-to-end tests: network namespaces, processes, the shared pcap corpus.
