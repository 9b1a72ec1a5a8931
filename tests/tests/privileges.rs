//! Privileged: least privilege in every mode. After attaching (live) or opening its input
//! (`--pcap`, `--from`), every thread of the agent holds only the capabilities its mode needs
//! (none with TCX on this kernel, CAP_NET_ADMIN with classic tc filters, which it removes at
//! exit), an empty bounding set, `no_new_privs`, and the seccomp filter, and still does its job:
//! captures, records, reads its counters and detaches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mirror_tests::agent::{Agent, binary, wait_detached};
use mirror_tests::oracle::start_recording_server;
use mirror_tests::process::ChildGuard;
use mirror_tests::scenario::curl_served;
use mirror_tests::{NetNs, TempDir, Topology, privileged_or_skip};

const PORT: u16 = 8080;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

/// The confinement fields of every thread of `pid`: thread id -> field -> value.
fn threads(pid: i32) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let task = task.expect("task entry");
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let fields = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| {
                [
                    "CapInh",
                    "CapPrm",
                    "CapEff",
                    "CapBnd",
                    "CapAmb",
                    "NoNewPrivs",
                    "Seccomp",
                ]
                .contains(k)
            })
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        out.insert(task.file_name().to_string_lossy().into_owned(), fields);
    }
    out
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).expect("capability mask")
}

/// Every thread holds exactly `caps` (effective and permitted), nothing inheritable, ambient or
/// in the bounding set, with `no_new_privs` and a seccomp filter.
fn assert_confined(pid: i32, caps: u64, what: &str) {
    let all = threads(pid);
    assert!(
        all.len() > 1,
        "{what}: the runtime's threads exist: {all:?}"
    );
    for (tid, f) in &all {
        let ctx = format!("{what}: thread {tid}: {f:?}");
        assert_eq!(hex(&f["CapEff"]), caps, "{ctx}");
        assert_eq!(hex(&f["CapPrm"]), caps, "{ctx}");
        assert_eq!(hex(&f["CapInh"]), 0, "{ctx}");
        assert_eq!(hex(&f["CapAmb"]), 0, "{ctx}");
        assert_eq!(hex(&f["CapBnd"]), 0, "{ctx}");
        assert_eq!(f["NoNewPrivs"], "1", "{ctx}");
        assert_eq!(f["Seccomp"], "2", "{ctx}: filter mode");
    }
}

#[test]
fn live_agent_keeps_only_what_its_attach_mode_needs() {
    if !privileged_or_skip("live_agent_keeps_only_what_its_attach_mode_needs") {
        return;
    }
    let dir = TempDir::new("privileges-live");
    let topo = Topology::new();
    let _server = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir.path());
    for (attach, caps) in [("tcx", 0), ("tc", CAP_NET_ADMIN)] {
        let record = dir.path().join(format!("{attach}.jsonl"));
        let args = [
            "--iface",
            &topo.server_if,
            "--port",
            "8080",
            "--attach",
            attach,
            "--record",
            record.to_str().unwrap(),
        ];
        let mut agent = Agent::start(&topo.server, &args, dir.path());
        assert_confined(agent.guard.pid(), caps, attach);
        assert!(
            agent.log().contains("privileges dropped"),
            "{}",
            agent.log()
        );
        // Still captures, records and reads its counters.
        curl_served(
            &topo,
            &[&format!("http://{}:{PORT}/confined", Topology::SERVER_V4)],
        );
        std::thread::sleep(Duration::from_millis(300));
        let (status, summary) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{attach}: {}", agent.log());
        assert!(summary.get("records") > 0, "{attach}: {summary:?}");
        let recorded = std::fs::read_to_string(&record).expect("recording");
        assert!(recorded.contains("/confined"), "{attach}: {recorded}");
        // Detached at exit, the tc filters with nothing but CAP_NET_ADMIN.
        wait_detached(&topo.server, &topo.server_if, Duration::from_secs(5));
    }
}

