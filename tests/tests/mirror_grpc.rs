//! Privileged: gRPC over h2c, through the real binary and a real kernel, with grpcio (PyPI) on
//! both ends: a grpcio server is the primary, a grpcio client makes unary (1 KiB and 1 MiB),
//! client-streaming, server-streaming and bidirectional calls.
//! - To an HTTP/1.1 mirror (`protocol=h1`) each call arrives in its HTTP/1.1 form: the test
//!   checks that the agent decoded grpcio's HTTP/2 (its HPACK, Huffman strings and frame
//!   sizes) into the same method path, gRPC fields and length-prefixed message bytes the
//!   client sent, one request per call, nothing lost.
//! - To grpcio mirrors (`protocol=auto`: over HTTP/2, h2c) every call arrives as a gRPC call
//!   with the client's method and messages, and the mirrors' `grpc-status` is measured: 0 from
//!   a mirror that records the calls, 12 (UNIMPLEMENTED) from one that refuses them.
//! - With `--compare`, the primary's HTTP/2 responses are decoded from its egress (their own
//!   HPACK table) and compared with each mirror's: a mirror running the same service matches
//!   on every call; the refusing one differs on every call, in `grpc-status` (a trailer,
//!   compared as a field) and in the body.

use std::time::Duration;

use mirror_tests::agent::ledger;
use mirror_tests::mirror::{Behavior, compare_row};
use mirror_tests::scenario::{Family, PRIMARY_PORT, start_agent, start_mirror, stop_agent, url};
use mirror_tests::{ChildGuard, TempDir, Topology, privileged_or_skip, wait_for_port};

/// The grpcio peers: `server HOST:PORT` or `client HOST:PORT`. Messages are raw bytes (no
/// protobuf: identity serializers), so the test knows every byte on the wire.
const PEER: &str = r#"
import sys, time, grpc
from concurrent import futures

ident = lambda b: b

def msg(tag, n):
    return (tag * (n // len(tag) + 1))[:n]

def unary(req, ctx):
    return req[:16]

def collect(it, ctx):
    return b"%d" % sum(len(m) for m in it)

def watch(req, ctx):
    for i in range(3):
        yield req + b"-%d" % i

def chat(it, ctx):
    for m in it:
        yield m

def serve(addr):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                    options=[("grpc.max_receive_message_length", 8 << 20)])
    h = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Collect": grpc.stream_unary_rpc_method_handler(collect, ident, ident),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
    }
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("mirror.Echo", h),))
    s.add_insecure_port(addr)
    s.start()
    s.wait_for_termination()

def record(addr, log):
    # Any method: every request message read, one line per call: method, message sizes.
    def handle(method):
        def h(it, ctx):
            sizes = [len(m) for m in it]
            with open(log, "a") as f:
                f.write("%s %s\n" % (method, ",".join(map(str, sizes))))
            yield b"ok"
        return grpc.stream_stream_rpc_method_handler(h, ident, ident)
    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            return handle(details.method)
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(Any(),),
                    options=[("grpc.max_receive_message_length", 8 << 20)])
    s.add_insecure_port(addr)
    s.start()
    s.wait_for_termination()

def refuse(addr):
    # No handler at all: every call is answered UNIMPLEMENTED (12).
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    s.add_insecure_port(addr)
    s.start()
    s.wait_for_termination()

def steady(addr, n, out):
    # One channel (one connection) opened now: n unary calls, 100 ms apart; the count of
    # calls made goes to `out` as they are made.
    ch = grpc.insecure_channel(addr)
    grpc.channel_ready_future(ch).result(timeout=10)
    u = ch.unary_unary("/mirror.Echo/Unary", ident, ident)
    for i in range(int(n)):
        assert u(msg(b"steady", 64), timeout=10) == msg(b"steady", 16)
        with open(out, "w") as f:
            f.write("%d" % (i + 1))
        time.sleep(0.1)
    print("steady ok")

def one(addr):
    ch = grpc.insecure_channel(addr)
    u = ch.unary_unary("/mirror.Echo/Fresh", ident, ident)
    try:
        u(b"fresh", timeout=10)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
    print("one ok")

def client(addr):
    ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 8 << 20)])
    grpc.channel_ready_future(ch).result(timeout=10)
    u = ch.unary_unary("/mirror.Echo/Unary", ident, ident)
    assert u(msg(b"small", 1024), timeout=10) == msg(b"small", 16)
    assert u(msg(b"large", 1 << 20), timeout=20) == msg(b"large", 16)
    c = ch.stream_unary("/mirror.Echo/Collect", ident, ident)
    assert c(iter([msg(b"c1", 100), msg(b"c2", 200), msg(b"c3", 300)]), timeout=10) == b"600"
    w = ch.unary_stream("/mirror.Echo/Watch", ident, ident)
    assert [m for m in w(b"tick", timeout=10)] == [b"tick-0", b"tick-1", b"tick-2"]
    b = ch.stream_stream("/mirror.Echo/Chat", ident, ident)
    assert [m for m in b(iter([b"hello", b"world"]), timeout=10)] == [b"hello", b"world"]
    print("calls ok")

