//! Offline comparison: `--pcap FILE --mirror URL --compare` pairs the primary's responses the
//! file holds with a real mirror's answers, exactly as live mode does (status, headers, body,
//! diff log). Runs the agent binary on a synthesized capture of one keep-alive connection.

mod replay_common;

use std::process::Command;
use std::sync::Arc;

use mirror_agent::capture::pcap::synth::{self, Conversation, SynthLink};
use replay_common::{Behavior, TestMirror};

/// One connection, three requests and the primary's answers: /same and /status answered 200,
/// /body answered with JSON the mirror will differ on.
fn capture(path: &std::path::Path) {
    let mut c = Conversation::new(
        "10.1.0.1:40000".parse().unwrap(),
        "10.1.0.2:80".parse().unwrap(),
        [1000, 5000],
    );
    c.handshake();
    for (target, status, body) in [
        ("/same", "200 OK", r#"{"a":1}"#),
        ("/status", "200 OK", r#"{"a":1}"#),
        ("/body", "200 OK", r#"{"a":1,"count":3}"#),
    ] {
        c.client_sends(
            format!("GET {target} HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer secret\r\n\r\n")
                .as_bytes(),
            1400,
        );
        c.server_sends(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
            1400,
        );
    }
    c.close();
    let frames = synth::frames(SynthLink::Raw, &c.segments);
    std::fs::write(path, synth::pcap_file(SynthLink::Raw.linktype(), &frames)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcap_is_compared_with_the_mirrors_answers() {
    // The mirror: 500 on /status, a different count on /body, the primary's answer otherwise.
    let mirror = TestMirror::start(Behavior::Script(Arc::new(|req| {
        let (status, body) = match req.target() {
            "/status" => ("500 Oops", r#"{"a":1}"#),
            "/body" => ("200 OK", r#"{"a":1,"count":4}"#),
            _ => ("200 OK", r#"{"a":1}"#),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        (answer.into_bytes(), false)
    })))
    .await;
    let dir = std::env::temp_dir().join(format!("mirror-compare-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pcap, diff_log) = (dir.join("in.pcap"), dir.join("diff.jsonl"));
    capture(&pcap);
    let out = tokio::task::spawn_blocking({
        let (pcap, diff_log, addr) = (pcap.clone(), diff_log.clone(), mirror.addr);
        move || {
            Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
                .arg("--pcap")
                .arg(&pcap)
                .args([
                    "--mirror",
                    &format!("http://{addr},name=app-v2"),
                    "--compare",
                ])
                .arg("--diff-log")
                .arg(&diff_log)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(mirror.count(), 3, "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&diff_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut found: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_string(),
                l["kinds"].to_string(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("/body".into(), r#"["body"]"#.into()),
            ("/status".into(), r#"["status_class"]"#.into()),
        ],
        "{stderr}"
    );
    let body = lines.iter().find(|l| l["path"] == "/body").unwrap();
    assert_eq!(body["json_paths"], serde_json::json!(["$.count"]));
    assert!(
        !std::fs::read_to_string(&diff_log)
            .unwrap()
            .contains("secret")
    );
    // The exit table's comparison block counts all three.
    assert!(stderr.contains("compared"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