#[test]
fn offline_agent_keeps_nothing_but_a_low_port_bind() {
    if !privileged_or_skip("offline_agent_keeps_nothing_but_a_low_port_bind") {
        return;
    }
    // `--from` a FIFO: the agent opens it, confines itself, and waits for records while the
    // test looks at its threads.
    let dir = TempDir::new("privileges-from");
    let fifo = dir.path().join("records.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A metrics port below 1024 keeps CAP_NET_BIND_SERVICE (the endpoint binds after the drop).
    let metrics = "127.0.0.1:913";
    let mut cmd = std::process::Command::new(binary());
    cmd.arg("--from")
        .arg(&fifo)
        .args(["--mirror", "http://127.0.0.1:9,name=nowhere"])
        .args(["--metrics-addr", metrics])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut agent = ChildGuard::spawn("mirror-agent --from", &mut cmd);
    // Opening the write end blocks until the agent opened the read end.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads(agent.pid()).len() < 2 {
        assert!(Instant::now() < deadline, "the runtime did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_confined(agent.pid(), CAP_NET_BIND_SERVICE, "--from");
    let deadline = Instant::now() + Duration::from_secs(10);
    let scraped = loop {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics}/metrics")])
            .output()
            .expect("curl");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        scraped.status.success() && scraped.stdout.ends_with(b"# EOF\n"),
        "the metrics endpoint on a low port answers: {scraped:?}"
    );
    drop(writer);
    let status = agent.wait_timeout(Duration::from_secs(20));
    assert!(
        status.success(),
        "an empty recording replays cleanly: {status}"
    );
}

#[test]
fn check_reports_what_each_mode_keeps() {
    if !privileged_or_skip("check_reports_what_each_mode_keeps") {
        return;
    }
    let out = std::process::Command::new(binary())
        .arg("check")
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = |item: &str| {
        text.lines()
            .find(|l| l.starts_with(item))
            .unwrap_or_else(|| panic!("no {item} row: {text}"))
            .to_owned()
    };
    // The exact set below is for kernels with TCX and fd-only map access (>= 6.6).
    if mirror_agent::check::kernel_version().is_none_or(|v| v < (6, 6)) {
        println!("SKIP the kept-set row: kernel before 6.6 keeps more (see privileges::Needs)");
        return;
    }
    assert!(
        row("keeps (live)")
            .contains("after attaching (TCX): none; with --attach tc: CAP_NET_ADMIN"),
        "{text}"
    );
    assert!(row("keeps (other)").contains("none"), "{text}");
    assert!(row("seccomp").contains(" ok "), "{text}");
}

/// Every program variant loads with only CAP_BPF and CAP_NET_ADMIN, the DaemonSet's set: the
/// verifier is stricter without CAP_PERFMON (no pointer arithmetic on the stack with a variable
/// offset, for one), and the tests above run as full root. The image test covers the default
/// variant in a container; this covers each variant and the cgroup programs, in every run.
#[test]
fn every_program_variant_loads_with_bpf_and_net_admin_only() {
    let test = "every_program_variant_loads_with_bpf_and_net_admin_only";
    if !privileged_or_skip(test) {
        return;
    }
    let ns = NetNs::new();
    let cgroup = mirror_tests::cgroup::TestCgroup::new();
    let setpriv = [
        "setpriv",
        "--bounding-set=-all,+bpf,+net_admin",
        "--inh-caps=-all",
    ];
    let mut runs: Vec<(String, Vec<String>)> = ["reserve", "scratch"]
        .iter()
        .map(|copy| {
            (
                format!("interface, {copy}"),
                vec![
                    "--iface".into(),
                    "lo".into(),
                    "--capture-copy".into(),
                    copy.to_string(),
                    "--compare".into(),
                ],
            )
        })
        .collect();
    match &cgroup {
        Some(cg) => runs.push((
            "cgroup".into(),
            vec![
                "--cgroup".into(),
                cg.path().display().to_string(),
                "--compare".into(),
            ],
        )),
        None => eprintln!("{test}: no cgroup v2 mount: the cgroup programs are not checked here"),
    }
    for (what, args) in runs {
        let mut cmd = ns.nsenter(setpriv[0]);
        cmd.args(&setpriv[1..])
            .arg(binary())
            .args(&args)
            .args(["--port", "9", "--duration", "0.3"])
            .env("NO_COLOR", "1");
        let out = cmd.output().expect("run the agent under setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.contains("capturing;"),
            "{what}: the programs must load with CAP_BPF and CAP_NET_ADMIN only: {err}"
        );
    }
}

/// `--tls` with only the DaemonSet's default CAP_BPF and CAP_NET_ADMIN, or with CAP_PERFMON
/// too: refused before anything is attached, one line, exit status 2 (the kernel refuses uprobe
/// events without CAP_SYS_ADMIN: measured, EACCES from perf_event_open). With CAP_SYS_ADMIN and
/// CAP_SYS_PTRACE added (what the manifest's `--tls` comment asks for), the TLS programs load and
/// attach, and the agent gives them up.
#[test]
fn tls_needs_sys_admin_and_says_so() {
    let test = "tls_needs_sys_admin_and_says_so";
    if !privileged_or_skip(test) {
        return;
    }
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        // Mounting tracefs needs CAP_SYS_ADMIN, which this run does not give.
        assert!(
            std::process::Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status()
                .is_ok_and(|s| s.success()),
            "{test}: tracefs is not mounted and cannot be"
        );
    }
    let ns = NetNs::new();
    for (caps, ok) in [
        ("-all,+bpf,+net_admin", false),
        ("-all,+bpf,+net_admin,+perfmon,+sys_ptrace", false),
        ("-all,+bpf,+net_admin,+sys_admin,+sys_ptrace", true),
    ] {
        let mut cmd = ns.nsenter("setpriv");
        cmd.args([&format!("--bounding-set={caps}"), "--inh-caps=-all"])
            .arg(binary())
            .args([
                "--iface",
                "lo",
                "--port",
                "9",
                "--tls",
                "auto",
                "--duration",
                "0.3",
            ])
            .env("NO_COLOR", "1");
        let out = cmd.output().expect("run the agent under setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        if ok {
            assert!(
                out.status.success() && err.contains("capturing;") && err.contains("TLS uprobes"),
                "{caps}: the TLS programs must load and attach: {err}"
            );
        } else {
            assert_eq!(out.status.code(), Some(2), "{caps}: {err}");
            assert!(
                err.lines().any(|l| l.contains("--tls needs CAP_SYS_ADMIN")),
                "{caps}: one line naming the capability: {err}"
            );
            assert!(!err.contains("capturing;"), "nothing attached: {err}");
        }
    }
}
