//! `cargo xtask test`: everything, in one command. Sets up what is missing, builds the eBPF
//! object, then runs the whole workspace's tests. As root, the privileged end-to-end tests are
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
    sh(&mut cmd)
}
