//! `cargo xtask test`: everything, in one command. Sets up what is missing, builds the eBPF
//! object, then runs the whole workspace's tests, builds the fuzz targets and runs fmt and
//! clippy. As root, the privileged end-to-end tests are
//! required to run (`MIRROR_REQUIRE_PRIVILEGED=1` turns their skips into failures).

use std::process::Command;

use crate::setup::{self, Scope};
use crate::util::{is_root, sh, target_dir};

pub fn run() -> anyhow::Result<()> {
    setup::run(Scope::All)?;
    crate::ebpf::build()?;
    // The end-to-end tests spawn the agent binary: build it with the object embedded.
    sh(Command::new("cargo").args(["build", "-p", "mirror-agent", "--bin", "mirror-agent"]))?;
    let agent = target_dir().join("debug/mirror-agent");
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace"])
        .env("MIRROR_AGENT_BIN", &agent);
    if is_root() {
        cmd.env("MIRROR_REQUIRE_PRIVILEGED", "1");
    } else {
        eprintln!("xtask: not root: privileged tests will skip (run as root to include them)");
    }
    sh(&mut cmd)?;
    // The fuzz targets are not run here, only built, so they cannot drift from the API they
    // fuzz (running them is `cargo +nightly fuzz run`, see mirror-agent/fuzz/README.md).
    let fuzz_manifest = crate::util::workspace_root().join("mirror-agent/fuzz/Cargo.toml");
    sh(Command::new("cargo")
        .args(["+nightly", "build", "--bins", "--manifest-path"])
        .arg(&fuzz_manifest)
        .env("CARGO_TARGET_DIR", target_dir().join("fuzz")))?;
    sh(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    sh(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
