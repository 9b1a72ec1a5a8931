//! Privileged: per-flow sampling keeps or drops whole flows, in the configured share.
//!
//! For 0%, 25% and 100%, a python client makes FLOWS connections with one small POST each; every
//! flow the server saw is either entirely absent from the agent's pcap or present from its SYN
//! with every byte, and the share present is within binomial bounds.

use mirror_tests::agent::Agent;
use mirror_tests::oracle::{received, start_recording_server, tshark_flow_sizes};
use mirror_tests::{TempDir, Topology, privileged_or_skip};

const PORT: u16 = 8080;
const FLOWS: usize = 200;

const CLIENT: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.create_connection((host, port), timeout=10)
    body = b'flow=%d' % i
    s.sendall(b'POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
    # Half-close: the server reads until EOF after answering, so both sides finish at once.
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
"#;

#[test]
fn sampling_keeps_whole_flows_in_the_configured_share() {
    if !privileged_or_skip("sampling_keeps_whole_flows_in_the_configured_share") {
        return;
    }
    let topo = Topology::new();
    for percent in [0u32, 25, 100] {
        let dir = TempDir::new("sampling");
        let pcap = dir.path().join("agent.pcap");
        let server = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir.path());
        let mut agent = Agent::start(
            &topo.server,
            &[
                "--iface",
                &topo.server_if,
                "--port",
                "8080",
                "--capture-percent",
                &percent.to_string(),
                "--write-pcap",
                pcap.to_str().unwrap(),
            ],
            dir.path(),
        );
        let script = dir.path().join("client.py");
        std::fs::write(&script, CLIENT).unwrap();
        let out = topo
            .client
            .command("python3")
            .arg(&script)
            .args([Topology::SERVER_V4, "8080", &FLOWS.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server_saw = received(dir.path(), FLOWS);
        let (status, summary) = agent.stop(libc::SIGTERM);
        assert!(status.success(), "{}", agent.log());
        drop(server);

        let flows = tshark_flow_sizes(&pcap);
        let mut kept = 0;
        for (port, bytes) in &server_saw {
            match flows.get(port) {
                None => {}
                Some(&(_, captured, syn)) => {
                    assert!(syn, "{percent}%: flow {port} captured without its SYN");
                    assert_eq!(
                        captured,
                        bytes.len() as u64,
                        "{percent}%: flow {port} partly captured"
                    );
                    kept += 1;
                }
            }
        }
        assert!(
            flows.keys().all(|p| server_saw.contains_key(p)),
            "only the server's flows"
        );
        match percent {
            0 => {
                assert_eq!(kept, 0);
                assert_eq!(summary.get("records"), 0, "{summary:?}");
                assert!(summary.get("sampled_out") > 0, "{summary:?}");
            }
            100 => {
                assert_eq!(kept, FLOWS);
                assert_eq!(summary.get("sampled_out"), 0, "{summary:?}");
            }
            p => {
                // Binomial(n, p): accept mean +- 4.5 standard deviations (false alarm < 1e-5).
                let (n, p) = (FLOWS as f64, p as f64 / 100.0);
                let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
                let (lo, hi) = (mean - 4.5 * sd, mean + 4.5 * sd);
                assert!(
                    (lo..=hi).contains(&(kept as f64)),
                    "{percent}%: kept {kept} of {FLOWS} flows, expected {lo:.0}..{hi:.0}"
                );
                eprintln!("sampling {percent}%: kept {kept} of {FLOWS} flows");
            }
        }
        summary.assert_kernel_balanced();
    }
}
