//! Request-smuggling shapes end to end: a capture made here of one connection per shape, each
//! hiding a request behind framing a strict HTTP/1.1 server rejects or closes on, goes through
//! the agent binary (`--pcap FILE --mirror URL`) to a real mirror. The mirror must receive the
//! requests a strict primary served and none of the hidden ones, and the exit summary must
//! count every hidden one by its reason.

mod replay_common;

use std::process::Command;

use mirror_agent::capture::pcap::synth::{self, Conversation, SynthLink};
use replay_common::{Behavior, TestMirror};

const HIDDEN: &str = "GET /hidden HTTP/1.1\r\nHost: h\r\n\r\n";

/// (client bytes of one connection, targets a strict primary served, in order).
fn shapes() -> Vec<(String, Vec<&'static str>)> {
    vec![
        // RFC 9112 6.1: both framings; served by Transfer-Encoding, then the server closes.
        (
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{HIDDEN}"
            ),
            vec!["/te-cl"],
        ),
        // Connection: close, then pipelined requests the server never reads.
        (
            format!("GET /bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n{HIDDEN}{HIDDEN}"),
            vec!["/bye"],
        ),
        // HTTP/1.0 without keep-alive.
        (
            format!("GET /old HTTP/1.0\r\nHost: h\r\n\r\n{HIDDEN}"),
            vec!["/old"],
        ),
        // A bare LF hides a Content-Length from a strict server: rejected, nothing after.
        (
            format!(
                "GET /ok HTTP/1.1\r\nHost: h\r\n\r\nPOST /lf HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: {}\r\n\r\n{HIDDEN}",
                HIDDEN.len()
            ),
            vec!["/ok"],
        ),
        // obs-fold: rejected; the framer must not resync into what follows.
        (
            format!("POST /fold HTTP/1.1\r\nHost: h\r\n Content-Length: 0\r\n\r\n{HIDDEN}"),
            vec![],
        ),
        // A chunk-size line with a bare CR.
        (
            format!(
                "POST /cr HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r;ABCD\r\n{HIDDEN}"
            ),
            vec![],
        ),
        // CONNECT: what follows its head is tunnel data.
        (
            format!("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n{HIDDEN}"),
            vec!["h:443"],
        ),
        // A well-formed keep-alive connection: everything served.
        (
            "GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
                .to_owned(),
            vec!["/a", "/b"],
        ),
    ]
}

fn capture(path: &std::path::Path) -> Vec<&'static str> {
    let mut segments = Vec::new();
    let mut served = Vec::new();
    for (i, (client, targets)) in shapes().into_iter().enumerate() {
        let mut c = Conversation::new(
            format!("10.2.0.1:{}", 41000 + i).parse().unwrap(),
            "10.2.0.2:80".parse().unwrap(),
            [1000, 5000],
        );
        c.handshake().client_sends(client.as_bytes(), 1400).close();
        segments.extend(c.segments);
        served.extend(targets);
    }
    let frames = synth::frames(SynthLink::Raw, &segments);
    std::fs::write(path, synth::pcap_file(SynthLink::Raw.linktype(), &frames)).unwrap();
    served
}

/// The value of `name` in the exit summary (`  name   value` lines).
fn summary_value(stderr: &str, name: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(name))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_requests_reach_no_mirror_and_are_counted() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let dir = std::env::temp_dir().join(format!("mirror-smuggling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("hostile.pcap");
    let served = capture(&pcap);
    let out = tokio::task::spawn_blocking({
        let (pcap, addr) = (pcap.clone(), mirror.addr);
        move || {
            Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
                .arg("--pcap")
                .arg(&pcap)
                .args([
                    "--port",
                    "80",
                    "--mirror",
                    &format!("http://{addr},name=shadow"),
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut got: Vec<String> = mirror
        .received()
        .into_iter()
        .map(|r| r.target().to_string())
        .collect();
    // The CONNECT is captured, but replay never sends a CONNECT to a mirror (counted as
    // filtered).
    let mut want: Vec<String> = served
        .iter()
        .filter(|t| **t != "h:443")
        .map(|t| t.to_string())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{stderr}");
    assert!(
        !got.iter().any(|t| t == "/hidden"),
        "a hidden request reached the mirror"
    );
    let v = |name| summary_value(&stderr, name).unwrap_or_else(|| panic!("{name}: {stderr}"));
    assert_eq!(v("unserved.requests_after_te_and_cl"), 1, "{stderr}");
    assert_eq!(v("unserved.requests_after_close"), 3, "{stderr}");
    assert_eq!(v("lost.requests_malformed"), 3, "{stderr}");
    assert_eq!(v("flows_tunnel"), 1, "{stderr}");
    assert_eq!(v("requests"), served.len() as u64, "{stderr}");
}
