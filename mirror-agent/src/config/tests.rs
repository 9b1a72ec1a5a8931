use super::*;
use crate::cli::Cli;
use crate::replay::rewrite::HostMode;
use clap::Parser;

fn args(flags: &[&str]) -> RunArgs {
    let mut argv = vec!["mirror-agent"];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).expect("flags parse").run
}

fn load(flags: &[&str], yaml: &str) -> Result<Settings, ConfigError> {
    Settings::from_parts(&args(flags), Some((Path::new("agent.yaml"), yaml)))
}

fn err(flags: &[&str], yaml: Option<&str>) -> String {
    let r = match yaml {
        Some(y) => load(flags, y),
        None => Settings::from_parts(&args(flags), None),
    };
    let e = r.expect_err("expected an error").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// Traefik's documented TraefikService example, verbatim, plus the interface.
const TRAEFIK_EXAMPLE: &str = "\
apiVersion: traefik.io/v1alpha1
kind: TraefikService
metadata:
  name: app-multi-mirror
  namespace: default
spec:
  mirroring:
    name: app-stable
    port: 80
    mirrors:
      - name: app-v2
        port: 80
        percent: 100
      - name: app-v3
        port: 80
        percent: 50
interface: eth0
";

#[test]
fn traefik_kubernetes_example() {
    let s = load(&[], TRAEFIK_EXAMPLE).unwrap();
    assert_eq!(s.iface.as_deref(), Some("eth0"));
    assert_eq!(s.ports, vec![80], "the primary's port is captured");
    assert_eq!(s.primary.as_deref(), Some("app-stable"));
    assert_eq!(s.capture_percent, 100.0);
    let m = &s.replay.mirrors;
    assert_eq!(m.len(), 2);
    assert_eq!(
        (
            m[0].name.as_str(),
            m[0].host.as_str(),
            m[0].port,
            m[0].percent
        ),
        ("app-v2", "app-v2", 80, 100.0)
    );
    assert_eq!(
        (
            m[1].name.as_str(),
            m[1].host.as_str(),
            m[1].port,
            m[1].percent
        ),
        ("app-v3", "app-v3", 80, 50.0)
    );
    assert_eq!(s.replay.capture_percent, 100.0);
    assert_eq!(s.replay.queue_size, crate::replay::DEFAULT_QUEUE_SIZE);
    assert!(s.replay.rewrite.mirror_body);
}

#[test]
fn bare_mirroring_block_with_agent_settings() {
    let yaml = "\
mirroring: {name: app-stable, port: 80, mirrors: [{name: app-v2, port: 80, percent: 100}, {name: app-v3, port: 80, percent: 50}]}
interface: eth0
mirrors_note: x
";
    // Unknown top-level key is refused, with its line.
    let e = err(&[], Some(yaml));
    assert!(
        e.starts_with("config agent.yaml: line 3 column 1: unknown field `mirrors_note`"),
        "{e}"
    );
    let yaml = yaml.replace("mirrors_note: x\n", "");
    let yaml = format!(
        "{yaml}hostMode: suffix\nstrip-headers: [Authorization]\nmirrorHeaders: ['X-Mirrored-By: mirror-agent']\n\
         queueSize: 10\ntimeoutMs: 250\nmaxQueueBytes: 4096\nmethods: [GET]\ncapturePercent: 100\n"
    );
    let s = load(&[], &yaml).unwrap();
    assert_eq!(s.replay.mirrors.len(), 2);
    assert_eq!(s.replay.rewrite.host, HostMode::Suffix("-shadow".into()));
    assert_eq!(
        s.replay.rewrite.strip_headers,
        vec!["Authorization".to_string()]
    );
    assert_eq!(
        s.replay.rewrite.set_headers,
        vec![("X-Mirrored-By".into(), "mirror-agent".into())]
    );
    assert_eq!(
        (s.replay.queue_size, s.replay.timeout),
        (10, Duration::from_millis(250))
    );
}

#[test]
fn traefik_file_provider_shape() {
    let yaml = "\
http:
  routers:
    r: {rule: \"Host(`x`)\", service: mirrored-api}
  services:
    mirrored-api:
      mirroring:
        service: appv1
        mirrorBody: false
        maxBodySize: 1024
        mirrors:
          - name: appv2@file
            percent: 10
    appv1:
      loadBalancer:
        servers:
          - url: http://10.0.0.4:8080/
    appv2:
      loadBalancer:
        servers:
          - url: http://10.0.0.5:9090/
";
    let s = load(&[], yaml).unwrap();
    assert_eq!(s.ports, vec![8080]);
    let m = &s.replay.mirrors[0];
    assert_eq!(
        (m.host.as_str(), m.port, m.percent),
        ("10.0.0.5", 9090, 10.0)
    );
    assert_eq!(s.capture_percent, 10.0, "largest mirror percent");
    assert!(!s.replay.rewrite.mirror_body);
    assert_eq!(s.replay.rewrite.max_body_size, Some(1024));
}

#[test]
fn mirror_host_url_and_namespace() {
    let yaml = "\
mirroring:
  name: app
  port: 8080
  mirrors:
    - {name: a, port: 81, host: 10.1.2.3}
    - {name: b, url: 'http://[::1]:82'}
    - {name: c, port: 83, namespace: shadow}
";
    let s = load(&[], yaml).unwrap();
    let hp: Vec<_> = s
        .replay
        .mirrors
        .iter()
        .map(|m| (m.host.as_str(), m.port))
        .collect();
    assert_eq!(hp, vec![("10.1.2.3", 81), ("::1", 82), ("c.shadow", 83)]);
}

#[test]
fn flags_override_the_file() {
    let s = load(
        &[
            "--mirror",
            "http://127.0.0.1:9000,name=local,percent=30",
            "--iface",
            "lo",
            "--port",
            "8080",
            "--queue-size",
            "7",
            "--mirror-body=false",
            "--host-mode",
            "mirror",
            "--ordering",
            "none",
        ],
        &format!(
            "{TRAEFIK_EXAMPLE}queueSize: 100\nmirrorBody: true\nmaxConnections: 3\nordering: connection\n"
        ),
    )
    .unwrap();
    assert_eq!(s.iface.as_deref(), Some("lo"));
    assert_eq!(s.ports, vec![8080]);
    assert_eq!(
        s.replay.mirrors.len(),
        1,
        "--mirror replaces the file's mirrors"
    );
    assert_eq!(s.replay.mirrors[0].name, "local");
    assert_eq!(s.capture_percent, 30.0);
    assert_eq!(s.replay.queue_size, 7);
    assert_eq!(
        s.replay.max_connections, 3,
        "not given as a flag: the file's value"
    );
    assert!(!s.replay.rewrite.mirror_body);
    assert_eq!(s.replay.rewrite.host, HostMode::Mirror);
    assert!(
        !s.replay.ordered,
        "--ordering none over the file's connection"
    );
    let s = load(&[], &format!("{TRAEFIK_EXAMPLE}ordering: none\n")).unwrap();
    assert!(!s.replay.ordered, "the file's ordering");
}

#[test]
fn file_errors_name_line_and_field() {
    let bad = |from: &str, to: &str| TRAEFIK_EXAMPLE.replace(from, to);
    let cases = [
        (
            bad("percent: 50", "percent: 150"),
            "line 16",
            "spec.mirroring.mirrors[1].percent: percent 150 is not between 0 and 100",
        ),
        (
            bad("percent: 50", "percnt: 50"),
            "line 16",
            "unknown field `percnt`",
        ),
        (
            bad(
                "        port: 80\n        percent: 100",
                "        port: http\n        percent: 100",
            ),
            "line 12",
            "named port `http` is not supported",
        ),
        (
            bad("    port: 80\n    mirrors", "    port: 0\n    mirrors"),
            "line 9",
            "port 0 is not in 1-65535",
        ),
        (
            bad("interface: eth0", "interface: [eth0"),
            "line",
            "interface",
        ),
        (
            bad(
                "      - name: app-v3\n        port: 80\n",
                "      - name: app-v3\n",
            ),
            "line 14",
            "spec.mirroring.mirrors[1]: mirror `app-v3` has no port",
        ),
        (
            format!("{TRAEFIK_EXAMPLE}capturePercent: 101\n"),
            "line 18",
            "capture percent 101 is not in [0, 100]",
        ),
        (
            format!("{TRAEFIK_EXAMPLE}mirrorHeaders: ['X bad: 1']\n"),
            "line 18",
            "bad header `X bad: 1`",
        ),
        (
            bad(
                "name: app-v3\n        port: 80",
                "name: app-v3\n        url: ftp://x:443",
            ),
            "line 15",
            "scheme `ftp` is not supported",
        ),
        (
            // A valid mirror name that is not a host name, used as the host.
            bad("name: app-v3", "name: app@v3"),
            "line 14",
            "not a host name",
        ),
    ];
    for (yaml, line, want) in cases {
        let e = err(&[], Some(&yaml));
        assert!(e.starts_with("config agent.yaml"), "{e}");
        assert!(e.contains(line), "want {line}: {e}");
        assert!(e.contains(want), "want {want}: {e}");
    }
    let e = Settings::load(&args(&["--config", "/nonexistent/agent.yaml"]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("config /nonexistent/agent.yaml: No such file"),
        "{e}"
    );
}

#[test]
fn bad_flag_values_are_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--mirror", "ftp://x:443"],
            "--mirror: mirror `ftp://x:443`: scheme `ftp` is not supported",
        ),
        (
            &["--mirror", "http://x,weight=2"],
            "unknown option `weight`",
        ),
        (&["--mirror", "http://x,percent=101"], "percent `101`"),
        (
            &[
                "--mirror",
                "http://a:1,name=x",
                "--mirror",
                "http://b:1,name=x",
            ],
            "two mirrors are named `x`",
        ),
        (
            &["--mirror", "http://a:1", "--capture-percent", "50"],
            "--capture-percent: 50 is below mirror",
        ),
        (
            &["--capture-percent=-1"],
            "--capture-percent: -1 is not in [0, 100]",
        ),
        (&["--port", "70000"], "--port: 70000 is not in 1-65535"),
        (&["--queue-size", "0"], "--queue-size: must be at least 1"),
        // Every size flag has an upper bound (1e9 header slots allocated 32 GB per head).
        (
            &["--max-headers", "1000000000"],
            "--max-headers: 1000000000 is not in 1..=4096",
        ),
        (
            &["--max-head-bytes", "1"],
            "--max-head-bytes: 1 is not in 1024..=16777216",
        ),
        (
            &["--max-flows", "0"],
            "--max-flows: 0 is not in 1..=16777216",
        ),
        (
            &["--memory-budget", "1099511627776"],
            "--memory-budget: 1099511627776 is not in",
        ),
        (
            &["--flow-buffer", "1"],
            "--flow-buffer: 1 is not in 4096..=",
        ),
        (
            &["--gap-timeout-ms", "0"],
            "--gap-timeout-ms: 0 is not in 1..=600000",
        ),
        (
            &["--flow-idle-secs", "0"],
            "--flow-idle-secs: 0 is not in 1..=86400",
        ),
        (
            &["--queue-size", "100000000"],
            "--queue-size: 100000000 is not in 1..=1048576",
        ),
        (
            &["--max-connections", "100000"],
            "--max-connections: 100000 is not in 1..=4096",
        ),
        (
            &["--timeout-ms", "99999999999"],
            "--timeout-ms: 99999999999 is not in 1..=3600000",
        ),
        (
            &["--max-queue-bytes", "99999999999999"],
            "--max-queue-bytes: 99999999999999 is not in",
        ),
        (
            &["--compare", "--compare-body-limit", "999999999"],
            "--compare-body-limit: at most 16777216",
        ),
        (
            &["--compare", "--diff-log-rate", "999999999"],
            "--diff-log-rate: at most 100000",
        ),
        (&["--host-mode", "proxy"], "bad host mode `proxy`"),
        (&["--mirror-header", "NoColon"], "bad header `NoColon`"),
        (&["--strip-header", "a b"], "bad header name `a b`"),
        (&["--path-allow", "(x"], "bad path regex `(x`"),
        (&["--header-match", "x"], "bad header match `x`"),
        (
            &["--from", "a.jsonl", "--pcap", "b.pcap"],
            "--from: replays a recording; it cannot be combined with --pcap",
        ),
        (&["--speed=-1"], "--speed: -1 is not a number >= 0"),
        (
            &["--ordering", "fifo"],
            "--ordering: \"fifo\" is not connection or none",
        ),
    ];
    for (flags, want) in cases {
        let e = err(flags, None);
        assert!(e.contains(want), "{flags:?}: want {want}: {e}");
    }
}