{"server": serve, "client": client, "record": record, "refuse": refuse, "steady": steady,
 "one": one}[sys.argv[1]](*sys.argv[2:])
"#;

/// gRPC's length-prefixed messages (uncompressed).
fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn msg(tag: &[u8], n: usize) -> Vec<u8> {
    tag.iter().copied().cycle().take(n).collect()
}

fn grpc_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A test's namespaces with the grpcio primary listening, and the peer script.
struct GrpcWorld {
    dir: TempDir,
    script: std::path::PathBuf,
    topo: Topology,
    addr: String,
    _server: ChildGuard,
}

/// The world of `test`, or `None` after saying why it cannot run (a failure instead when
/// privileged tests are required, as in CI).
fn grpc_world(test: &str, dir: &str) -> Option<GrpcWorld> {
    if !privileged_or_skip(test) {
        return None;
    }
    if !grpc_available() {
        eprintln!("SKIPPED {test}: python3 has no grpc module (cargo xtask setup installs grpcio)");
        assert_ne!(
            std::env::var("MIRROR_REQUIRE_PRIVILEGED").as_deref(),
            Ok("1"),
            "grpcio is required"
        );
        return None;
    }
    let dir = TempDir::new(dir);
    let script = dir.path().join("peer.py");
    std::fs::write(&script, PEER).expect("write peer.py");
    let topo = Topology::new();
    let addr = format!("{}:{PRIMARY_PORT}", Topology::SERVER_V4);
    let mut cmd = topo.server.command("python3");
    cmd.arg(&script).args(["server", &addr]);
    let server = ChildGuard::spawn("grpc server", &mut cmd);
    wait_for_port(&topo.server, PRIMARY_PORT, Duration::from_secs(10));
    Some(GrpcWorld {
        dir,
        script,
        topo,
        addr,
        _server: server,
    })
}

/// The grpcio client's five calls (unary 1 KiB and 1 MiB, the three streaming kinds) against
/// `addr`, from the client namespace; each checks its answer.
fn grpc_client_calls(topo: &Topology, script: &std::path::Path, addr: &str) {
    let out = topo
        .client
        .command("python3")
        .arg(script)
        .args(["client", addr])
        .output()
        .expect("grpc client");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("calls ok"),
        "grpc client: {out:?}"
    );
}

