//! `cargo xtask setup`: makes sure the machine has what the build and tests need, installing
//! only what is missing (each check is a file lookup or a cheap command, so a complete machine
//! pays well under a second). Where it cannot install (not root, no apt), it prints the exact
//! commands and fails.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::util::{is_root, sh, succeeds};

/// LLVM major version bpf-linker is built against (EBPF-NOTES: bpf-linker 0.13 + llvm-22).
const LLVM: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for `cargo xtask fuzz` (and the smoke run of `cargo xtask test`); builds on the
/// stable toolchain here, installed with its own lock file.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages needed to build bpf-linker.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the tests and benchmarks run.
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "wrk",
    "nginx-light",
    // h2load: many HTTP/2 streams multiplexed on one connection (tests/tests/mirror_h2c.rs).
    "nghttp2-client",
    "tshark",
    "bpftool",
    "iproute2",
    "python3",
    "procps",
    // The telemetry tests scrape the agent with a real Prometheus.
    "prometheus",
    // The mirror loop test DNATs a mirror address inside its namespace (nft, output hook).
    "nftables",
    // bench capture's bulk-upload section compares the agent with tcpdump; taskset pins.
    "tcpdump",
    "util-linux",
    // The https mirror tests: openssl makes the certificates, socat terminates TLS in front of
    // a recording mirror (plaintext forwarded byte for byte).
    "openssl",
    "socat",
    // ab over HTTPS drives the nginx TLS primary (tests/tests/mirror_tls_primary.rs).
    "apache2-utils",
    // The same file builds OpenSSL 1.1.1 from the openssl-src crate's source and a C server
    // linked statically against it (the `--tls-binary` case).
    "gcc",
    "libc6-dev",
    "make",
    "perl",
];

/// Debian packages `cargo xtask image` and its smoke test run: podman builds the image from
/// scratch (no registry), runc runs it (crun, podman's default, refuses this machine's hybrid
/// cgroups; see xtask/podman/containers.conf). binutils strips the agent copied into the image.
const IMAGE_PACKAGES: &[&str] = &["podman", "runc", "binutils"];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only what `build-ebpf` needs.
    Ebpf,
    /// Also the test and benchmark tools, and the image tools (the image smoke test is part of
    /// the suite).
    All,
    /// What `cargo xtask image` needs: the eBPF toolchain and the image tools.
    Image,
    /// Only what `cargo xtask fuzz` needs: nightly and cargo-fuzz. No Debian packages, so it
    /// works without root (seeding, which needs tshark, is skipped with a reason instead).
    Fuzz,
}

pub fn run(scope: Scope) -> anyhow::Result<()> {
    let need_linker =
        scope != Scope::Fuzz && !succeeds(Command::new(cargo_bin("bpf-linker")).arg("--version"));
    let mut packages: Vec<&str> = Vec::new();
    if need_linker {
        packages.extend(TOOLCHAIN_PACKAGES);
    }
    if scope == Scope::All {
        packages.extend(TEST_PACKAGES);
    }
    if matches!(scope, Scope::All | Scope::Image) {
        packages.extend(IMAGE_PACKAGES);
    }
    let missing = missing_packages(&packages);
    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    ensure_rust_src()?;
    if need_linker {
        install_bpf_linker()?;
    }
    if scope == Scope::All && !succeeds(python_module("kubernetes_validate").arg("--version")) {
        install_python_package("kubernetes-validate")?;
    }
    // gRPC peers for tests/tests/mirror_grpc.rs.
    if scope == Scope::All && !succeeds(Command::new("python3").args(["-c", "import grpc"])) {
        install_python_package("grpcio")?;
    }
    // An HTTP/1.1 server that takes `Upgrade: h2c` (nginx and nghttpd do not), for
    // tests/tests/mirror_h2c.rs.
    if scope == Scope::All && !succeeds(Command::new("python3").args(["-c", "import hypercorn"])) {
        install_python_package("hypercorn")?;
    }
    if matches!(scope, Scope::All | Scope::Fuzz)
        && !succeeds(Command::new(cargo_bin("cargo-fuzz")).arg("--version"))
    {
        install_cargo_fuzz()?;
    }
    Ok(())
}

/// A program `cargo install` put in ~/.cargo/bin, which may not be on PATH under sudo.
fn cargo_bin(name: &str) -> String {
    match std::env::var_os("CARGO_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        Some(home) if Path::new(&home).join("bin").join(name).exists() => Path::new(&home)
            .join("bin")
            .join(name)
            .to_string_lossy()
            .into_owned(),
        _ => name.into(),
    }
}

/// Packages not in state "install ok installed", with one dpkg-query call.
fn missing_packages(packages: &[&str]) -> Vec<String> {
    if packages.is_empty() {
        return Vec::new();
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(packages)
        .output();
    let Ok(out) = out else {
        // Not Debian: report them all; install_packages explains.
        return packages.iter().map(|p| p.to_string()).collect();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    packages
        .iter()
        .filter(|p| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{p} ")) && l.ends_with("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

/// `python3 -m MODULE`.
pub fn python_module(module: &str) -> Command {
    let mut c = Command::new("python3");
    c.args(["-m", module]);
    c
}

/// A PyPI package the tests run (`deploy_manifests.rs` validates the manifests with
/// kubernetes-validate, `mirror_grpc.rs` runs grpcio peers, `mirror_h2c.rs` hypercorn),
/// installed with the machine's
/// `python3 -m pip`.
fn install_python_package(package: &str) -> anyhow::Result<()> {
    eprintln!("xtask: installing {package} from PyPI");
    if succeeds(python_module("pip").args(["install", "-q", package])) {
        return Ok(());
    }
    // A distribution's own python3 refuses pip outside a virtualenv (PEP 668); these are leaf
    // packages only the tests import, so a user install is harmless.
    sh(python_module("pip").args([
        "install",
        "-q",
        "--user",
        "--break-system-packages",
        package,
    ]))
}

fn install_packages(missing: &[String]) -> anyhow::Result<()> {
    let list = missing.join(" ");
    if !is_root() || !succeeds(Command::new("apt-get").arg("--version")) {
        bail!(
            "missing packages: {list}\nrun as root:\n  apt-get update\n  \
             DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("xtask: installing missing packages: {list}");
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing))
}

/// The nightly toolchain with rust-src, needed for `-Z build-std=core`.
fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output();
    if let Ok(out) = &sysroot
        && out.status.success()
    {
        let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if Path::new(&root)
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
        {
            return Ok(());
        }
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        return sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    eprintln!("xtask: installing the nightly toolchain with rust-src");
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let prefix = format!("/usr/lib/llvm-{LLVM}");
    if !Path::new(&prefix).exists() {
        bail!(
            "bpf-linker needs LLVM {LLVM} in {prefix}; install llvm-{LLVM}-dev, then run:\n  \
             LLVM_PREFIX={prefix} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-{LLVM}"
        );
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about 70 s)");
    sh(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM}"),
        ]))
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    sh(Command::new("cargo").env_remove("CARGO_TARGET_DIR").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}