#[test]
fn defaults_without_file() {
    let s = Settings::from_parts(
        &args(&[
            "--mirror",
            "http://10.0.0.5:8080,name=app-v2",
            "--mirror",
            "http://10.0.0.6:8080,percent=50,name=app-v3",
        ]),
        None,
    )
    .unwrap();
    assert_eq!(s.capture_percent, 100.0);
    assert_eq!(s.replay.mirrors[1].percent, 50.0);
    assert_eq!(s.replay.timeout, crate::replay::DEFAULT_TIMEOUT);
    assert_eq!(
        s.replay.max_connections,
        crate::replay::DEFAULT_MAX_CONNECTIONS
    );
    assert!(
        s.replay.ordered,
        "in order per client connection by default"
    );
    assert!(s.ports.is_empty());
}

fn mirror_flags(mirrors: &[String], port: u16) -> Settings {
    let mut argv: Vec<String> = Vec::new();
    for m in mirrors {
        argv.extend(["--mirror".into(), m.clone()]);
    }
    argv.extend(["--port".into(), port.to_string()]);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    Settings::from_parts(&args(&refs), None).unwrap()
}

/// A real listener on 127.0.0.1 with a free port; the listener logic itself is tested with
/// synthetic /proc content in `listeners`.
fn listen(ip: &str, port: u16) -> std::net::TcpListener {
    std::net::TcpListener::bind((ip, port)).unwrap()
}

