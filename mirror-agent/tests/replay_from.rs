//! `--from FILE.jsonl`: recorded replay, paced or as fast as possible; and the binary's exit
//! status 2 with one line for bad replay flags and config files.

mod replay_common;
mod telemetry_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use mirror_agent::app::from;
use mirror_agent::cli::Cli;
use mirror_agent::config::Settings;
use mirror_agent::record;
use mirror_agent::telemetry::OtlpProtocol;
use replay_common::*;
use telemetry_common::otlp::{Receiver, attr, points};

/// A temp file removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    /// A path for the agent to create (it refuses to overwrite an existing file).
    fn output(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("mirror-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Self(p)
    }

    fn new(name: &str, content: &str) -> Self {
        let p = std::env::temp_dir().join(format!("mirror-agent-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        Self(p)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Mirror servers run on their own runtime: `from::run` makes and blocks on its own.
fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn recording(n: usize, gap_ms: u64) -> (String, Vec<mirror_agent::pipeline::CapturedRequest>) {
    let mut reqs = Vec::new();
    for i in 0..n {
        let raw = if i % 3 == 0 {
            format!("POST /f/{i} HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\nabc")
        } else {
            format!("GET /f/{i} HTTP/1.1\r\nhost: h\r\nX-Case: MiXeD\r\n\r\n")
        };
        let mut c = one(raw.as_bytes());
        c.request.ts_ns = 1_000_000_000 + i as u64 * gap_ms * 1_000_000;
        c.request.end_ts_ns = c.request.ts_ns;
        reqs.push(c);
    }
    let mut text: String = reqs.iter().map(|r| record::to_line(r) + "\n").collect();
    // A bad line in the middle is counted and skipped; the rest is replayed.
    text.insert_str(text.find('\n').unwrap() + 1, "{not a record}\n");
    (text, reqs)
}

fn settings(flags: &[&str]) -> Settings {
    let mut argv = vec!["mirror-agent"];
    argv.extend_from_slice(flags);
    Settings::load(&Cli::try_parse_from(argv).unwrap().run).unwrap()
}

#[test]
fn replays_a_recording_byte_identical() {
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    let (text, reqs) = recording(60, 1);
    let file = TempFile::new("rec.jsonl", &text);
    let url = format!("http://{},name=m", mirror.addr);
    let s = settings(&[
        "--from",
        file.0.to_str().unwrap(),
        "--mirror",
        &url,
        "--queue-size",
        "8",
    ]);
    let report = from::run(&s, &file.0, |_| {}).unwrap();
    assert_eq!((report.records, report.bad_lines), (60, 1));
    assert!(
        report
            .first_bad
            .unwrap()
            .starts_with("line 2: not a request record")
    );
    let m = &report.replay.mirrors[0];
    // Queue of 8, 60 records as fast as possible: the reader waits for room, nothing is dropped.
    assert_eq!(
        (m.sampled, m.status[1], m.dropped_count()),
        (60, 60, 0),
        "{m:?}"
    );
    assert!(m.balanced());
    let got = mirror.received();
    let mut got: Vec<_> = got.iter().map(|r| r.raw.clone()).collect();
    let mut want: Vec<_> = reqs.iter().map(|r| r.request.raw.clone()).collect();
    got.sort();
    want.sort();
    assert!(got == want, "the mirror got exactly the recorded bytes");
}

/// A line that is not UTF-8 is one bad line: the records after it are replayed.
#[test]
fn a_non_utf8_line_is_skipped_and_the_rest_replayed() {
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    let (text, _) = recording(3, 0);
    let mut lines: Vec<&str> = text.lines().collect();
    let tail = lines.split_off(1);
    let mut bytes = format!("{}\n", lines[0]).into_bytes();
    bytes.extend_from_slice(b"{\"src\": \"\xff\xfe not utf-8\"}\n");
    for l in tail {
        bytes.extend_from_slice(format!("{l}\n").as_bytes());
    }
    let path = std::env::temp_dir().join(format!("mirror-agent-{}-utf8.jsonl", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = TempFile(path);
    let url = format!("http://{},name=m", mirror.addr);
    let s = settings(&["--from", file.0.to_str().unwrap(), "--mirror", &url]);
    let report = from::run(&s, &file.0, |_| {}).unwrap();
    // The non-UTF-8 line and the recording's own bad line are skipped; all 3 records replayed.
    assert_eq!((report.records, report.bad_lines), (3, 2));
    assert_eq!(report.first_bad.as_deref(), Some("line 2: not UTF-8"));
    assert_eq!(report.replay.mirrors[0].status[1], 3);
}

/// A recorded replay exports the same per-mirror metrics and spans as live mode.
#[test]
fn recorded_replay_exports_metrics_and_spans() {
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    let receiver = rt.block_on(Receiver::grpc());
    let (text, _) = recording(20, 1);
    let file = TempFile::new("otlp.jsonl", &text);
    let url = format!("http://{},name=m", mirror.addr);
    let mut s = settings(&["--from", file.0.to_str().unwrap(), "--mirror", &url]);
    let telemetry = telemetry_common::otlp_only(receiver.url(), OtlpProtocol::Grpc);
    s.telemetry = telemetry;
    let report = from::run(&s, &file.0, |_| {}).unwrap();
    assert_eq!(report.replay.mirrors[0].status[1], 20);
    let otlp = report.otlp.expect("OTLP was on");
    assert!(otlp.metric_exports_ok >= 1, "{otlp:?}");
    assert_eq!(
        (
            otlp.spans_started,
            otlp.spans_exported,
            otlp.metric_exports_failed
        ),
        (20, 20, 0),
        "{otlp:?}"
    );
    // The final export (at shutdown) carries the final counters.
    let sent = receiver.metrics_named("mirror.requests.sent");
    let last = sent.last().expect("mirror.requests.sent exported");
    let (a, v) = points(last).remove(0);
    assert_eq!(attr(&a, "mirror.name").as_deref(), Some("m"));
    assert_eq!(v, 20.0);
    assert_eq!(receiver.spans().len(), 20);
}

#[test]
fn speed_paces_by_recorded_time() {
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    // 6 requests 80 ms apart: 400 ms of recorded time.
    let (text, _) = recording(6, 80);
    let file = TempFile::new("paced.jsonl", &text);
    let url = format!("http://{}", mirror.addr);
    for (speed, at_least) in [
        ("1", Duration::from_millis(400)),
        ("10", Duration::from_millis(40)),
    ] {
        let s = settings(&[
            "--from",
            file.0.to_str().unwrap(),
            "--mirror",
            &url,
            "--speed",
            speed,
        ]);
        let t0 = Instant::now();
        let report = from::run(&s, &file.0, |_| {}).unwrap();
        // Lower bounds only: a loaded machine may be slower, never faster than the pace.
        assert!(
            t0.elapsed() >= at_least,
            "speed {speed}: {:?}",
            t0.elapsed()
        );
        assert_eq!(report.replay.mirrors[0].status[1], 6);
    }
}

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_bad_flags_exit_2_with_one_line() {
    let rec = TempFile::new("empty.jsonl", "");
    let f = rec.0.to_str().unwrap();
    let bad_yaml = TempFile::new(
        "bad.yaml",
        "mirroring:\n  name: app\n  port: 80\n  mirrors:\n    - name: v2\n      port: 80\n      percent: 250\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--from", f, "--mirror", "gopher://x:70"],
            "scheme `gopher` is not supported",
        ),
        (
            vec!["--from", f, "--mirror", "http://x:80,percent=200"],
            "percent `200`",
        ),
        (
            vec!["--from", f, "--mirror", "http://x:80,color=red"],
            "unknown option `color`",
        ),
        (
            vec!["--from", f, "--mirror", "ftp//x"],
            "expected http://HOST:PORT",
        ),
        (vec!["--from", f], "needs at least one --mirror"),
        (
            vec!["--from", f, "--mirror", "http://x:80", "--compare"],
            "--compare needs the primary's responses",
        ),
        (
            vec![
                "--from",
                f,
                "--mirror",
                "http://x:80",
                "--otlp-protocol",
                "thrift",
            ],
            "bad --otlp-protocol",
        ),
        (
            vec!["--from", f, "--config", bad_yaml.0.to_str().unwrap()],
            "line 7 column 16: mirroring.mirrors[0].percent: percent 250",
        ),
    ];
    for (args, want) in cases {
        let (code, stderr) = agent(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(stderr.contains(want), "{args:?}: want {want}: {stderr}");
    }
}

#[test]
fn binary_from_prints_the_table() {
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    let (text, _) = recording(10, 1);
    let rec = TempFile::new("bin.jsonl", &text);
    let url = format!("http://{},name=shadow", mirror.addr);
    let (code, stderr) = agent(&["--from", rec.0.to_str().unwrap(), "--mirror", &url]);
    // The bad line makes the run incomplete: exit 1, after replaying everything else.
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("shadow"), "{stderr}");
    assert!(
        stderr.contains("records replayed: 10; bad lines: 1"),
        "{stderr}"
    );
    assert_eq!(mirror.count(), 10);
}

/// A real capture through the whole pipeline to a mirror: the mirror receives exactly the
/// requests `--record` writes for the same file, byte for byte.
#[test]
fn pcap_corpus_to_mirror() {
    let pcap = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/pcaps/suricata-verify/http-protocol-nodup__input.pcap");
    if !pcap.exists() {
        eprintln!("SKIP pcap_corpus_to_mirror: {} is absent", pcap.display());
        return;
    }
    let rt = server_runtime();
    let mirror = rt.block_on(TestMirror::start(Behavior::Ok));
    let rec = TempFile::output("pcap-rec.jsonl");
    let url = format!("http://{},name=shadow", mirror.addr);
    let (code, stderr) = agent(&[
        "--pcap",
        pcap.to_str().unwrap(),
        "--record",
        rec.0.to_str().unwrap(),
        "--mirror",
        &url,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let recorded: Vec<_> = std::fs::read_to_string(&rec.0)
        .unwrap()
        .lines()
        .map(|l| record::read_line(l).unwrap().request.raw)
        .collect();
    assert!(
        recorded.len() >= 40,
        "the capture holds 40+ requests: {}",
        recorded.len()
    );
    let mut got: Vec<_> = mirror.received().into_iter().map(|r| r.raw).collect();
    let mut want = recorded.clone();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "mirror got {} requests, recorded {}",
        got.len(),
        want.len()
    );
    assert!(stderr.contains("shadow"), "{stderr}");
}
