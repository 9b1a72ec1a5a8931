//! `cargo xtask image`: the agent as an OCI image `mirror-agent:<version>`, built by podman
//! `FROM scratch`, offline (nothing is pulled from a registry). The root file system is the
//! release agent (eBPF object embedded), stripped, plus exactly the shared libraries `ldd` names
//! and the dynamic loader: no shell, no package manager, no CA certificates (mirrors are plain
//! http). `--test` then runs the image smoke test (`tests/tests/image.rs`) against it, required
//! to run (`MIRROR_REQUIRE_IMAGE=1`).
//!
//! podman gets its configuration from `xtask/podman/containers.conf` (`CONTAINERS_CONF`), never
//! from /etc; images go to podman's default storage, so a plain `podman run` sees them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};

use crate::setup::Scope;
use crate::util::{sh, show, target_dir, workspace_root};

/// The podman configuration the xtask and the smoke test use (relative to the workspace root).
pub const CONTAINERS_CONF: &str = "xtask/podman/containers.conf";

/// `podman` with the xtask's configuration.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", workspace_root().join(CONTAINERS_CONF));
    c
}

/// `cargo xtask image [--test]`.
pub fn run(test: bool) -> anyhow::Result<()> {
    let tag = build()?;
    if test {
        let started = Instant::now();
        sh(Command::new("cargo")
            .args(["test", "-p", "mirror-tests", "--test", "image"])
            .env("MIRROR_REQUIRE_IMAGE", "1")
            .env("MIRROR_IMAGE", &tag)
            .args(["--", "--nocapture"]))?;
        eprintln!(
            "xtask: image smoke test passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Builds the image and returns its tag.
pub fn build() -> anyhow::Result<String> {
    let started = Instant::now();
    let agent = crate::ebpf::release_agent_for(Scope::Image)?;
    let version = agent_version(&agent)?;
    let tag = format!("mirror-agent:{version}");

    let work = target_dir().join("image");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    // Symbols and debug info are most of the release binary; the agent never reads them (its
    // embedded eBPF object is data and stays).
    sh(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(rootfs.join("mirror-agent"))
        .arg(&agent))?;
    let mut files = vec![(
        "/mirror-agent".to_owned(),
        file_size(&rootfs.join("mirror-agent"))?,
    )];
    for lib in shared_libraries(&agent)? {
        // Copied to the path ldd names (the loader's own path is in the binary's PT_INTERP;
        // the libraries are in glibc's built-in search path), content of the symlink's target.
        let dest = rootfs.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
        files.push((lib.display().to_string(), file_size(&dest)?));
    }

    // Without this file glibc looks host names up with "dns [!UNAVAIL=return] files": /etc/hosts
    // (Kubernetes hostAliases, podman --add-host) would be read only when no DNS server answers.
    std::fs::create_dir_all(rootfs.join("etc"))?;
    std::fs::write(rootfs.join("etc/nsswitch.conf"), "hosts: files dns\n")?;

    let revision = git(&["rev-parse", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    let revision = if dirty {
        format!("{revision}-dirty")
    } else {
        revision
    };
    let source = git(&["remote", "get-url", "origin"])
        .unwrap_or_else(|_| format!("file://{}", workspace_root().display()));
    let containerfile = work.join("Containerfile");
    std::fs::write(
        &containerfile,
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/mirror-agent\"]\n",
    )?;

    let old_id = image_id(&tag);
    sh(podman()
        .args(["build", "--pull=never", "--tag", &tag, "--file"])
        .arg(&containerfile)
        // The commit's time as every timestamp: the same tree builds the same image id.
        .args(["--timestamp", &git(&["log", "-1", "--format=%ct"])?])
        .args(label("version", &version))
        .args(label("source", &source))
        .args(label("revision", &revision))
        .arg(&work))?;
    let new_id = image_id(&tag);
    if let (Some(old), Some(new)) = (&old_id, &new_id)
        && old != new
    {
        // The previous build of this tag is now untagged: remove it (not if a container uses it).
        let _ = podman().args(["rmi", old]).output();
    }
    // The image starts: its loader finds every library, and the agent reports the version.
    let reported = capture(podman().args(["run", "--rm", "--network=none", &tag, "--version"]))?;
    ensure!(
        reported.ends_with(&version),
        "the image's agent reports {reported:?}, expected version {version}"
    );
    let size: u64 = capture(podman().args(["image", "inspect", "--format", "{{.Size}}", &tag]))?
        .parse()
        .context("image size")?;

    eprintln!("xtask: image {tag} ({revision}), {} MB:", mb(size));
    for (path, bytes) in &files {
        eprintln!("xtask:   {path:<45} {:>6} kB", bytes / 1000);
    }
    eprintln!(
        "xtask: built in {:.0} s; run it with\n  CONTAINERS_CONF={} podman run --rm --privileged \
         --network host {tag} --iface eth0 --port 8080 --mirror http://10.0.0.5:8080",
        started.elapsed().as_secs_f64(),
        workspace_root().join(CONTAINERS_CONF).display()
    );
    Ok(tag)
}

/// `--label org.opencontainers.image.KEY=VALUE`.
fn label(key: &str, value: &str) -> [String; 2] {
    [
        "--label".into(),
        format!("org.opencontainers.image.{key}={value}"),
    ]
}

/// The version the agent reports (`mirror-agent 0.1.0`): the one in mirror-agent/Cargo.toml.
fn agent_version(agent: &Path) -> anyhow::Result<String> {
    let out = capture(Command::new(agent).arg("--version"))?;
    let version = out.split_whitespace().last().unwrap_or_default();
    ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c)),
        "unexpected `mirror-agent --version` output {out:?}"
    );
    Ok(version.to_owned())
}

/// The files `ldd` says the binary loads: every resolved library and the loader. The vDSO has
/// no file; a library ldd cannot find is an error (the image would not start).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = capture(Command::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") {
            bail!("unexpected ldd line {line:?}");
        }
    }
    ensure!(
        libs.iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")),
        "ldd named no dynamic loader: {out}"
    );
    Ok(libs)
}

/// The image id of `tag`, if it exists.
fn image_id(tag: &str) -> Option<String> {
    capture(podman().args(["image", "inspect", "--format", "{{.Id}}", tag])).ok()
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    capture(Command::new("git").current_dir(workspace_root()).args(args))
}

/// Runs a command, fails on a non-zero exit, returns its trimmed stdout.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn file_size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}