#[tokio::test]
async fn mirror_that_is_the_primary_is_refused() {
    let primary = listen("127.0.0.1", 0);
    let port = primary.local_addr().unwrap().port();
    let s = mirror_flags(&[format!("http://127.0.0.1:{port},name=me")], port);
    let e = s.check_not_primary().await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "mirror `me` (127.0.0.1:{port}) is the primary itself: it reaches 127.0.0.1:{port}, \
             the only listener on captured port {port}"
        )
    );
    // Another port, or a non-local address on the port, is fine. 192.0.2.1 (TEST-NET-1) is only
    // bound, never sent to.
    let s = mirror_flags(
        &[
            format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1)),
            format!("http://192.0.2.1:{port}"),
        ],
        port,
    );
    s.check_not_primary().await.unwrap();
}

#[tokio::test]
async fn a_distinct_local_listener_on_the_captured_port_is_a_mirror() {
    let primary = listen("127.0.0.1", 0);
    let port = primary.local_addr().unwrap().port();
    let _mirror = listen("127.0.0.2", port);
    let s = mirror_flags(&[format!("http://127.0.0.2:{port},name=v2")], port);
    s.check_not_primary().await.unwrap();
    // An address nothing accepts at (a NAT target, or down) is not the primary either.
    let s = mirror_flags(&[format!("http://127.0.0.3:{port},name=v3")], port);
    s.check_not_primary().await.unwrap();
}

