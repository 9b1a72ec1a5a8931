//! `cargo xtask test`: everything, in one command. Sets up what is missing, builds the eBPF
//! object, then runs the whole workspace's tests, builds the fuzz targets and runs each for a
//! few seconds, and runs fmt and clippy. As root, the privileged end-to-end tests are
//! required to run (`MIRROR_REQUIRE_PRIVILEGED=1` turns their skips into failures), and so is
//! the image smoke test: as root the image is built first (`cargo xtask image`: a release build,
//! about 2 minutes from a cold target, seconds after) and `MIRROR_REQUIRE_IMAGE=1` is set, so
//! CI always tests the image of the commit it runs, never a stale one or none.

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
    // Setup installed every tool the tests run (kubernetes-validate too): none may skip.
    cmd.args(["test", "--workspace"])
        .env("MIRROR_AGENT_BIN", &agent)
        .env("MIRROR_REQUIRE_TOOLS", "1");
    if is_root() {
        let image = crate::image::build()?;
        cmd.env("MIRROR_REQUIRE_PRIVILEGED", "1")
            .env("MIRROR_REQUIRE_IMAGE", "1")
            .env("MIRROR_IMAGE", image);
    } else {
        eprintln!(
            "xtask: not root: privileged tests and the image test will skip (run as root to \
             include them)"
        );
    }
    sh(&mut cmd)?;
    // Every fuzz target is built (so none drifts from the API it fuzzes) and run briefly (so the
    // harness itself works); the long runs are `cargo xtask fuzz`.
    crate::fuzz::smoke()?;
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
