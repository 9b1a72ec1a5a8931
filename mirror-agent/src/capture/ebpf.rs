//! Live capture from the eBPF ring buffer (Linux only, needs the object built by `cargo xtask build-ebpf`).
