//! Privileged: header and body comparison and `--diff-log` through the real binary.
//!
//! A primary and a mirror serve the JSON API of `mirror_tests::mirror::json_api`: the mirror
//! answers `/a` with 500, `/b` with one JSON field different, `/c` with the same JSON written
//! differently (key order, spacing, chunked coding; and every response carries a different
//! `Date`, `Server` and `X-Request-Id`, ignored by default). A client in its own namespace
//! sends seven requests with an `Authorization` header on one keep-alive connection: five
//! pipelined in one write, then two one at a time. Run once with `--compare --diff-log`:
//! exactly one status-class mismatch (`/a`), exactly one body mismatch (`/b`), no header
//! mismatch, and a diff log of exactly those two lines, each naming its own path (so the
//! pipelined responses were paired with their own requests) and holding no credential. Run
//! again with `--compare-ignore json:$.count`: no body mismatch, one diff-log line.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use mirror_tests::mirror::{ApiSide, Behavior, RecordingServer, compare_row};
use mirror_tests::scenario::{
    Family, read_responses, start_agent, start_mirror, start_primary_with, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const SECRET: &str = "E2E-BEARER-SECRET";
const QUERY_SECRET: &str = "E2E-QUERY-SECRET";

fn request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {SECRET}\r\nAccept: application/json\r\n\r\n"
    )
}

/// Sends the test's seven requests on one connection; returns the paths in sending order.
fn client_traffic(topo: &Topology, primary: &RecordingServer) -> Vec<&'static str> {
    let b = Box::leak(format!("/b?token={QUERY_SECRET}&x=1").into_boxed_str());
    let pipelined: Vec<&'static str> = vec!["/c", "/a", "/c", b, "/c"];
    let addr = primary.addr;
    topo.client.enter(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let all: String = pipelined.iter().map(|p| request(p)).collect();
        s.write_all(all.as_bytes()).expect("pipelined write");
        let got = read_responses(&mut s, pipelined.len());
        for ((status, body), path) in got.iter().zip(&pipelined) {
            assert_eq!(*status, 200, "{path}: {body}");
            let want = match &path[..2] {
                "/a" => r#""path":"/a""#,
                "/b" => r#""id":2"#,
                _ => r#""id":3"#,
            };
            assert!(body.contains(want), "{path}: {body}");
        }
        // Keep-alive: two more, one at a time.
        for _ in 0..2 {
            s.write_all(request("/c").as_bytes()).expect("write");
            assert_eq!(read_responses(&mut s, 1)[0].0, 200);
        }
    });
    let mut all = pipelined;
    all.extend(["/c", "/c"]);
    all
}

fn run(
    topo: &Topology,
    dir: &TempDir,
    tag: &str,
    primary: &RecordingServer,
    mirror: &RecordingServer,
    extra: &[&str],
) -> (
    std::collections::HashMap<String, u64>,
    Vec<serde_json::Value>,
    String,
) {
    let log_path = dir.path().join(format!("diff-{tag}.jsonl"));
    let mut args: Vec<String> = vec![
        "--mirror".into(),
        format!("{},name=api", url(mirror.addr)),
        "--compare".into(),
        "--diff-log".into(),
        log_path.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let before = mirror.count();
    let mut agent = start_agent(topo, dir.path(), &args);
    let paths = client_traffic(topo, primary);
    let got = mirror.wait_for(
        before + paths.len(),
        Duration::from_millis(300),
        Duration::from_secs(20),
    );
    assert_eq!(got.len(), before + paths.len(), "mirror received");
    // The mirror's answers reach the comparison right after it writes them.
    std::thread::sleep(Duration::from_millis(500));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(table.row("api").sent, paths.len() as u64, "{log}");
    let text = std::fs::read_to_string(&log_path).expect("diff log written");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "diff log mode");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (compare_row(&log, "api"), lines, text)
}

#[test]
fn headers_bodies_and_diff_log_through_the_binary() {
    if !privileged_or_skip("headers_bodies_and_diff_log_through_the_binary") {
        return;
    }
    let dir = TempDir::new("compare-e2e");
    let topo = Topology::new();
    let primary = start_primary_with(&topo, Family::V4, Behavior::JsonApi(ApiSide::Primary));
    let mirror = start_mirror(&topo, Family::V4, 9021, Behavior::JsonApi(ApiSide::Mirror));

    // Run 1: every difference counted and logged.
    let (row, lines, text) = run(&topo, &dir, "1", &primary, &mirror, &[]);
    let want = [
        ("compared", 7),
        ("status_class", 1),
        ("status_code", 0),
        ("no_response", 0),
        ("header", 0),
        ("body", 1),
        ("content_skipped", 0),
        ("body_truncated", 0),
    ];
    for (k, v) in want {
        assert_eq!(row.get(k), Some(&v), "{k}: {row:?}\n{text}");
    }
    assert!(
        !text.contains(SECRET) && !text.contains(QUERY_SECRET),
        "credential in the diff log: {text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().is_some_and(|x| x.starts_with(p)))
            .unwrap_or_else(|| panic!("no line for {p}: {text}"))
    };
    let a = by_path("/a");
    assert_eq!(a["kinds"], serde_json::json!(["status_class"]), "{a}");
    assert_eq!(
        (
            a["primary"]["status"].as_u64(),
            a["mirror_response"]["status"].as_u64()
        ),
        (Some(200), Some(500))
    );
    assert_eq!(a["method"], "GET");
    let b = by_path("/b");
    assert_eq!(b["kinds"], serde_json::json!(["body"]), "{b}");
    assert_eq!(b["json_paths"], serde_json::json!(["$.count"]), "{b}");
    assert_eq!(b["path"], "/b?token=[redacted]&x=1");
    assert_eq!(b["body_mode"], "json");
    assert!(
        b["mirror_body"]["text"]
            .as_str()
            .unwrap()
            .contains("\"count\":4"),
        "{b}"
    );
    assert!(b["headers"].as_array().is_some_and(Vec::is_empty), "{b}");

    // Run 2: the differing field ignored.
    let (row, lines, text) = run(
        &topo,
        &dir,
        "2",
        &primary,
        &mirror,
        &["--compare-ignore", "json:$.count"],
    );
    assert_eq!(
        (
            row["compared"],
            row["status_class"],
            row["body"],
            row["header"]
        ),
        (7, 1, 0, 0),
        "{row:?}\n{text}"
    );
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0]["path"].as_str().unwrap().starts_with("/a"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
}

/// Bad comparison values: one line naming the problem, exit status 2, before anything attaches.
#[test]
fn bad_comparison_flags_exit_2_with_one_line() {
    if !mirror_tests::agent::binary().is_file() {
        eprintln!("SKIPPED bad_comparison_flags_exit_2_with_one_line: agent binary missing");
        assert_ne!(
            std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref(),
            Ok("1"),
            "the agent binary is required"
        );
        return;
    }
    let base = [
        "--iface",
        "lo",
        "--port",
        "8080",
        "--mirror",
        "http://127.0.0.1:9",
    ];
    for (extra, want) in [
        (
            &["--compare", "--compare-ignore", "cookie:x"][..],
            "unknown kind",
        ),
        (
            &["--compare", "--compare-ignore", "json:$.a["][..],
            "bad JSON path",
        ),
        (
            &["--compare", "--compare-body", "fuzzy"][..],
            "--compare-body",
        ),
        (
            &["--diff-log", "/tmp/never-written.jsonl"][..],
            "needs --compare",
        ),
        (
            &["--compare", "--diff-log-rate", "0"][..],
            "--diff-log-rate",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, stderr) = mirror_tests::agent::run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
    }
}
