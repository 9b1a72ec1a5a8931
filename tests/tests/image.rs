//! Privileged: the OCI image `cargo xtask image` builds runs with podman and mirrors real traffic.
//!
//! The container joins the node namespace of a test [`Topology`] (`--network ns:PATH`, podman's
//! form of `--network host` for a namespace other than the caller's; `ip netns exec NS podman
//! run --network host` would do the same for the network, but `ip netns exec` remounts /sys and
//! so hides the cgroup tree that runc needs). The agent in the image captures the node's veth,
//! which exists only in that namespace, so the capture itself proves where the container runs;
//! nothing reaches the host's interfaces. A recording primary, a recording mirror named by host
//! name (an `/etc/hosts` entry, resolved by the image's glibc), curl from the client namespace;
//! then `podman stop` (SIGTERM to the agent) must end it cleanly with its summary.
//!
//! The image is built by `cargo xtask image`, not here (a release build takes minutes): without
//! it the test skips, saying why, unless `MIRROR_REQUIRE_IMAGE=1` (set by
//! `cargo xtask image --test`), which turns every skip into a failure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mirror_tests::agent::parse_summary;
use mirror_tests::mirror::{Behavior, MirrorTable, assert_same_requests};
use mirror_tests::scenario::{
    Family, PRIMARY_PORT, curl_ok, curl_request_shapes, start_mirror, start_primary, url,
};
use mirror_tests::{ChildGuard, TempDir, Topology, is_root, unique_name};

const MIRROR_PORT: u16 = 9001;
const MIRROR_HOST: &str = "shadow.test";

/// The podman configuration `cargo xtask image` uses (runc, cgroupfs: see the file).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/podman/containers.conf"),
    );
    c
}

/// The image under test: `$MIRROR_IMAGE`, else `mirror-agent:<workspace version>`.
fn image() -> String {
    std::env::var("MIRROR_IMAGE")
        .unwrap_or_else(|_| format!("mirror-agent:{}", env!("CARGO_PKG_VERSION")))
}

/// `Some(image)` when the test can run; otherwise prints why and returns `None`, or panics
/// when `MIRROR_REQUIRE_IMAGE=1`.
fn image_or_skip(test: &str) -> Option<String> {
    let image = image();
    let reason = if !is_root() {
        Some("not root".to_owned())
    } else if !podman()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("podman is not installed (cargo xtask setup)".to_owned())
    } else if !podman()
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|s| s.success())
    {
        Some(format!("no image {image} (build it: cargo xtask image)"))
    } else {
        None
    };
    match reason {
        None => Some(image),
        Some(r) if std::env::var("MIRROR_REQUIRE_IMAGE").as_deref() == Ok("1") => {
            panic!("{test}: cannot run: {r}")
        }
        Some(r) => {
            eprintln!("SKIPPED {test}: {r}");
            None
        }
    }
}

