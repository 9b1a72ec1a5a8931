//! Privileged: HTTP/2 with prior knowledge (h2c), through the real binary and a real kernel.
//! nginx serves h2c as the primary (`listen ... http2`, passing requests to a backend so it
//! reads every body before answering); from the client namespace curl sends
//! a GET with custom headers and cookies and a POST with a 20000-byte body
//! (`--http2-prior-knowledge`; curl 7.88 cannot reuse an h2c connection for a second URL), and
//! h2load sends 20 requests on one connection, 5 streams at a time (the HPACK dynamic table
//! carries its fields from the second request on). The
//! first mirror is a recording HTTP/1.1 server (`protocol=h1`): each stream must arrive as its
//! HTTP/1.1 form, with the client's method, path, authority as Host, fields and body, and the
//! exit ledger must count the HTTP/2 connections and requests with nothing lost. The second
//! mirror is nginx serving h2c (`protocol=auto`: streams go over HTTP/2), proxying to a second
//! recorder: its access log must show every request as HTTP/2.0, and the recorder the same
//! fields and bodies. tcpdump records the same
//! traffic; the agent reading that file (`--pcap --record`) finds the same 22 requests.

use std::time::Duration;

use mirror_tests::agent::ledger;
use mirror_tests::mirror::{Behavior, Received, compare_row};
use mirror_tests::scenario::{
    Family, PRIMARY_PORT, curl, start_agent, start_mirror, stop_agent, url,
};
use mirror_tests::{ChildGuard, TempDir, Topology, privileged_or_skip, wait_for_port};

