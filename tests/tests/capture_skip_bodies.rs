//! Privileged: bodies nobody needs are not copied by the kernel.
//!
//! With `--mirror-body false` and no output that keeps bodies, a client uploads 4 MiB bodies on
//! keep-alive connections, each followed by a GET on the same connection. The uploads are paced
//! (curl `--limit-rate`, 2 s each) so that how much is skipped does not depend on how fast a
//! loaded machine schedules the agent: the skip starts once the agent has framed the head, a
//! few milliseconds into a 2 s upload. The agent's pipeline
//! omits each body once its head is framed and tells the ingress program where it ends; the
//! program then records the skbs inside it without payload. The mirror must get every head
//! (Content-Length 0, as `--mirror-body false` sends them) and every GET byte for byte, the
//! kernel must have skipped most of the bodies' bytes, and the ledger must hold every body byte
//! as omitted, none as lost.

use std::time::Duration;

use mirror_tests::agent::ledger;
use mirror_tests::mirror::{Behavior, MirrorTable};
use mirror_tests::scenario::{
    Family, curl_ok, noise, start_agent, start_mirror, start_primary, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const MIRROR_PORT: u16 = 9001;
const BODY: usize = 4 << 20;
const UPLOADS: usize = 3;

/// The value of a ledger line (`  name   value`) of the agent's exit log.
#[test]
fn bodies_nobody_needs_are_skipped_in_the_kernel() {
    let test = "bodies_nobody_needs_are_skipped_in_the_kernel";
    if !privileged_or_skip(test) {
        return;
    }
    let dir = TempDir::new("skip");
    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("http://127.0.0.1:{MIRROR_PORT},name=shadow"),
            "--mirror-body".into(),
            "false".into(),
        ],
    );
    let body = dir.path().join("body.bin");
    std::fs::write(&body, noise(BODY, 3)).unwrap();
    let base = url(primary.addr);
    for i in 0..UPLOADS {
        // One connection: the upload, then a GET after it.
        curl_ok(
            &topo,
            &[
                "--limit-rate",
                "2M",
                "--data-binary",
                &format!("@{}", body.display()),
                &format!("{base}/upload/{i}"),
                "--next",
                &format!("{base}/after/{i}"),
            ],
        );
    }
    let sent = primary.wait_for(
        2 * UPLOADS,
        Duration::from_millis(200),
        Duration::from_secs(20),
    );
    assert_eq!(sent.len(), 2 * UPLOADS, "the primary served every request");
    let got = mirror.wait_for(
        2 * UPLOADS,
        Duration::from_millis(500),
        Duration::from_secs(20),
    );
    assert_eq!(got.len(), 2 * UPLOADS, "the mirror got every request");
    for r in &got {
        let text = String::from_utf8_lossy(&r.bytes);
        if text.starts_with("POST /upload/") {
            assert!(
                text.contains("Content-Length: 0\r\n") && text.ends_with("\r\n\r\n"),
                "an upload's head, without its body: {text}"
            );
        } else {
            // The request after the body: exactly what the primary got.
            assert!(
                sent.iter().any(|s| s.bytes == r.bytes),
                "{} reached the mirror as the primary got it",
                r.line()
            );
        }
    }

    let (status, summary) = agent.stop(libc::SIGTERM);
    let log = agent.log();
    assert!(status.success(), "agent exit {status}: {log}");
    summary.assert_kernel_balanced();
    let total = (UPLOADS * BODY) as u64;
    assert!(
        summary.get("skip_requests") >= UPLOADS as u64 && summary.get("skip_failed") == 0,
        "one skip per body: {log}"
    );
    // Each body's first skbs arrive before its head is framed; the rest is skipped. A quarter
    // leaves the agent 1.5 s of each 2 s upload to react.
    assert!(
        summary.get("skipped_bytes") > total / 4,
        "skipped {} of {total} body bytes: {log}",
        summary.get("skipped_bytes")
    );
    assert_eq!(ledger(&log, "omitted.request_body_bytes"), total, "{log}");
    assert_eq!(ledger(&log, "lost.request_bytes"), 0, "{log}");
    let table = MirrorTable::parse(&log);
    assert_eq!(table.captured, 2 * UPLOADS as u64, "{log}");
    assert!(table.row("shadow").balanced(), "{log}");
    eprintln!(
        "{test}: {} of {total} body bytes not copied in {} skbs; {} requests mirrored",
        summary.get("skipped_bytes"),
        summary.get("skipped"),
        got.len()
    );
}
