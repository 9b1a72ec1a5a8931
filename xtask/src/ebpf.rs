//! `cargo xtask build-ebpf`: builds `mirror-ebpf` for `bpfel-unknown-none` with nightly and
//! bpf-linker, into `<target dir>/bpfel-unknown-none/release/mirror-ebpf`, where the agent's
//! `build.rs` picks it up (after making sure the toolchain is there).

use std::path::PathBuf;
use std::process::Command;

use crate::setup::{self, Scope};
use crate::util::{sh, target_dir, workspace_root};

/// Builds the object and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    setup::run(Scope::Ebpf)?;
    let target = target_dir();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("mirror-ebpf"))
        // The outer cargo (stable) exports these; they must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        // BTF in the object (bpftool and verifier messages name types).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-C\x1fdebuginfo=2\x1f-C\x1flink-arg=--btf",
        )
        .env("PATH", path_with_cargo_bin())
        .args([
            "+nightly",
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["--release", "--target-dir"])
        .arg(&target);
    sh(&mut cmd)?;
    let object = target.join("bpfel-unknown-none/release/mirror-ebpf");
    anyhow::ensure!(
        object.is_file(),
        "the build did not produce {}",
        object.display()
    );
    eprintln!("xtask: eBPF object at {}", object.display());
    Ok(object)
}

/// PATH with ~/.cargo/bin first, where `cargo install bpf-linker` puts the linker.
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut parts: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        parts.push(PathBuf::from(home).join("bin"));
    } else if let Some(home) = std::env::var_os("HOME") {
        parts.push(PathBuf::from(home).join(".cargo/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

/// What the benchmarks run: everything set up, the object built and embedded in a release agent.
/// Returns the agent's path.
pub fn release_agent() -> anyhow::Result<PathBuf> {
    release_agent_for(Scope::All)
}

/// [`release_agent`] with only what `scope` needs set up (`cargo xtask image` needs no test
/// tools).
pub fn release_agent_for(scope: Scope) -> anyhow::Result<PathBuf> {
    setup::run(scope)?;
    build()?;
    sh(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "mirror-agent",
        "--bin",
        "mirror-agent",
    ]))?;
    Ok(target_dir().join("release/mirror-agent"))
}
