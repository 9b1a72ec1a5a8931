//! Privileged: a connection whose local endpoint is registered with `FlowIgnore` before it
//! connects is never captured (the replay stage's protection against loops), while an ordinary
//! one next to it is. The registration names a different remote than the one connected to: the
//! map is keyed by the local endpoint only, as it must be when NAT rewrites the remote end.
//! And once a registered connection is `closed` and the removal delay has passed, a new
//! connection from the same local endpoint is captured again (checked to fail without `purge`).
//! The ports of registered endpoints are flagged in `MIRROR_IGNORE_PORTS` (the classifier looks
//! the map up only for them) and unflagged with their last endpoint.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use mirror_agent::capture::Segment;
use mirror_agent::capture::ebpf::ignore::FORGET_DELAY;
use mirror_agent::capture::ebpf::{
    CopyPolicy, Counters, FlowIgnore, LiveCapture, LiveConfig, Target,
};
use mirror_tests::oracle::start_recording_server;
use mirror_tests::{TempDir, Topology, privileged_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 8080;

/// An address nothing is sent to: the remote named at registration, standing for the pre-NAT
/// address of a mirror.
const DECOY: &str = "10.77.0.99:9";

/// One request from a socket bound to `bind` (port 0: any), registered as ignored first if
/// asked; returns the local endpoint. `SO_REUSEADDR` lets a test bind an endpoint again while its
/// previous connection is in TIME_WAIT (to another server port, so the 4-tuples differ).
async fn request_from(
    bind: SocketAddr,
    server: SocketAddr,
    ignore: Option<&FlowIgnore>,
) -> SocketAddr {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind(bind).unwrap();
    let local = sock.local_addr().unwrap();
    if let Some(ignore) = ignore {
        ignore.ignore(local, DECOY.parse().unwrap()).unwrap();
    }
    let mut stream = sock.connect(server).await.unwrap();
    stream.write_all(REQUEST).await.unwrap();
    // Half-close: the recording server reads until EOF after answering.
    stream.shutdown().await.unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).await.unwrap();
    local
}

const REQUEST: &[u8] = b"POST /m HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody";

fn any_client_port() -> SocketAddr {
    format!("{}:0", Topology::CLIENT_V4).parse().unwrap()
}

/// Runs a capture of `ports` on the node's veth while `client` runs in the client namespace
/// with the capture's ignore handle; returns the segments, the kernel counters and `client`'s
/// result.
fn with_capture<T: Send>(
    topo: &Topology,
    ports: Vec<u16>,
    client: impl AsyncFnOnce(&FlowIgnore) -> T + Send,
) -> (Vec<Segment>, Counters, T) {
    let (ignore_tx, ignore_rx) = mpsc::channel::<FlowIgnore>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let cfg = LiveConfig {
        target: Target::Interfaces(vec![topo.server_if.clone()]),
        skip_bodies: false,
        precise_clock: true,
        tls: Default::default(),
        tls_follow: false,
        tls_open_wait: None,
        ports,
        capture_basis_points: 10000,
        ring_size: 1 << 20,
        attach_egress: false,
        attach: Default::default(),
        // The variant the test run forces (MIRROR_CAPTURE_COPY), else the first that loads.
        copy: std::env::var("MIRROR_CAPTURE_COPY")
            .ok()
            .and_then(|v| CopyPolicy::parse(&v))
            .unwrap_or_default(),
    };
    std::thread::scope(|s| {
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
        let out = topo.client.enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(client(&ignore))
        });
        // Let the periodic drain pick up the last records.
        std::thread::sleep(Duration::from_millis(300));
        stop_tx.send(()).unwrap();
        let (segs, counters) = capture.join().expect("capture thread");
        (segs, counters, out)
    })
}

/// The payload bytes of the segments sent from `local`, and whether its SYN was captured.
fn captured_from(segments: &[Segment], local: SocketAddr) -> (bool, Vec<u8>) {
    let from: Vec<&Segment> = segments.iter().filter(|s| s.src == local).collect();
    let bytes = from
        .iter()
        .flat_map(|s| s.payload.iter().copied())
        .collect();
    (from.iter().any(|s| s.flags.syn()), bytes)
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
    let (segments, counters, (ignored_local, plain_local)) =
        with_capture(&topo, vec![PORT], async |ignore: &FlowIgnore| {
            let a = request_from(any_client_port(), server, Some(ignore)).await;
            assert_eq!(
                ignore.ports_flagged(),
                1,
                "the registered port's bit is set"
            );
            let b = request_from(any_client_port(), server, None).await;
            ignore.forget(a, server);
            assert_eq!(ignore.ports_flagged(), 0, "cleared with its one endpoint");
            (a, b)
        });

    assert!(
        !segments
            .iter()
            .any(|s| s.src == ignored_local || s.dst == ignored_local),
        "the ignored flow {ignored_local} was captured"
    );
    let (syn, bytes) = captured_from(&segments, plain_local);
    assert!(syn, "plain flow SYN captured");
    assert_eq!(bytes, REQUEST);
    assert!(
        counters.ignored >= 3,
        "SYN, request and FIN of the ignored flow counted: {counters:?}"
    );
    assert!(counters.balanced(), "{counters:?}");
}

/// After `closed` and the removal delay, the endpoint is captured again: a later socket that
/// gets the same local address and port is not mistaken for the agent's.
#[test]
fn a_closed_endpoint_is_captured_again_after_the_delay() {
    if !privileged_or_skip("a_closed_endpoint_is_captured_again_after_the_delay") {
        return;
    }
    const PORT2: u16 = PORT + 1;
    let (dir1, dir2) = (TempDir::new("ignore1"), TempDir::new("ignore2"));
    let topo = Topology::new();
    let _s1 = start_recording_server(&topo.server, Topology::SERVER_V4, PORT, dir1.path());
    let _s2 = start_recording_server(&topo.server, Topology::SERVER_V4, PORT2, dir2.path());
    let server = |p: u16| -> SocketAddr { format!("{}:{p}", Topology::SERVER_V4).parse().unwrap() };
    let (segments, counters, (local, pending)) =
        with_capture(&topo, vec![PORT, PORT2], async |ignore: &FlowIgnore| {
            let local = request_from(any_client_port(), server(PORT), Some(ignore)).await;
            ignore.closed(local);
            let pending = ignore.pending_removals();
            tokio::time::sleep(FORGET_DELAY + Duration::from_millis(100)).await;
            assert_eq!(ignore.ports_flagged(), 1, "set until the removal");
            ignore.purge();
            assert_eq!(ignore.pending_removals(), 0, "purged once due");
            assert_eq!(ignore.ports_flagged(), 0, "cleared with the removal");
            // The same local endpoint, another connection (to the other port: the first one's
            // 4-tuple is in TIME_WAIT).
            let again = request_from(local, server(PORT2), None).await;
            assert_eq!(again, local);
            (local, pending)
        });
    assert_eq!(pending, 1, "closed() queues the removal");
    let first: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.src == local && s.dst.port() == PORT)
        .collect();
    assert!(
        first.is_empty(),
        "the first connection was ignored: {first:?}"
    );
    let second: Vec<Segment> = segments
        .iter()
        .filter(|s| s.dst.port() == PORT2)
        .cloned()
        .collect();
    let (syn, bytes) = captured_from(&second, local);
    assert!(
        syn && bytes == REQUEST,
        "the second connection was captured"
    );
    assert!(counters.ignored >= 3, "{counters:?}");
    assert!(counters.balanced(), "{counters:?}");
}
