//! Privileged: a connection whose local endpoint is registered with `FlowIgnore` before it
//! connects is never captured (the replay stage's protection against loops), while an ordinary
//! one next to it is. The registration names a different remote than the one connected to: the
//! map is keyed by the local endpoint only, as it must be when NAT rewrites the remote end.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use mirror_agent::capture::Segment;
use mirror_agent::capture::ebpf::{Counters, FlowIgnore, LiveCapture, LiveConfig};
use mirror_tests::oracle::start_recording_server;
use mirror_tests::{TempDir, Topology, privileged_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;

/// An address nothing is sent to: the remote named at registration, standing for the pre-NAT
/// address of a mirror.
const DECOY: &str = "10.77.0.99:9";

/// One request on a socket bound to the client address, registered as ignored first if asked.
async fn request(server: SocketAddr, ignore: Option<&FlowIgnore>) -> SocketAddr {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{}:0", Topology::CLIENT_V4).parse().unwrap())
        .unwrap();
    let local = sock.local_addr().unwrap();
    if let Some(ignore) = ignore {
        ignore.ignore(local, DECOY.parse().unwrap()).unwrap();
    }
    let mut stream = sock.connect(server).await.unwrap();
    stream
        .write_all(b"POST /m HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    // Half-close: the recording server reads until EOF after answering.
    stream.shutdown().await.unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).await.unwrap();
    local
}

#[test]
fn ignored_flow_is_not_captured() {
    if !privileged_or_skip("ignored_flow_is_not_captured") {
        return;
    }
    let dir = TempDir::new("ignore");
    let topo = Topology::new();
    let _server = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir.path());
    let server: SocketAddr = format!("{}:{PORT}", Topology::SERVER_V4).parse().unwrap();
    let (ignore_tx, ignore_rx) = mpsc::channel::<FlowIgnore>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let cfg = LiveConfig {
        iface: topo.server_if.clone(),
        ports: vec![PORT],
        capture_basis_points: 10000,
        ring_size: 1 << 20,
        capture_responses: false,
    };

    let (segments, counters, ignored_local, plain_local) = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            topo.server.enter(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mut cap = LiveCapture::start(cfg).expect("start capture");
                    ignore_tx.send(cap.flow_ignore()).unwrap();
                    let mut segs: Vec<Segment> = Vec::new();
                    loop {
                        tokio::select! {
                            b = cap.next_batch() => segs.extend(b.unwrap()),
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                if stop_rx.try_recv().is_ok() {
                                    break;
                                }
                            }
                        }
                    }
                    let counters: Counters = cap.counters().unwrap();
                    (segs, counters)
                })
            })
        });
        let ignore = ignore_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("capture started");
        let (ignored_local, plain_local) = topo.client.enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let a = request(server, Some(&ignore)).await;
                let b = request(server, None).await;
                ignore.forget(a, server);
                (a, b)
            })
        });
        // Let the periodic drain pick up the last records.
        std::thread::sleep(Duration::from_millis(300));
        stop_tx.send(()).unwrap();
        let (segs, counters) = capture.join().expect("capture thread");
        (segs, counters, ignored_local, plain_local)
    });

    assert!(
        !segments
            .iter()
            .any(|s| s.src == ignored_local || s.dst == ignored_local),
        "the ignored flow {ignored_local} was captured"
    );
    let plain: Vec<&Segment> = segments.iter().filter(|s| s.src == plain_local).collect();
    assert!(
        plain.iter().any(|s| s.flags.syn()),
        "plain flow SYN captured"
    );
    let bytes: Vec<u8> = plain
        .iter()
        .flat_map(|s| s.payload.iter().copied())
        .collect();
    assert_eq!(
        bytes,
        b"POST /m HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody"
    );
    assert!(
        counters.ignored >= 3,
        "SYN, request and FIN of the ignored flow counted: {counters:?}"
    );
    assert!(counters.balanced(), "{counters:?}");
}
