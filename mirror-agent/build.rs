//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when it exists.
//!
//! The object is looked up at `$MIRROR_EBPF_OBJECT`, else at
//! `<target dir>/bpfel-unknown-none/release/mirror-ebpf` (the target dir is found by walking up
//! from `OUT_DIR`). When found, `cfg(mirror_ebpf_object)` is set and `MIRROR_EBPF_OBJECT_PATH`
//! names it, so `capture::ebpf` can `include_bytes_aligned!` it. When absent, the agent still
//! builds on stable without the eBPF toolchain, and live mode reports how to build the object.

use std::path::{Path, PathBuf};

const RELATIVE: &str = "bpfel-unknown-none/release/mirror-ebpf";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mirror_ebpf_object)");
    println!("cargo::rerun-if-env-changed=MIRROR_EBPF_OBJECT");
    println!("cargo::rerun-if-changed=build.rs");

    let explicit = std::env::var_os("MIRROR_EBPF_OBJECT").map(PathBuf::from);
    if let Some(p) = &explicit
        && !p.is_file()
    {
        // Not watched: its directory could be anything (`/`, where cargo would scan the whole
        // filesystem on every build); the variable is watched, so fixing it rebuilds.
        println!(
            "cargo::warning=MIRROR_EBPF_OBJECT={} is not a file: the eBPF object is not embedded",
            p.display()
        );
        return;
    }
    let object = explicit.or_else(|| target_dir().map(|t| t.join(RELATIVE)));
    let Some(object) = object else {
        println!(
            "cargo::warning=cannot find the cargo target dir (no CACHEDIR.TAG above OUT_DIR): \
             the eBPF object is not embedded; set MIRROR_EBPF_OBJECT to its path"
        );
        return;
    };
    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        println!("cargo::rustc-cfg=mirror_ebpf_object");
        println!(
            "cargo::rustc-env=MIRROR_EBPF_OBJECT_PATH={}",
            object.display()
        );
    } else if let Some(dir) = object.parent() {
        // Watching a missing file would rerun this script (and rebuild the agent) on every
        // build; watch the directory the object will appear in instead.
        let _ = std::fs::create_dir_all(dir);
        println!("cargo::rerun-if-changed={}", dir.display());
    }
}

/// The cargo target directory: the nearest ancestor of `OUT_DIR` holding `CACHEDIR.TAG`.
fn target_dir() -> Option<PathBuf> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR")?);
    out.ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}
