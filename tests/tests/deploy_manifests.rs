//! The Kubernetes manifests in `deploy/` are valid, and so is what they configure.
//!
//! - Every object validates with `kubernetes-validate --strict` (PyPI; `cargo xtask setup`
//!   installs it) against the Kubernetes version it defaults to, the newest it knows. A manifest
//!   with a misspelt field must fail, so the validator is shown to validate.
//! - The ConfigMap's mirroring file, with the DaemonSet's own arguments, passes the agent's
//!   `--check-config` (exit 0, the mirrors it names listed); a broken copy of it fails with exit
//!   status 2 and one line naming the problem. Nothing is attached: no privileges needed.
//! - The DaemonSet keeps least privilege: no `privileged`, every capability dropped but BPF and
//!   NET_ADMIN, no privilege escalation, a read-only root file system, resource limits, probes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_yaml::Value;

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mirror-agent.yaml")
}

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(manifest()).expect("read deploy/mirror-agent.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/mirror-agent.yaml"))
}

/// `python3 -m kubernetes_validate ARGS`, or `None` (with the reason printed) when the tool is
/// missing and `MIRROR_REQUIRE_TOOLS` is not `1` (`cargo xtask test` sets it: setup installs it).
fn kubernetes_validate(args: &[&Path]) -> Option<Output> {
    let present = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let why = "kubernetes-validate is not installed (cargo xtask setup)";
        if std::env::var("MIRROR_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{why}");
        }
        eprintln!("SKIPPED manifest validation: {why}");
        return None;
    }
    Some(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(args)
            .output()
            .expect("run kubernetes-validate"),
    )
}

#[test]
fn every_object_validates_strictly_and_a_broken_one_does_not() {
    let Some(out) = kubernetes_validate(&[&manifest()]) else {
        return;
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate: {text}");
    for kind in [
        "namespace",
        "serviceaccount",
        "configmap",
        "service",
        "daemonset",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}/")),
            "{kind} not validated: {text}"
        );
    }
    // The validator must see a misspelt field in a container.
    let broken = std::env::temp_dir().join(format!("mirror-broken-{}.yaml", std::process::id()));
    let original = std::fs::read_to_string(manifest()).unwrap();
    std::fs::write(
        &broken,
        original.replace("imagePullPolicy:", "imagePulPolicy:"),
    )
    .unwrap();
    let out = kubernetes_validate(&[&broken]).expect("present above");
    let _ = std::fs::remove_file(&broken);
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs the agent with the DaemonSet's arguments, `--config` pointing at `config`.
fn check_config(config: &Path) -> Output {
    let docs = documents();
    let container = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .map(|a| match a.strip_prefix("--config=") {
            Some(_) => format!("--config={}", config.display()),
            None => a,
        })
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--config=")),
        "the DaemonSet does not read its ConfigMap: {args:?}"
    );
    Command::new(mirror_tests::agent::binary())
        .args(&args)
        .arg("--check-config")
        .env_remove("MIRROR_CHECK_CONFIG")
        .output()
        .expect("run mirror-agent --check-config")
}

#[test]
fn the_configmap_and_the_daemonset_arguments_pass_the_agents_own_check() {
    if !mirror_tests::agent::binary().is_file() {
        panic!(
            "agent binary {} missing (cargo build -p mirror-agent)",
            mirror_tests::agent::binary().display()
        );
    }
    let docs = documents();
    let configmap = kind(&docs, "ConfigMap");
    let file = configmap["data"]["config.yaml"]
        .as_str()
        .expect("ConfigMap data config.yaml");
    // The DaemonSet mounts that ConfigMap where --config points.
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == configmap["metadata"]["name"])
        .expect("a volume of the ConfigMap");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume mounted");
    assert_eq!(mount["mountPath"].as_str(), Some("/etc/mirror-agent"));

    let dir = mirror_tests::TempDir::new("deploy");
    let good = dir.path().join("config.yaml");
    std::fs::write(&good, file).unwrap();
    let out = check_config(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--check-config: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mirror app-v2: http://app-v2.shadow:8080 at 100%"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mirror app-v3: http://app-v3.shadow:8080 at 50%"),
        "{stdout}"
    );
    assert!(stdout.contains("ports: 8080"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, file.replace("percent: 50", "percent: 150")).unwrap();
    let out = check_config(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("percent"), "{stderr}");
}

#[test]
fn the_daemonset_keeps_least_privilege() {
    let docs = documents();
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let caps = |k: &str| -> Vec<String> {
        sc["capabilities"][k]
            .as_sequence()
            .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(caps("drop"), ["ALL"]);
    assert_eq!(caps("add"), ["BPF", "NET_ADMIN"]);
    // Explicit: the runtime's default profile would refuse bpf(2) (see the manifest's comment),
    // and tests/tests/image.rs runs the image with exactly these privileges.
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("Unconfined"));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(c[probe]["httpGet"]["path"].is_string(), "{probe}");
    }
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["memory"].is_string(),
            "resources.{k}.memory"
        );
    }
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    // The metrics Service selects the DaemonSet's pods.
    let svc = kind(&docs, "Service");
    assert_eq!(
        svc["spec"]["selector"],
        kind(&docs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    );
}