#[test]
fn grpc_calls_are_decoded_with_their_messages() {
    let test = "grpc_calls_are_decoded_with_their_messages";
    let Some(GrpcWorld {
        dir,
        script,
        topo,
        addr,
        _server,
    }) = grpc_world(test, "grpc")
    else {
        return;
    };
    let mirror = start_mirror(&topo, Family::V4, 9051, Behavior::Ok);
    // The gRPC mirrors, on the server namespace's loopback as the recording one.
    let calls = dir.path().join("calls.log");
    let mut cmd = topo.server.command("python3");
    cmd.arg(&script)
        .args(["record", "127.0.0.1:9052"])
        .arg(&calls);
    let _recorder = ChildGuard::spawn("grpc mirror", &mut cmd);
    let mut cmd = topo.server.command("python3");
    cmd.arg(&script).args(["refuse", "127.0.0.1:9053"]);
    let _refuser = ChildGuard::spawn("grpc refusing mirror", &mut cmd);
    wait_for_port(&topo.server, 9052, Duration::from_secs(10));
    wait_for_port(&topo.server, 9053, Duration::from_secs(10));
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},protocol=h1", url(mirror.addr)),
            "--mirror".into(),
            "http://127.0.0.1:9052,name=grpc-record".into(),
            "--mirror".into(),
            "http://127.0.0.1:9053,name=grpc-refuse".into(),
        ],
    );

    grpc_client_calls(&topo, &script, &addr);
    let got = mirror.wait_for(5, Duration::from_millis(500), Duration::from_secs(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut recorded = String::new();
    while std::time::Instant::now() < deadline {
        recorded = std::fs::read_to_string(&calls).unwrap_or_default();
        if recorded.lines().count() >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    let lines: Vec<String> = got.iter().map(|r| r.line()).collect();
    assert_eq!(got.len(), 5, "{lines:?}\n{log}");
    let want: [(&str, Vec<Vec<u8>>); 5] = [
        ("/mirror.Echo/Unary", vec![msg(b"small", 1024)]),
        ("/mirror.Echo/Unary", vec![msg(b"large", 1 << 20)]),
        (
            "/mirror.Echo/Collect",
            vec![msg(b"c1", 100), msg(b"c2", 200), msg(b"c3", 300)],
        ),
        ("/mirror.Echo/Watch", vec![b"tick".to_vec()]),
        (
            "/mirror.Echo/Chat",
            vec![b"hello".to_vec(), b"world".to_vec()],
        ),
    ];
    // Each call is a stream of its own, sent concurrently: the mirror may get them in any
    // order, so each expected call is found by its path and messages.
    for (i, (path, messages)) in want.iter().enumerate() {
        let body = framed(messages);
        let r = got
            .iter()
            .find(|r| r.line().contains(&format!(" {path} ")) && r.bytes.ends_with(&body))
            .unwrap_or_else(|| panic!("call {i} ({path}) not at the mirror: {lines:?}"));
        let text = String::from_utf8_lossy(&r.bytes[..r.bytes.len().min(2048)]).into_owned();
        assert!(
            r.line() == format!("POST {path} HTTP/1.1"),
            "call {i}: {}",
            r.line()
        );
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("\r\ncontent-type: application/grpc"),
            "{text}"
        );
        assert!(lower.contains("\r\nte: trailers\r\n"), "{text}");
        assert!(lower.contains("\r\nuser-agent: grpc-python"), "{text}");
        assert!(
            r.bytes.ends_with(&body),
            "call {i} ({path}): the mirror's body is not the client's messages"
        );
        assert!(
            lower.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{text}"
        );
    }
    assert_eq!(table.row(&mirror.addr.to_string()).sent, 5, "{log}");
    // Over HTTP/2 to grpcio: the same calls, methods and messages (order of arrival may
    // differ: each call is its own stream).
    let mut calls: Vec<&str> = recorded.lines().collect();
    calls.sort_unstable();
    assert_eq!(
        calls,
        [
            "/mirror.Echo/Chat 5,5",
            "/mirror.Echo/Collect 100,200,300",
            "/mirror.Echo/Unary 1024",
            "/mirror.Echo/Unary 1048576",
            "/mirror.Echo/Watch 4",
        ],
        "{log}"
    );
    for (name, status) in [("grpc-record", "0 x5"), ("grpc-refuse", "12 x5")] {
        let row = table.row(name);
        assert_eq!(
            (row.sent, row.errors, row.answered()),
            (5, 0, 5),
            "{name}: {log}"
        );
        assert!(
            log.contains(&format!("  {name}: dropped:"))
                && log.lines().any(|l| l.starts_with(&format!("  {name}: "))
                    && l.ends_with(&format!("; grpc-status: {status}"))),
            "{name}: grpc-status {status} in the exit table: {log}"
        );
    }
    assert_eq!(ledger(&log, "h2.requests"), 5, "{log}");
    assert_eq!(ledger(&log, "lost.h2_bytes"), 0, "{log}");
    assert_eq!(ledger(&log, "lost.h2_streams"), 0, "{log}");
}

/// A gRPC connection opened before the agent started: its calls cannot be decoded (the HPACK
/// table was built before the capture), so the agent counts the connection and its streams
/// under their own names and mirrors none of them; a connection opened afterwards is decoded
/// and mirrored.
#[test]
fn a_grpc_connection_opened_before_the_agent_is_counted_never_guessed() {
    let test = "a_grpc_connection_opened_before_the_agent_is_counted_never_guessed";
    let Some(GrpcWorld {
        dir,
        script,
        topo,
        addr,
        _server,
    }) = grpc_world(test, "grpc-before")
    else {
        return;
    };
    let mirror = start_mirror(&topo, Family::V4, 9051, Behavior::Ok);

    // The steady client: 60 calls over about 6 s on one connection, started first.
    let made = dir.path().join("made");
    let mut cmd = topo.client.command("python3");
    cmd.arg(&script).args(["steady", &addr, "60"]).arg(&made);
    let mut steady = ChildGuard::spawn("steady grpc client", &mut cmd);
    let calls_made = || {
        std::fs::read_to_string(&made)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while calls_made() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the steady client made no calls"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!("{},protocol=h1", url(mirror.addr)),
        ],
    );
    let before = calls_made();
    assert!(
        steady.wait_timeout(Duration::from_secs(30)).success(),
        "steady client"
    );
    let during = 60 - before;
    // A connection opened now is decoded from its start and mirrored.
    let out = topo
        .client
        .command("python3")
        .arg(&script)
        .args(["one", &addr])
        .output()
        .expect("grpc client");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("one ok"),
        "{out:?}"
    );
    let got = mirror.wait_for(1, Duration::from_millis(500), Duration::from_secs(10));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    let lines: Vec<String> = got.iter().map(|r| r.line()).collect();
    assert_eq!(lines, ["POST /mirror.Echo/Fresh HTTP/1.1"], "{log}");
    assert_eq!(table.row(&mirror.addr.to_string()).sent, 1, "{log}");
    assert_eq!(ledger(&log, "h2.midstream_flows"), 1, "{log}");
    let counted = ledger(&log, "lost.h2_midstream_streams");
    println!("{counted} midstream streams counted, {during} calls made after the agent started");
    // Each call after the agent began to capture is one stream, counted. `during` is read
    // from the client's own count when the agent reports it captures, so a call or two on
    // either side of that moment may fall either way.
    let during = u64::from(during);
    assert!(
        counted + 2 >= during && counted <= during + 2,
        "{counted} midstream streams counted; {during} calls were made after the agent started\n{log}"
    );
    assert!(ledger(&log, "lost.h2_midstream_bytes") > 0, "{log}");
    assert_eq!(ledger(&log, "h2.flows"), 1, "the fresh connection: {log}");
    assert_eq!(ledger(&log, "h2.requests"), 1, "{log}");
}