/// nginx serving h2c on `listen` (`ADDR:PORT`), in the server namespace, passing requests to
/// `backend` (so it reads every request body before answering), in its own directory under
/// `dir`, logging each request's method, target, protocol and status to `access.log` there;
/// killed on drop.
fn start_nginx_h2c(
    topo: &Topology,
    dir: &std::path::Path,
    listen: &str,
    backend: std::net::SocketAddr,
) -> ChildGuard {
    let dir = dir.join(listen.replace([':', '.'], "_"));
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  log_format p '$request_method $request_uri $server_protocol $status';\n\
         access_log {d}/access.log p;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{\n    listen {listen} http2;\n    location / {{ proxy_pass http://{backend}; }}\n  }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let mut cmd = topo.server.command("nginx");
    cmd.args([
        "-c",
        path.to_str().unwrap(),
        "-e",
        &format!("{d}/nginx-error.log"),
    ]);
    let guard = ChildGuard::spawn("nginx", &mut cmd);
    let port = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    wait_for_port(&topo.server, port, Duration::from_secs(5));
    guard
}

fn lines(got: &[Received]) -> Vec<String> {
    got.iter().map(Received::line).collect()
}

fn text(r: &Received) -> String {
    String::from_utf8_lossy(&r.bytes).into_owned()
}

#[test]
fn h2c_streams_reach_an_http11_mirror_with_their_fields_and_bodies() {
    if !privileged_or_skip("h2c_streams_reach_an_http11_mirror_with_their_fields_and_bodies") {
        return;
    }
    let dir = TempDir::new("h2c");
    let topo = Topology::new();
    let backend = start_mirror(&topo, Family::V4, 9042, Behavior::Ok);
    let primary = format!("{}:{PRIMARY_PORT}", Topology::SERVER_V4);
    let _nginx = start_nginx_h2c(&topo, dir.path(), &primary, backend.addr);
    let mirror = start_mirror(&topo, Family::V4, 9041, Behavior::Ok);
    // The HTTP/2 mirror: nginx (h2c) in front of a second recorder.
    let h2_recorder = start_mirror(&topo, Family::V4, 9044, Behavior::Ok);
    let _h2_mirror = start_nginx_h2c(&topo, dir.path(), "127.0.0.1:9043", h2_recorder.addr);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},protocol=h1", url(mirror.addr)),
            "--mirror".into(),
            "http://127.0.0.1:9043,name=h2-mirror".into(),
        ],
    );
    // tcpdump records the same traffic, for the offline check at the end.
    let pcap = dir.path().join("h2c.pcap");
    let mut tcpdump = {
        let mut cmd = topo.server.command("tcpdump");
        // Immediate mode: packets are written as they come, not when a ring block fills.
        cmd.args(["-i", &topo.server_if, "--immediate-mode", "-U", "-w"])
            .arg(&pcap)
            .stderr(std::process::Stdio::null());
        ChildGuard::spawn("tcpdump", &mut cmd)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&pcap).map_or(true, |m| m.len() == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "tcpdump did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let base = format!("http://{}:{PRIMARY_PORT}", Topology::SERVER_V4);
    let out = curl(
        &topo,
        &[
            "--http2-prior-knowledge",
            "-H",
            "x-test: one",
            "-b",
            "a=1; b=2",
            &format!("{base}/h2/first?q=1"),
        ],
    );
    assert!(out.status.success(), "curl: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("GET /h2/first?q=1"),
        "{out:?}"
    );
    // A POST with a 20000-byte body (several DATA frames).
    let body = "z".repeat(20_000);
    let out = curl(
        &topo,
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: text/plain",
            "--data-binary",
            &body,
            &format!("{base}/h2/upload"),
        ],
    );
    assert!(out.status.success(), "curl: {out:?}");
    // 20 requests on one connection, 5 streams at a time.
    let out = topo
        .client
        .command("h2load")
        .args(["-n", "20", "-c", "1", "-m", "5", "-H", "x-load: yes"])
        .arg(format!("{base}/h2/load"))
        .output()
        .expect("h2load (nghttp2-client; cargo xtask setup installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("20 succeeded"), "h2load: {report}");

    let got = mirror.wait_for(22, Duration::from_millis(300), Duration::from_secs(15));
    tcpdump.signal(libc::SIGINT);
    tcpdump.wait_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(got.len(), 22, "mirror received: {:?}\n{log}", lines(&got));
    let find = |path: &str| {
        got.iter()
            .find(|r| {
                r.line().starts_with(&format!("GET {path} "))
                    || r.line().starts_with(&format!("POST {path} "))
            })
            .unwrap_or_else(|| panic!("no {path} at the mirror: {:?}", lines(&got)))
    };
    let first = text(find("/h2/first?q=1"));
    assert!(
        first.starts_with("GET /h2/first?q=1 HTTP/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "\r\nHost: {}:{PRIMARY_PORT}\r\n",
            Topology::SERVER_V4
        )),
        "{first}"
    );
    assert!(first.contains("\r\nx-test: one\r\n"), "{first}");
    assert!(first.contains("\r\ncookie: a=1; b=2\r\n"), "{first}");
    assert!(first.contains("\r\nuser-agent: curl/"), "{first}");
    let upload = find("/h2/upload");
    let up = text(upload);
    assert!(up.starts_with("POST /h2/upload HTTP/1.1\r\n"), "{up}");
    assert!(up.contains("\r\ncontent-type: text/plain\r\n"), "{up}");
    assert!(up.contains("\r\ncontent-length: 20000\r\n"), "{up}");
    assert!(
        upload.bytes.ends_with(body.as_bytes()),
        "body byte for byte"
    );
    // h2load's requests: every one with its fields (from the dynamic table after the first).
    let load: Vec<String> = got
        .iter()
        .filter(|r| r.line().starts_with("GET /h2/load "))
        .map(text)
        .collect();
    assert_eq!(load.len(), 20, "{:?}", lines(&got));
    for r in &load {
        assert!(
            r.contains("\r\nx-load: yes\r\n") && r.contains("\r\nuser-agent: h2load"),
            "{r}"
        );
    }
    assert_eq!(table.row(&format!("{}", mirror.addr)).sent, 22, "{log}");
    // The HTTP/2 mirror: every stream went over HTTP/2 and was answered (by its recorder,
    // through nginx), with the same fields and bodies.
    let h2_row = table.row("h2-mirror");
    assert_eq!((h2_row.sent, h2_row.errors), (22, 0), "{log}");
    let via_h2 = h2_recorder.wait_for(22, Duration::from_millis(300), Duration::from_secs(5));
    assert_eq!(via_h2.len(), 22, "{:?}", lines(&via_h2));
    let access =
        std::fs::read_to_string(dir.path().join("127_0_0_1_9043/access.log")).unwrap_or_default();
    let access: Vec<&str> = access.lines().collect();
    assert_eq!(access.len(), 22, "{access:?}");
    assert!(
        access.iter().all(|l| l.contains(" HTTP/2.0 200")),
        "every copy over HTTP/2, answered 200: {access:?}"
    );
    assert_eq!(
        access
            .iter()
            .filter(|l| l.starts_with("GET /h2/load HTTP/2.0"))
            .count(),
        20,
        "{access:?}"
    );
    let h2_upload = via_h2
        .iter()
        .find(|r| r.line().starts_with("POST /h2/upload "))
        .expect("the upload through the HTTP/2 mirror");
    assert!(
        h2_upload.bytes.ends_with(body.as_bytes()),
        "body byte for byte"
    );
    let h2_first = via_h2
        .iter()
        .map(text)
        .find(|t| t.starts_with("GET /h2/first?q=1 "))
        .expect("the first GET through the HTTP/2 mirror");
    assert!(
        h2_first.contains("\r\nx-test: one\r\n") && h2_first.contains("a=1; b=2"),
        "{h2_first}"
    );
    assert_eq!(ledger(&log, "h2.flows"), 3, "{log}");
    assert_eq!(ledger(&log, "h2.requests"), 22, "{log}");
    assert_eq!(ledger(&log, "lost.h2_bytes"), 0, "{log}");
    assert_eq!(ledger(&log, "lost.h2_flows_failed"), 0, "{log}");
    assert_eq!(
        ledger(&log, "flows_h2"),
        0,
        "no HTTP/2 connection left undecoded: {log}"
    );
    assert_eq!(ledger(&log, "lost.midstream_bytes"), 0, "{log}");

    // The same connections from tcpdump's file: the same 22 requests, recorded with their
    // stream ids.
    let record = dir.path().join("h2c.jsonl");
    let (code, stderr) = mirror_tests::agent::run_to_exit(
        &[
            "--pcap",
            pcap.to_str().unwrap(),
            "--port",
            &PRIMARY_PORT.to_string(),
            "--record",
            record.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let recorded: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .expect("recording")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(recorded.len(), 22, "{stderr}");
    assert!(
        recorded
            .iter()
            .all(|r| r["h2_stream"].as_u64().is_some_and(|s| s % 2 == 1)),
        "every request recorded with its stream"
    );
    // In their HTTP/2 form: the version and the pseudo-header fields first.
    for r in &recorded {
        assert_eq!(r["version"], "HTTP/2", "{r}");
        let names: Vec<&str> = r["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter_map(|h| h[0].as_str())
            .take(4)
            .collect();
        assert_eq!(names, [":method", ":scheme", ":authority", ":path"], "{r}");
    }
    let targets: Vec<&str> = recorded
        .iter()
        .filter_map(|r| r["target"].as_str())
        .collect();
    assert!(
        targets.contains(&"/h2/first?q=1") && targets.contains(&"/h2/upload"),
        "{targets:?}"
    );
    assert_eq!(targets.iter().filter(|t| **t == "/h2/load").count(), 20);
    assert_eq!(ledger(&stderr, "lost.h2_bytes"), 0, "{stderr}");
}

/// The ASGI app hypercorn serves: answers every request with its HTTP version and path.
const UPGRADE_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body",
                "body": ("%s %s\n" % (scope["http_version"], scope["path"])).encode()})
"#;

/// An HTTP/1.1 connection upgraded to h2c with real peers: curl (`--http2` on an `http://`
/// URL sends `Upgrade: h2c`, then reuses the upgraded connection for its second URL as an
/// HTTP/2 stream) against hypercorn (which takes the upgrade). The mirror gets the upgrading
/// request as the HTTP/1.1 request it was and the second one from its HTTP/2 stream; the ledger
/// counts the upgrade, nothing lost.
#[test]
fn h2c_upgrade_exchange_is_followed_into_http2() {
    let test = "h2c_upgrade_exchange_is_followed_into_http2";
    if !privileged_or_skip(test) {
        return;
    }
    let hypercorn = std::process::Command::new("python3")
        .args(["-c", "import hypercorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !hypercorn {
        eprintln!("SKIPPED {test}: python3 has no hypercorn (cargo xtask setup installs it)");
        assert_ne!(
            std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref(),
            Ok("1"),
            "hypercorn is required"
        );
        return;
    }
    let dir = TempDir::new("h2c-upgrade");
    std::fs::write(dir.path().join("app.py"), UPGRADE_APP).expect("write app.py");
    let topo = Topology::new();
    let primary = format!("{}:{PRIMARY_PORT}", Topology::SERVER_V4);
    let mut cmd = topo.server.command("python3");
    // `--workers 0`: served by this process (a worker process would outlive the guard).
    cmd.args([
        "-m",
        "hypercorn",
        "app:app",
        "--workers",
        "0",
        "--bind",
        &primary,
    ])
    .current_dir(dir.path());
    let _server = ChildGuard::spawn("hypercorn", &mut cmd);
    wait_for_port(&topo.server, PRIMARY_PORT, Duration::from_secs(10));
    let mirror = start_mirror(&topo, Family::V4, 9041, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},protocol=h1", url(mirror.addr)),
            // The primary's answers too: the 101 is not the upgrading request's answer, the
            // server's HTTP/2 stream 1 is.
            "--compare".into(),
        ],
    );
    let base = format!("http://{primary}");
    let out = curl(
        &topo,
        &[
            "--http2",
            "-H",
            "x-test: up",
            &format!("{base}/up/first"),
            &format!("{base}/up/second"),
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("2 /up/first") && body.contains("2 /up/second"),
        "curl upgraded and reused the connection: {out:?}"
    );
    let got = mirror.wait_for(2, Duration::from_millis(300), Duration::from_secs(10));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    assert_eq!(
        lines(&got),
        ["GET /up/first HTTP/1.1", "GET /up/second HTTP/1.1"],
        "{log}"
    );
    let first = text(&got[0]);
    assert!(
        first.contains("\r\nUpgrade: h2c\r\n"),
        "the upgrade as sent: {first}"
    );
    let second = text(&got[1]);
    assert!(second.contains("\r\nx-test: up\r\n"), "{second}");
    assert_eq!(table.row(&mirror.addr.to_string()).sent, 2, "{log}");
    assert_eq!(ledger(&log, "h2.upgrades"), 1, "{log}");
    assert_eq!(ledger(&log, "h2.flows"), 1, "{log}");
    assert_eq!(ledger(&log, "h2.requests"), 1, "{log}");
    assert_eq!(ledger(&log, "lost.h2_bytes"), 0, "{log}");
    assert_eq!(ledger(&log, "flows_h2"), 0, "{log}");
    // Both answers decoded from hypercorn's HTTP/2 (stream 1 after the 101, stream 3) and
    // compared by status with the mirror's 200s: no 101-vs-200 mismatch.
    assert_eq!(ledger(&log, "h2.responses"), 2, "{log}");
    assert_eq!(ledger(&log, "responses_unpaired"), 0, "{log}");
    assert_eq!(ledger(&log, "requests_unanswered"), 0, "{log}");
    let row = compare_row(&log, &mirror.addr.to_string());
    assert_eq!(
        (
            row["compared"],
            row["status_class"],
            row["status_code"],
            row["no_response"]
        ),
        (2, 0, 0, 0),
        "{row:?}\n{log}"
    );
}
