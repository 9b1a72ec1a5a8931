//! Privileged: a slow or stuck output never costs capture or the mirrors.
//!
//! The agent records into a FIFO read slowly (a sink far slower than the traffic) and writes
//! `--write-pcap` into a FIFO nobody reads, with the smallest output queues, while clients send
//! 64 KiB POSTs. The mirror must still get every request, byte for byte; the recording drops
//! whole requests for itself only, counted by reason, and what it did write is exactly what the
//! slow reader got; the stuck pcap sink neither hangs the exit nor goes uncounted.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use mirror_tests::mirror::{Behavior, assert_same_requests};
use mirror_tests::scenario::{
    Family, curl_ok, noise, start_agent, start_mirror, start_primary, stop_agent, url,
};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const MIRROR_PORT: u16 = 9001;
const REQUESTS: usize = 120;
const BODY: usize = 64 * 1024;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// The `mirror-agent: <name> output` block of the agent's stderr, as `key -> value`.
fn output_block(log: &str, name: &str) -> std::collections::HashMap<String, u64> {
    let header = format!("mirror-agent: {name} output");
    let mut lines = log.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "no {header} block in: {log}");
    lines
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_slow_recording_and_a_stuck_pcap_sink_drop_only_their_own_items() {
    if !privileged_or_skip("a_slow_recording_and_a_stuck_pcap_sink_drop_only_their_own_items") {
        return;
    }
    let dir = TempDir::new("output-isolation");
    let record = dir.path().join("record.fifo");
    let pcap = dir.path().join("pcap.fifo");
    mkfifo(&record);
    mkfifo(&pcap);

    // The pcap FIFO's reader: opened (non-blocking, so the agent's open for writing succeeds)
    // and never read.
    let _stuck_reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&pcap)
        .expect("open pcap fifo");
    // The recording's reader: about 200 KB/s, until the agent closes its end (bounded: 120 s).
    let slow = {
        let record = record.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&record).expect("open record fifo");
            let mut r = BufReader::with_capacity(4096, f);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut lines = Vec::new();
            let mut line = Vec::new();
            while Instant::now() < deadline {
                line.clear();
                // Reads at most a buffer (4 KiB) per fill, then pauses.
                let n = r.read_until(b'\n', &mut line).expect("read record fifo");
                if n == 0 {
                    break;
                }
                lines.push(String::from_utf8(line.clone()).expect("utf-8 record"));
                std::thread::sleep(Duration::from_millis(20 * n.div_ceil(4096) as u64));
            }
            lines
        })
    };

    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},name=shadow", url(mirror.addr)),
            "--record".into(),
            record.display().to_string(),
            "--write-pcap".into(),
            pcap.display().to_string(),
            "--output-queue-bytes".into(),
            "65536".into(),
        ],
    );

    // 120 POSTs of 64 KiB on one keep-alive connection (curl applies the body to every URL).
    let body = dir.path().join("body.bin");
    std::fs::write(&body, noise(BODY, 3)).unwrap();
    let base = url(primary.addr);
    let urls: Vec<String> = (0..REQUESTS)
        .map(|i| format!("{base}/upload/{i}"))
        .collect();
    let mut args = vec![
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "--data-binary".to_owned(),
        format!("@{}", body.display()),
    ];
    args.extend(urls);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_ok(&topo, &refs);

    let sent = primary.wait_for(
        REQUESTS,
        Duration::from_millis(300),
        Duration::from_secs(20),
    );
    assert_eq!(sent.len(), REQUESTS);
    let got = mirror.wait_for(
        REQUESTS,
        Duration::from_millis(500),
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let (summary, table) = stop_agent(&mut agent);
    // Two output threads may each wait 5 s for their sink, no more.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        started.elapsed()
    );
    let log = agent.log();

    // The mirror got every request, exactly as the primary did.
    assert_same_requests("mirror vs primary", &sent, &got);
    let row = table.row("shadow");
    assert_eq!(row.sent, REQUESTS as u64, "{log}");
    assert_eq!(row.dropped, 0, "{log}");
    // Capture lost nothing to the slow sinks.
    assert_eq!(summary.get("ring_full"), 0, "{log}");

    // The recording dropped for itself, counted, and every request is accounted for.
    let rec = output_block(&log, "record");
    let (written, queue_full, write_error, at_exit) = (
        rec["written"],
        rec["dropped.queue_full"],
        rec["dropped.write_error"],
        rec["dropped.at_exit"],
    );
    eprintln!("record output: {rec:?}");
    assert!(queue_full > 0, "the slow sink dropped nothing: {rec:?}");
    assert_eq!(write_error, 0, "{rec:?}");
    assert_eq!(
        written + queue_full + at_exit,
        REQUESTS as u64,
        "record counters do not add up: {rec:?}"
    );
    // What it wrote is what the reader got: whole records, each a request the primary served.
    let lines = slow.join().expect("reader thread");
    assert_eq!(lines.len() as u64, written, "{rec:?}");
    let served: Vec<&[u8]> = sent.iter().map(|r| r.bytes.as_slice()).collect();
    for line in &lines {
        let r = mirror_agent::record::read_line(line.trim_end()).expect("a whole record");
        assert!(
            served.contains(&&r.request.raw[..]),
            "a record that is not a served request"
        );
    }

    // The stuck pcap sink: drops counted, the exit not held up.
    let pcap_dropped = summary.get("pcap_dropped");
    assert!(pcap_dropped > 0, "{log}");
    let p = output_block(&log, "pcap");
    eprintln!("pcap output: {p:?}");
    assert_eq!(p["dropped.at_exit"] + p["dropped.queue_full"], pcap_dropped);
}