#[test]
fn grpc_responses_are_compared_with_the_primarys() {
    let test = "grpc_responses_are_compared_with_the_primarys";
    let Some(GrpcWorld {
        dir,
        script,
        topo,
        addr,
        _server,
    }) = grpc_world(test, "grpc-compare")
    else {
        return;
    };
    let mut cmd = topo.server.command("python3");
    cmd.arg(&script).args(["server", "127.0.0.1:9054"]);
    let _same = ChildGuard::spawn("grpc mirror (same service)", &mut cmd);
    let mut cmd = topo.server.command("python3");
    cmd.arg(&script).args(["refuse", "127.0.0.1:9053"]);
    let _refuser = ChildGuard::spawn("grpc refusing mirror", &mut cmd);
    wait_for_port(&topo.server, 9053, Duration::from_secs(10));
    wait_for_port(&topo.server, 9054, Duration::from_secs(10));
    let diff_log = dir.path().join("diff.jsonl");
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            "http://127.0.0.1:9054,name=grpc-same".into(),
            "--mirror".into(),
            "http://127.0.0.1:9053,name=grpc-refuse".into(),
            "--compare".into(),
            "--diff-log".into(),
            diff_log.display().to_string(),
        ],
    );
    grpc_client_calls(&topo, &script, &addr);
    // Both mirrors' answers reach the comparison (bounded wait on the agent's own table).
    std::thread::sleep(Duration::from_secs(2));
    let (_, table) = stop_agent(&mut agent);
    let log = agent.log();
    for name in ["grpc-same", "grpc-refuse"] {
        let row = table.row(name);
        assert_eq!((row.sent, row.answered()), (5, 5), "{name}: {log}");
    }
    assert_eq!(ledger(&log, "h2.responses"), 5, "{log}");
    assert_eq!(ledger(&log, "lost.h2_server_bytes"), 0, "{log}");
    assert_eq!(ledger(&log, "lost.h2_response_streams"), 0, "{log}");
    let same = compare_row(&log, "grpc-same");
    let refuse = compare_row(&log, "grpc-refuse");
    for (k, want_same, want_refuse) in [
        ("compared", 5, 5),
        ("status_class", 0, 0),
        ("status_code", 0, 0),
        ("no_response", 0, 0),
        ("header", 0, 5),
        ("body", 0, 5),
        ("content_skipped", 0, 0),
    ] {
        assert_eq!(
            same.get(k),
            Some(&want_same),
            "grpc-same {k}: {same:?}\n{log}"
        );
        assert_eq!(
            refuse.get(k),
            Some(&want_refuse),
            "grpc-refuse {k}: {refuse:?}\n{log}"
        );
    }
    // The diff log names the differing trailer on every call, with both values.
    let text = std::fs::read_to_string(&diff_log).expect("diff log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    for l in &lines {
        assert_eq!(l["mirror"], "grpc-refuse", "{l}");
        let grpc_status = l["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|h| h["name"] == "grpc-status"))
            .unwrap_or_else(|| panic!("grpc-status not among the differences: {l}"));
        assert_eq!(
            (
                grpc_status["primary"].as_str(),
                grpc_status["mirror"].as_str()
            ),
            (Some("0"), Some("12")),
            "{l}"
        );
    }
}
