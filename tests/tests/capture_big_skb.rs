//! Privileged: skbs with more than 64 KiB of TCP payload (BIG TCP) are carried in several
//! records and reassemble byte-identical, on both classifier variants (one copy into ring
//! reservations, scratch copy).
//!
//! The veth pair of the test topology gets `gso_max_size`/`gro_max_size` 196608, which enables
//! BIG TCP for IPv6 (and for IPv4 with `gso_ipv4_max_size` where `ip` and the kernel support it).
//! A client sends one large POST with a single `sendall`, so TCP builds skbs up to the limit; the
//! agent captures on the server's veth end with `--write-pcap`, and tshark reassembles the pcap
//! independently of the agent's code.

use std::path::Path;

use mirror_tests::agent::{Agent, Summary};
use mirror_tests::oracle::{received, start_recording_server, tshark_client_streams};
use mirror_tests::scenario::noise;
use mirror_tests::{NetNs, TempDir, Topology, privileged_or_skip};

const PORT: u16 = 8080;
/// The GSO/GRO limit asked of the veth: three times the legacy 64 KiB.
const BIG: u32 = 196_608;
const BODY_LEN: usize = 2 << 20;

/// Sets `settings` (`ip link set dev IF <name> <value>...`) on both veth ends; the error of the
/// first refusal, if any.
fn set_link(topo: &Topology, settings: &[&str]) -> Result<(), String> {
    for (ns, ifname) in [
        (&topo.server, &topo.server_if),
        (&topo.client, &topo.client_if),
    ] {
        let out = ns
            .command("ip")
            .args(["link", "set", "dev", ifname])
            .args(settings)
            .output()
            .expect("run ip");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
    }
    Ok(())
}

/// Sends one POST of `body` to `host` from `ns` in a single `sendall` and reads the response.
fn post_in_one_write(ns: &NetNs, host: &str, body: &Path) {
    let script = format!(
        "import socket\n\
         body = open({body:?}, 'rb').read()\n\
         s = socket.create_connection(({host:?}, {PORT}), timeout=20)\n\
         s.sendall(b'POST /big HTTP/1.1\\r\\nHost: big\\r\\nContent-Length: %d\\r\\n\\r\\n' \
         % len(body) + body)\n\
         r = s.recv(100)\n\
         assert r.startswith(b'HTTP/1.1 200'), r\n",
        body = body.display().to_string(),
    );
    let out = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One capture of one POST to `host` with the classifier variant `copy`; checks the reassembly
/// and the counters, returns the summary.
fn capture_big_post(topo: &Topology, host: &str, copy: &str) -> Summary {
    let dir = TempDir::new("bigskb");
    let body = dir.path().join("body.bin");
    std::fs::write(&body, noise(BODY_LEN, 99)).expect("write body");
    let pcap = dir.path().join("agent.pcap");
    let _server = start_recording_server(&topo.server, host, PORT, dir.path());
    let mut agent = Agent::start_with_env(
        &topo.server,
        &[
            "--iface",
            &topo.server_if,
            "--port",
            &PORT.to_string(),
            "--write-pcap",
            pcap.to_str().expect("utf-8 path"),
        ],
        &[("MIRROR_CAPTURE_COPY", copy)],
        dir.path(),
    );
    post_in_one_write(&topo.client, host, &body);
    let server_saw = received(dir.path(), 1);
    let (status, summary) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "agent exit {status}: {}", agent.log());

    let captured = tshark_client_streams(&pcap);
    let (port, sent) = server_saw.iter().next().expect("one connection");
    assert!(sent.len() > BODY_LEN, "server got the whole request");
    let got = captured
        .get(port)
        .unwrap_or_else(|| panic!("{copy} {host}: flow from port {port} not captured"));
    mirror_tests::oracle::assert_same_stream(&format!("{copy} {host}"), got, sent);
    summary.assert_kernel_balanced();
    for zero in ["truncated", "ring_full", "chunks_lost", "load_errors"] {
        assert_eq!(summary.get(zero), 0, "{copy} {host} {zero}: {summary:?}");
    }
    assert_eq!(
        summary.get("records"),
        summary.get("segments"),
        "{summary:?}"
    );
    summary
}

#[test]
fn big_tcp_skbs_are_chunked_and_reassemble_byte_identical() {
    if !privileged_or_skip("big_tcp_skbs_are_chunked_and_reassemble_byte_identical") {
        return;
    }
    for copy in ["reserve", "scratch"] {
        let topo = Topology::new();
        // IPv6 BIG TCP: gso_max_size above 64 KiB (kernel 5.19+).
        let big = BIG.to_string();
        let v6_big = match set_link(&topo, &["gso_max_size", &big, "gro_max_size", &big]) {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "big_tcp ({copy}): the veth refuses gso_max_size {BIG} ({e}); testing with \
                     the largest skbs it makes"
                );
                false
            }
        };
        // IPv4 BIG TCP needs gso_ipv4_max_size (kernel 6.3+, iproute2 6.3+).
        let v4_big = match set_link(
            &topo,
            &["gso_ipv4_max_size", &big, "gro_ipv4_max_size", &big],
        ) {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "big_tcp ({copy}): IPv4 BIG TCP not available here ({e}); IPv4 runs with \
                     the largest skbs the veth makes"
                );
                false
            }
        };
        for (host, is_big) in [(Topology::SERVER_V6, v6_big), (Topology::SERVER_V4, v4_big)] {
            let s = capture_big_post(&topo, host, copy);
            eprintln!(
                "big_tcp ({copy}, {host}): largest skb payload {} bytes, {} records, {} with a \
                 chunk offset > 0",
                s.get("max_skb_payload"),
                s.get("records"),
                s.get("chunked_records")
            );
            if is_big {
                assert!(
                    s.get("max_skb_payload") > 65536 && s.get("chunked_records") > 0,
                    "{copy} {host}: BIG TCP is on, yet no skb over 64 KiB was chunked: {s:?}"
                );
            } else {
                // Without BIG TCP an skb holds at most 64 KiB: one record each.
                assert_eq!(s.get("chunked_records"), 0, "{copy} {host}: {s:?}");
            }
        }
        if !v6_big {
            // Nothing above tested chunking: that is a skip of the point of this test.
            eprintln!("SKIPPED chunking part of big_tcp ({copy}): no BIG TCP on this kernel");
        }
    }
}