#[tokio::test]
async fn a_local_mirror_on_a_port_nothing_listens_on_is_refused() {
    // Bind and close to find a port that is (very likely) free.
    let port = listen("127.0.0.1", 0).local_addr().unwrap().port();
    let s = mirror_flags(&[format!("http://127.0.0.2:{port},name=early")], port);
    let e = s.check_not_primary().await.unwrap_err().to_string();
    assert!(e.contains("nothing listens on captured port"), "{e}");
}

#[tokio::test]
async fn a_mirror_at_the_named_primary_is_refused() {
    // The primary's name resolves to the mirror's address and port (even off the captured
    // ports: `--port` overrides the primary's).
    let yaml = "\
mirroring:
  name: localhost
  port: 9
  mirrors:
    - name: copy
      url: http://127.0.0.1:9
";
    let s = load(&["--port", "8080"], yaml).unwrap();
    assert_eq!(s.primary_endpoint, Some(("localhost".into(), 9)));
    let e = s.check_not_primary().await.unwrap_err().to_string();
    assert_eq!(
        e,
        "mirror `copy` (127.0.0.1:9) is the primary itself: the primary `localhost` resolves to it"
    );
    let file = TRAEFIK_EXAMPLE.replace("name: app-stable", "name: app-stable\n    namespace: prod");
    let s = load(&[], &file).unwrap();
    assert_eq!(s.primary_endpoint, Some(("app-stable.prod".into(), 80)));
}

#[test]
fn two_mirroring_services_are_ambiguous() {
    let yaml = "\
http:
  services:
    a: {mirroring: {service: x, mirrors: [{name: m, port: 1}]}}
    b: {mirroring: {service: y, mirrors: [{name: n, port: 2}]}}
";
    let e = err(&[], Some(yaml));
    assert!(
        e.contains("2 services have a mirroring block (a, b)"),
        "{e}"
    );
}

#[test]
fn traefik_default_max_body_size_is_unlimited() {
    let yaml = TRAEFIK_EXAMPLE.replace(
        "    port: 80\n    mirrors",
        "    port: 80\n    maxBodySize: -1\n    mirrors",
    );
    assert_eq!(load(&[], &yaml).unwrap().replay.rewrite.max_body_size, None);
    let yaml = TRAEFIK_EXAMPLE.replace(
        "    port: 80\n    mirrors",
        "    port: 80\n    maxBodySize: -2\n    mirrors",
    );
    assert!(err(&[], Some(&yaml)).contains("maxBodySize -2: expected bytes or -1"));
}

/// Live capture's settings from the flags, as live mode checks them before attaching.
fn live_check(flags: &[&str]) -> Result<crate::capture::ebpf::LiveConfig, ConfigError> {
    Settings::load(&args(flags)).and_then(|s| s.live.capture())
}

