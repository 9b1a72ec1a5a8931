//! Shared helpers for the end-to-end tests: network namespaces, veth pairs, processes inside a
//! namespace (killed by PID on drop), waiting for ports, the agent binary, and tshark as an
//! independent oracle.
//!
//! Privileged tests call [`privileged_or_skip`] first: it prints why a test is skipped (not root,
//! eBPF object not built, agent binary missing), and turns the skip into a failure when
//! `MIRROR_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test` as root), so CI never passes silently.

pub mod agent;
pub mod cgroup;
pub mod mirror;
pub mod netns;
pub mod oracle;
pub mod process;
pub mod scenario;
pub mod tc;

pub use netns::{NetNs, Topology, unique_name};
pub use process::{ChildGuard, wait_for_port};

/// `true` when the privileged test may run; otherwise prints the reason and returns `false`
/// (or panics when `MIRROR_REQUIRE_PRIVILEGED=1`).
pub fn privileged_or_skip(test: &str) -> bool {
    let reason = if !is_root() {
        Some("not root".to_owned())
    } else if !mirror_agent::capture::ebpf::has_object() {
        Some("the eBPF object is not built (cargo xtask build-ebpf)".to_owned())
    } else if !agent::binary().is_file() {
        Some(format!(
            "agent binary {} missing (cargo build -p mirror-agent)",
            agent::binary().display()
        ))
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("{test}: privileged test cannot run: {r}")
        }
        Some(r) => {
            eprintln!("SKIPPED {test}: {r}");
            false
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique_name(&format!("mirror-{tag}-")));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("MIRROR_KEEP_TEST_FILES").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