/// A container by name, removed (killed first) on drop, whatever happened to the test.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn label(image: &str, key: &str) -> String {
    let out = podman()
        .args(["image", "inspect", "--format"])
        .arg(format!(
            "{{{{index .Labels \"org.opencontainers.image.{key}\"}}}}"
        ))
        .arg(image)
        .output()
        .expect("podman image inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn image_mirrors_traffic_in_a_test_namespace() {
    let test = "image_mirrors_traffic_in_a_test_namespace";
    let Some(image) = image_or_skip(test) else {
        return;
    };
    eprintln!(
        "{test}: {image}, version {}, revision {}",
        label(&image, "version"),
        label(&image, "revision")
    );
    let dir = TempDir::new("image");
    let topo = Topology::new();
    // The veth must not exist in the host's namespace, or a capture would prove nothing.
    assert!(!Path::new("/sys/class/net").join(&topo.server_if).exists());
    let primary = start_primary(&topo, Family::V4);
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);

    let name = unique_name("mirror-image-");
    let (out_path, err_path) = (dir.path().join("agent.out"), dir.path().join("agent.err"));
    let container = Container(name.clone());
    let mut run = ChildGuard::spawn(
        "podman run",
        podman()
            .args(["run", "--rm", "--name", &name])
            // The DaemonSet's privileges (deploy/mirror-agent.yaml), not `--privileged`: only
            // CAP_BPF and CAP_NET_ADMIN, no privilege escalation; the runtime's default seccomp
            // profile refuses bpf(2) without CAP_SYS_ADMIN, so the agent's own filter replaces it.
            .args(["--cap-drop=ALL", "--cap-add=BPF,NET_ADMIN"])
            .args([
                "--security-opt=no-new-privileges",
                "--security-opt=seccomp=unconfined",
            ])
            .arg(format!("--network=ns:/run/netns/{}", topo.server.name))
            .arg(format!("--add-host={MIRROR_HOST}:127.0.0.1"))
            .args(["--env", "RUST_LOG=info", "--env", "NO_COLOR=1"])
            .arg(&image)
            .args([
                "--iface",
                &topo.server_if,
                "--port",
                &PRIMARY_PORT.to_string(),
            ])
            .arg("--mirror")
            .arg(format!("http://{MIRROR_HOST}:{MIRROR_PORT},name=shadow"))
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let log = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let started = Instant::now();
    loop {
        if log().contains("capturing;") {
            break;
        }
        if let Some(status) = run.child.as_mut().unwrap().try_wait().unwrap() {
            run.child = None;
            panic!("the container exited early with {status}: {}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the agent in the container did not attach within 60 s: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{test}: container attached after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let base = url(primary.addr);
    curl_request_shapes(&topo, dir.path(), &base, 200_000, 100_000);
    // Five keep-alive requests on one connection.
    let urls: Vec<String> = (1..=5).map(|i| format!("{base}/keep/{i}")).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    curl_ok(&topo, &refs);
    const SENT: usize = 8;

    let sent = primary.wait_for(SENT, Duration::from_millis(200), Duration::from_secs(10));
    assert_eq!(sent.len(), SENT, "the primary served every request");
    let got = mirror.wait_for(SENT, Duration::from_millis(500), Duration::from_secs(30));
    assert_same_requests("image", &sent, &got);

    // podman stop: SIGTERM (the image's stop signal), SIGKILL only after 30 s.
    let stopping = Instant::now();
    let stop = podman()
        .args(["stop", "--time", "30", &name])
        .output()
        .expect("podman stop");
    assert!(
        stop.status.success(),
        "podman stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let status = run.wait_timeout(Duration::from_secs(40));
    let stopped_in = stopping.elapsed();
    let log = log();
    // 0, not 137 (SIGKILL after the grace time) or 143 (SIGTERM not handled).
    assert!(status.success(), "container exit {status}: {log}");
    assert!(
        stopped_in < Duration::from_secs(20),
        "stop took {stopped_in:?}: {log}"
    );
    let summary = parse_summary(&std::fs::read_to_string(&out_path).unwrap_or_default());
    summary.assert_kernel_balanced();
    let table = MirrorTable::parse(&log);
    assert_eq!(table.captured, SENT as u64, "captured every request: {log}");
    let row = table.row("shadow");
    assert_eq!(row.sent, SENT as u64, "{row:?}");
    assert_eq!(
        row.status[0], SENT as u64,
        "every copy answered 2xx: {row:?}"
    );
    assert!(row.balanced(), "{row:?}");
    eprintln!(
        "{test}: {SENT} requests byte-identical at the mirror; stopped in {:.1} s; summary: {}",
        stopped_in.as_secs_f64(),
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.contains("records="))
            .unwrap_or("")
    );
    // `--rm`: nothing left behind.
    drop(container);
    assert!(
        !podman()
            .args(["container", "exists", &name])
            .status()
            .is_ok_and(|s| s.success()),
        "container {name} left behind"
    );
}