fn usage_message(args: &[&str]) -> String {
    match live_check(args) {
        Err(e) => {
            assert_eq!(ConfigError::EXIT_CODE, 2);
            let msg = e.to_string();
            assert_eq!(msg.lines().count(), 1, "one line: {msg}");
            msg
        }
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

#[test]
fn rejects_bad_flags_with_one_line() {
    assert!(usage_message(&["--port", "80"]).contains("--iface"));
    assert!(usage_message(&["--iface", "lo"]).contains("no ports"));
    assert!(
        usage_message(&["--iface", "lo", "--port", "0"]).contains("--port: 0 is not in 1-65535")
    );
    assert!(
        usage_message(&["--iface", "lo", "--port", "65536"])
            .contains("--port: 65536 is not in 1-65535")
    );
    assert!(
        usage_message(&[
            "--iface",
            "lo",
            "--port",
            "80",
            "--capture-percent",
            "100.5"
        ])
        .contains("--capture-percent")
    );
    assert!(
        usage_message(&[
            "--iface",
            "lo",
            "--port",
            "80",
            "--ring-buffer-size",
            "12288"
        ])
        .contains("power of two")
    );
    assert!(
        usage_message(&["--iface", "lo", "--port", "80", "--duration", "0"]).contains("--duration")
    );
    assert!(
        usage_message(&["--iface", "lo", "--port", "80", "--capture-copy", "twice"]).contains(
            "MIRROR_CAPTURE_COPY (--capture-copy): `twice` is not auto, reserve or scratch"
        )
    );
}

#[test]
fn capture_copy_defaults_to_auto_and_can_be_forced() {
    use crate::capture::ebpf::CopyPolicy;
    let live = |extra: &[&str]| {
        let mut flags = vec!["--iface", "lo", "--port", "80"];
        flags.extend_from_slice(extra);
        live_check(&flags).expect("valid flags").copy
    };
    assert_eq!(live(&[]), CopyPolicy::Auto);
    assert_eq!(live(&["--capture-copy", "reserve"]), CopyPolicy::Reserve);
    assert_eq!(live(&["--capture-copy", "scratch"]), CopyPolicy::Scratch);
}

#[test]
fn too_many_ports_rejected_and_duplicates_merged() {
    let many: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
    let mut args = vec!["--iface", "lo", "--port"];
    let joined = many.join(",");
    args.push(&joined);
    assert!(usage_message(&args).contains("65 ports given, at most 64"));
    let s = live_check(&["--iface", "lo", "--port", "80,81,80"]).unwrap();
    assert_eq!(s.ports, vec![80, 81], "duplicates merged");
}

#[test]
fn deep_or_large_config_files_are_refused_before_parsing() {
    // Flow style 100k deep: took 32 s in the YAML parser; now one line at once.
    let deep = format!(
        "mirroring: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = load(&[], &deep).unwrap_err().to_string();
    assert!(e.contains("nested deeper than 64 levels"), "{e}");
    assert!(e.contains("line 1"), "{e}");
    // Compact block entries on one line nest too.
    let compact = format!("x:\n  {}a\n", "- ".repeat(10_000));
    let e = load(&[], &compact).unwrap_err().to_string();
    assert!(e.contains("nested deeper"), "{e}");
    // Brackets in comments do not count; ordinary configs pass.
    let ok = format!(
        "# {}\nmirroring: {{name: app, port: 80, mirrors: [{{name: m, port: 81}}]}}\n",
        "[".repeat(100)
    );
    load(&[], &ok).unwrap();
    // A file over the size bound is refused by size, without reading it all.
    let dir = std::env::temp_dir().join(format!("mirror-cfg-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.yaml");
    std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
    let e = Settings::load(&args(&["--config", big.to_str().unwrap()]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mirror_names_in_the_file_are_checked_like_the_flags() {
    for (name, why) in [
        ("\"app v2\"", "may hold only"),
        ("\"a\\nforged log line\"", "may hold only"),
        (&"n".repeat(64), "1 to 63"),
    ] {
        let yaml = format!(
            "mirroring:\n  name: app\n  port: 80\n  mirrors:\n    - name: {name}\n      port: 81\n      host: 10.0.0.5\n"
        );
        let e = load(&[], &yaml).unwrap_err().to_string();
        assert!(e.contains(why), "{name}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn check_config_lists_what_would_run_and_needs_an_interface_for_live_mode() {
    let s = load(&[], TRAEFIK_EXAMPLE).unwrap();
    let text = s.check().unwrap();
    assert!(
        text.starts_with("mode: live capture on interface eth0"),
        "{text}"
    );
    assert!(text.contains("ports: 80"), "{text}");
    assert!(
        text.contains("mirror app-v2: http://app-v2:80 at 100%"),
        "{text}"
    );
    assert!(
        text.contains("mirror app-v3: http://app-v3:80 at 50%"),
        "{text}"
    );
    let no_iface = TRAEFIK_EXAMPLE.replace("interface: eth0\n", "");
    let e = load(&[], &no_iface)
        .unwrap()
        .check()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--iface"), "{e}");
    let pcap = load(&["--pcap", "x.pcap"], &no_iface)
        .unwrap()
        .check()
        .unwrap();
    assert!(pcap.starts_with("mode: pcap file x.pcap"), "{pcap}");
}

#[test]
fn cgroups_replace_the_interface_from_flags_or_file() {
    use crate::capture::ebpf::Target;
    let c = live_check(&[
        "--cgroup",
        "/sys/fs/cgroup/a,/sys/fs/cgroup/b",
        "--port",
        "80",
    ])
    .expect("valid flags");
    assert_eq!(
        c.target,
        Target::Cgroups(vec!["/sys/fs/cgroup/a".into(), "/sys/fs/cgroup/b".into()])
    );
    assert_eq!(
        c.target.to_string(),
        "cgroup /sys/fs/cgroup/a,/sys/fs/cgroup/b"
    );
    let c = live_check(&["--iface", "lo", "--port", "80"]).unwrap();
    assert_eq!(c.target, Target::Interfaces(vec!["lo".into()]));
    assert_eq!(
        usage_message(&[
            "--iface",
            "lo",
            "--cgroup",
            "/sys/fs/cgroup/a",
            "--port",
            "80"
        ]),
        "--cgroup: chooses traffic by process, --iface by interface: give one of them"
    );
    assert!(usage_message(&["--port", "80"]).contains("live mode needs --iface or --cgroup"));
    let yaml = "cgroups: [/sys/fs/cgroup/kubepods.slice/pod1]\nports: [8080]\n";
    let s = load(&[], yaml).expect("config file with cgroups");
    assert_eq!(
        s.live.capture().unwrap().target,
        Target::Cgroups(vec!["/sys/fs/cgroup/kubepods.slice/pod1".into()])
    );
    // A flag replaces the file's list.
    let s = load(&["--cgroup", "/sys/fs/cgroup/other"], yaml).unwrap();
    assert_eq!(
        s.live.capture().unwrap().target,
        Target::Cgroups(vec!["/sys/fs/cgroup/other".into()])
    );
    assert!(
        s.check()
            .unwrap()
            .contains("mode: live capture on cgroup /sys/fs/cgroup/other")
    );
}

/// The settings of live mirroring on `lo` port 80 to one mirror, with `flags` added.
fn live_mirroring(flags: &[&str]) -> Settings {
    let mut all = vec![
        "--iface",
        "lo",
        "--port",
        "80",
        "--mirror",
        "http://127.0.0.1:9",
    ];
    all.extend_from_slice(flags);
    Settings::load(&args(&all)).unwrap()
}

#[test]
fn bodies_are_omitted_only_when_no_consumer_needs_them() {
    let omit = |flags: &[&str]| live_mirroring(flags).pipeline.http.omit_bodies_over;
    assert_eq!(omit(&[]), None, "bodies mirrored without a bound");
    assert_eq!(omit(&["--max-body-size", "1000"]), Some(1000));
    assert_eq!(omit(&["--mirror-body", "false"]), Some(0));
    assert_eq!(
        omit(&["--mirror-body", "false", "--record", "/dev/null"]),
        None
    );
    assert_eq!(omit(&["--mirror-body", "false", "--compare"]), None);
    // The kernel is told to skip such bodies in live capture, unless the packets are written.
    let skips = |flags: &[&str]| {
        let mut all = vec![
            "--port",
            "80",
            "--mirror",
            "http://127.0.0.1:9",
            "--mirror-body",
            "false",
        ];
        all.extend_from_slice(flags);
        let s = Settings::load(&args(&all)).unwrap();
        assert_eq!(s.live.skip_bodies, s.pipeline.skip_omitted_bodies);
        s.live.skip_bodies
    };
    assert!(skips(&["--iface", "lo"]));
    assert!(!skips(&["--iface", "lo", "--write-pcap", "/tmp/x.pcap"]));
    assert!(!skips(&["--pcap", "x.pcap"]));
}

#[test]
fn the_kernel_reads_the_precise_clock_only_when_an_output_shows_the_stamps() {
    let precise = |flags: &[&str]| live_mirroring(flags).live.precise_clock;
    assert!(!precise(&[]), "mirroring alone: the coarse clock");
    assert!(precise(&["--compare"]), "the primary's latency");
    assert!(precise(&["--record", "/dev/null"]));
    assert!(precise(&["--write-pcap", "/tmp/x.pcap"]));
}

#[test]
fn https_mirrors_from_the_config_file_read_their_files_at_load() {
    let dir = std::env::temp_dir().join(format!("mirror-tls-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = |extra: &str| {
        format!(
            "interface: lo\nports: [80]\nmirroring:\n  name: app\n  port: 80\n  mirrors:\n    - name: shadow\n      url: https://shadow.example:8443\n{extra}"
        )
    };
    // insecure needs no file; the check shows the scheme.
    let s = load(
        &[],
        &yaml("      insecure: true\n      sni: shadow.internal\n"),
    )
    .unwrap();
    let tls = s.replay.mirrors[0].tls.clone().unwrap();
    assert!(tls.insecure);
    assert_eq!(tls.sni.as_deref(), Some("shadow.internal"));
    assert!(s.replay.tls_clients.contains_key("shadow"));
    assert!(
        s.check()
            .unwrap()
            .contains("mirror shadow: https://shadow.example:8443 at 100%")
    );
    // A CA file that is not there: one line naming the mirror and the file.
    let e = load(&[], &yaml("      ca: /nonexistent/ca.pem\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("mirror `shadow`: ca /nonexistent/ca.pem: "),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // TLS fields need an https URL; cert and key go together.
    let plain = yaml("").replace("https://", "http://") + "      ca: /x.pem\n";
    let e = load(&[], &plain).unwrap_err().to_string();
    assert!(e.contains("need an https:// URL"), "{e}");
    let e = load(&[], &yaml("      cert: /c.pem\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cert and key go together"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sampling_is_independent_unless_asked_to_be_consistent() {
    use crate::replay::sampler::Sampling;
    let sampling = |flags: &[&str], yaml: &str| {
        let mut all = vec!["--port", "80", "--mirror", "http://127.0.0.1:9"];
        all.extend_from_slice(flags);
        load(&all, yaml).map(|s| s.replay.sampling)
    };
    assert_eq!(sampling(&[], "").unwrap(), Sampling::Independent);
    assert_eq!(
        sampling(&["--sampling", "consistent"], "").unwrap(),
        Sampling::Consistent
    );
    assert_eq!(
        sampling(&[], "sampling: consistent\n").unwrap(),
        Sampling::Consistent
    );
    let e = sampling(&["--sampling", "same"], "")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--sampling: \"same\" is not independent or consistent");
}

#[test]
fn a_baseline_mirror_needs_compare_is_unique_and_makes_sampling_consistent() {
    use crate::replay::sampler::Sampling;
    let base = [
        "--iface",
        "lo",
        "--port",
        "80",
        "--mirror",
        "http://127.0.0.1:9001,name=v1b,role=baseline,percent=50",
        "--mirror",
        "http://127.0.0.1:9002,name=v2,percent=50",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        all
    }
    let with = |extra: &[&'static str]| with(&base, extra);
    let s = load(&with(&["--compare"]), "").unwrap();
    assert_eq!(s.replay.mirrors[0].role, MirrorRole::Baseline);
    assert_eq!(s.replay.mirrors[1].role, MirrorRole::Candidate);
    assert_eq!(
        s.replay.sampling,
        Sampling::Consistent,
        "default with a baseline"
    );
    let check = s.check().unwrap();
    assert!(
        check.contains("mirror v1b: http://127.0.0.1:9001 at 50% (baseline)"),
        "{check}"
    );
    assert!(check.contains("sampling: consistent"), "{check}");
    // Asked for explicitly, independent stays.
    let s = load(&with(&["--compare", "--sampling", "independent"]), "").unwrap();
    assert_eq!(s.replay.sampling, Sampling::Independent);
    assert_eq!(
        err(&with(&[]), None),
        "role=baseline: needs --compare (the baseline's answers teach the comparison its noise)"
    );
    let two = with(&[
        "--compare",
        "--mirror",
        "http://127.0.0.1:9003,name=b2,role=baseline",
    ]);
    assert_eq!(
        err(&two, None),
        "role=baseline: one mirror at most may be the baseline"
    );
    // The config file's mirror entries take `role` too.
    let yaml = "interface: lo\nports: [80]\nmirroring:\n  name: app\n  port: 80\n  mirrors:\n    \
                - name: v1b\n      url: http://127.0.0.1:9001\n      role: baseline\n    \
                - name: v2\n      url: http://127.0.0.1:9002\n";
    let s = load(&["--compare"], yaml).unwrap();
    assert_eq!(s.replay.mirrors[0].role, MirrorRole::Baseline);
    let e = err(
        &["--compare"],
        Some(&yaml.replace("role: baseline", "role: twin")),
    );
    assert!(
        e.contains("role `twin` is not baseline or candidate"),
        "{e}"
    );
}

#[test]
fn mirror_protocol_from_flag_and_file() {
    let s = load(
        &[
            "--iface",
            "lo",
            "--port",
            "80",
            "--mirror",
            "http://127.0.0.1:9001,protocol=h2",
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        s.replay.mirrors[0].protocol,
        crate::replay::spec::MirrorProtocol::Http2
    );
    let check = s.check().unwrap();
    assert!(
        check.contains("mirror 127.0.0.1:9001: http://127.0.0.1:9001 at 100%, protocol h2"),
        "{check}"
    );
    let yaml = "interface: lo\nports: [80]\nmirroring:\n  name: app\n  port: 80\n  mirrors:\n    \
                - name: v2\n      url: http://127.0.0.1:9002\n      protocol: h1\n";
    let s = load(&[], yaml).unwrap();
    assert_eq!(
        s.replay.mirrors[0].protocol,
        crate::replay::spec::MirrorProtocol::Http1
    );
    let e = err(&[], Some(&yaml.replace("protocol: h1", "protocol: spdy")));
    assert!(e.contains("protocol `spdy` is not auto, h1 or h2"), "{e}");
}

#[test]
fn tls_flags_name_files_that_exist() {
    use crate::capture::ebpf::tls::TlsSetting;
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        ["--iface", "lo", "--port", "443"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect()
    }
    assert!(
        usage_message(&with(&["--tls", "/no/such/libssl.so.3"])).contains(
            "--tls: `/no/such/libssl.so.3` is not off, auto, follow or an existing libssl file"
        )
    );
    assert!(
        usage_message(&with(&["--tls-binary", "/no/such/server"]))
            .contains("--tls-binary: /no/such/server: no such file")
    );
    let tls = |extra: &[&str]| live_check(&with(extra)).expect("valid flags").tls;
    assert_eq!(tls(&[]), TlsSetting::Off);
    assert_eq!(tls(&["--tls", "auto"]), TlsSetting::Auto);
    let follow = |extra: &[&str]| live_check(&with(extra)).expect("valid flags").tls_follow;
    assert!(!follow(&["--tls", "auto"]));
    assert!(follow(&["--tls", "follow"]));
    assert_eq!(tls(&["--tls", "follow"]), TlsSetting::Auto);
    let wait = |extra: &[&str]| live_check(&with(extra)).expect("valid flags").tls_open_wait;
    assert_eq!(wait(&[]), Some(Duration::from_secs(60)), "the default");
    assert_eq!(
        wait(&["--tls-open-wait-secs", "5"]),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        wait(&["--tls-open-wait-secs", "0"]),
        None,
        "as long as they stay open"
    );
    assert!(
        usage_message(&with(&["--tls-open-wait-secs", "86401"]))
            .contains("--tls-open-wait-secs: 86401 is not in 0..=86400")
    );
    // Any existing file is taken (whether it has the SSL symbols shows at attach).
    let this = std::env::current_exe().unwrap();
    let path = this.to_str().unwrap();
    assert_eq!(tls(&["--tls", path]), TlsSetting::Files(vec![this.clone()]));
    assert_eq!(
        tls(&["--tls-binary", path]),
        TlsSetting::Files(vec![this.clone()])
    );
    assert_eq!(
        tls(&["--tls", "auto", "--tls-binary", path]),
        TlsSetting::AutoAnd(vec![this])
    );
}

#[test]
fn threads_are_auto_or_a_bounded_count() {
    let base = ["--iface", "lo", "--port", "80"];
    let threads = |extra: &[&str]| {
        Settings::load(&args(&[&base[..], extra].concat()))
            .expect("valid flags")
            .threads
    };
    let auto = if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
        1
    } else {
        super::THREADS_MANY_CPUS
    };
    assert_eq!(threads(&[]), auto, "auto by default");
    assert_eq!(threads(&["--threads", "AUTO"]), auto);
    assert_eq!(threads(&["--threads", "1"]), 1);
    assert_eq!(threads(&["--threads", "64"]), 64);
    let err = |extra: &[&str]| {
        let e = Settings::load(&args(&[&base[..], extra].concat()))
            .expect_err("refused")
            .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    assert!(err(&["--threads", "0"]).contains("--threads: 0 is not in 1..=64"));
    assert!(err(&["--threads", "65"]).contains("--threads: 65 is not in 1..=64"));
    assert!(err(&["--threads", "two"]).contains("--threads: \"two\" is neither auto nor a number"));
}
