//! Independent oracles: tshark reassembles TCP streams from the agent's `--write-pcap` file, and
//! a python3 server records the bytes it received per connection.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::{ChildGuard, NetNs};

/// The client-to-server bytes of every TCP stream in `pcap`, keyed by client port, as tshark's
/// `follow,tcp,raw` reassembles them.
pub fn tshark_client_streams(pcap: &Path) -> HashMap<u16, Vec<u8>> {
    let fields = tshark(&["-r", path(pcap), "-T", "fields", "-e", "tcp.stream"]);
    let mut streams: Vec<u32> = fields
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    if streams.is_empty() {
        return HashMap::new();
    }
    let mut args = vec!["-r".to_owned(), path(pcap).to_owned(), "-q".to_owned()];
    for s in &streams {
        args.push("-z".into());
        args.push(format!("follow,tcp,raw,{s}"));
    }
    let text = tshark(&args.iter().map(String::as_str).collect::<Vec<_>>());
    parse_follow(&text)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses `-z follow,tcp,raw` blocks: `Node 0` is the side that sent the first packet (the
/// client here, since only client packets are captured); its data lines are not indented.
fn parse_follow(text: &str) -> HashMap<u16, Vec<u8>> {
    let mut out = HashMap::new();
    let mut port: Option<u16> = None;
    let mut data = Vec::new();
    for line in text.lines() {
        if line.starts_with("=====") {
            if let Some(p) = port.take() {
                out.insert(p, std::mem::take(&mut data));
            }
        } else if let Some(node) = line.strip_prefix("Node 0: ") {
            port = node.rsplit(':').next().and_then(|p| p.trim().parse().ok());
            data.clear();
        } else if port.is_some()
            && !line.starts_with('\t')
            && !line.starts_with("Node ")
            && !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_hexdigit())
        {
            data.extend(
                (0..line.len() / 2)
                    .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).expect("hex")),
            );
        }
    }
    out
}

/// Per source port: (packets with payload, payload bytes, saw SYN), from tshark fields. Cheap
/// enough for hundreds of flows.
pub fn tshark_flow_sizes(pcap: &Path) -> HashMap<u16, (u64, u64, bool)> {
    let text = tshark(&[
        "-r",
        path(pcap),
        "-T",
        "fields",
        "-e",
        "tcp.srcport",
        "-e",
        "tcp.len",
        "-e",
        "tcp.flags.syn",
    ]);
    let mut out: HashMap<u16, (u64, u64, bool)> = HashMap::new();
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(port), Some(len), Some(syn)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(port), Ok(len)) = (port.parse::<u16>(), len.parse::<u64>()) else {
            continue;
        };
        let e = out.entry(port).or_default();
        if len > 0 {
            e.0 += 1;
        }
        e.1 += len;
        e.2 |= syn == "1" || syn == "True";
    }
    out
}

/// A python3 HTTP/1.1 server that answers one request per connection and writes everything it
/// received on that connection to `<dir>/<client port>.bin` once the client has closed.
pub const RECORDING_SERVER: &str = r#"
import os, socket, sys, threading
host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(1024)
def handle(c, addr):
    data = bytearray()
    try:
        while b'\r\n\r\n' not in data:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        head = bytes(data).split(b'\r\n\r\n', 1)[0]
        length = 0
        for line in head.split(b'\r\n')[1:]:
            k, _, v = line.partition(b':')
            if k.strip().lower() == b'content-length':
                length = int(v.strip())
        while len(data) - len(head) - 4 < length:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok')
        c.settimeout(5)
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    c.close()
    name = os.path.join(outdir, '%d.bin' % addr[1])
    with open(name + '.tmp', 'wb') as f:
        f.write(data)
    os.rename(name + '.tmp', name)
while True:
    c, addr = srv.accept()
    threading.Thread(target=handle, args=(c, addr), daemon=True).start()
"#;

/// Starts [`RECORDING_SERVER`] in `ns` on `host:port`, recording into `dir`; waits for the port.
pub fn start_recording_server(ns: &NetNs, host: &str, port: u16, dir: &Path) -> ChildGuard {
    let guard = spawn_recording_server(ns.command("python3"), host, port, dir);
    crate::wait_for_port(ns, port, std::time::Duration::from_secs(10));
    guard
}

/// Starts [`RECORDING_SERVER`] with `python3`, a command that runs python3 where it should
/// (a namespace, a cgroup), on `host:port`, recording into `dir`. Does not wait for the port.
pub fn spawn_recording_server(
    mut python3: Command,
    host: &str,
    port: u16,
    dir: &Path,
) -> ChildGuard {
    let script = dir.join("server.py");
    std::fs::write(&script, RECORDING_SERVER).expect("write server script");
    ChildGuard::spawn(
        "recording server",
        python3
            .arg(&script)
            .arg(host)
            .arg(port.to_string())
            .arg(dir),
    )
}

/// What the recording server received, by client port (waits for `expected` files).
pub fn received(dir: &Path, expected: usize) -> HashMap<u16, Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut out = HashMap::new();
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(port) = name
                .strip_suffix(".bin")
                .and_then(|p| p.parse::<u16>().ok())
            {
                out.insert(port, std::fs::read(e.path()).expect("read recording"));
            }
        }
        if out.len() >= expected {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server recorded {} of {expected} connections",
            out.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Asserts that `got` (what capture reassembled) is byte for byte what a server received,
/// naming `what` and the first differing offset.
pub fn assert_same_stream(what: &str, got: &[u8], sent: &[u8]) {
    assert!(
        got == sent,
        "{what}: captured {} bytes, server received {} (first difference at {:?})",
        got.len(),
        sent.len(),
        got.iter().zip(sent.iter()).position(|(a, b)| a != b)
    );
}
