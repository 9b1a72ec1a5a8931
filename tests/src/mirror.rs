//! Mirror end-to-end helpers: a recording HTTP/1.x server (in Rust, on a listener created inside
//! a test's namespace) that keeps the exact bytes of every request it receives and answers the
//! way a test needs (200, never, 500 after a delay, reset), and a parser for the agent's
//! per-mirror exit table.
//!
//! Request framing is hand-written rather than taken from the agent's `http` module on purpose:
//! the oracle must not share code with what it checks. Heads are parsed with httparse; bodies
//! are framed by Content-Length or chunked coding (RFC 9112 §6.3), trailers included.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::NetNs;

/// How a [`RecordingServer`] answers each request it has recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// `200 OK` with a body naming the request (`<method> <target> <body length>`).
    Ok,
    /// Reads and records requests, never answers; the connection stays open.
    Never,
    /// `500` after the given delay.
    Error500After(Duration),
    /// Records the request, then resets the connection (SO_LINGER 0).
    Reset,
    /// A small JSON API for the comparison tests (see [`json_api`]), as the primary or the
    /// mirror answers it.
    JsonApi(ApiSide),
    /// A JSON API whose answers differ on every response, like a real service's (see
    /// [`noisy_api`]), as one instance of it.
    NoisyApi(Instance),
}

/// Which instance of [`noisy_api`] a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// The primary, and a second instance of its version (the baseline mirror).
    Current(&'static str),
    /// The version under test: one real change, `plan` on `/users/N`.
    Candidate(&'static str),
}

/// A service's API whose answers differ between instances and on every response: a response
/// id and a timestamp in the JSON, the instance's name (JSON and `X-Served-By`), per-response
/// `X-Trace` and `X-Request-Id` headers; `/orders/ID` has a timestamp in each item, `/health` is
/// text naming the instance. None of these but `X-Request-Id` is ignored by the agent by default. The candidate changes one real
/// field on one endpoint: `$.user.plan` of `/users/N` is `pro` instead of `free`.
pub fn noisy_api(instance: Instance, request: &[u8]) -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (path, stamp) = path_and_stamp(request);
    let path = path.as_str();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (name, plan) = match instance {
        Instance::Current(name) => (name, "free"),
        Instance::Candidate(name) => (name, "pro"),
    };
    let response_id = format!("{name}-{n}-{stamp:x}");
    let (status, content_type, body) = if let Some(id) = path.strip_prefix("/users/") {
        (
            200,
            "application/json",
            format!(
                r#"{{"response_id":"{response_id}","at":{stamp},"served_by":"{name}","user":{{"id":{id},"name":"user-{id}","plan":"{plan}"}}}}"#
            ),
        )
    } else if let Some(id) = path.strip_prefix("/orders/") {
        let items: Vec<String> = (0..3)
            .map(|i| format!(r#"{{"sku":"sku-{i}","qty":{},"at":{}}}"#, i + 1, stamp + i))
            .collect();
        (
            200,
            "application/json",
            format!(
                r#"{{"order":"{id}","items":[{}],"served_by":"{name}","response_id":"{response_id}"}}"#,
                items.join(",")
            ),
        )
    } else if path == "/health" {
        (200, "text/plain", format!("ok from {name} at {stamp}\n"))
    } else {
        (
            404,
            "application/json",
            r#"{"error":"not found"}"#.to_string(),
        )
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nX-Served-By: {name}\r\n\
         X-Trace: {n:x}-{stamp:x}\r\nX-Request-Id: {response_id}\r\nContent-Length: {}\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    )
    .into_bytes()
}

/// Which side of the comparison a [`Behavior::JsonApi`] server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiSide {
    Primary,
    Mirror,
}

/// The request's path (target without the query) and the time now in nanoseconds, for the
/// test APIs' answers.
fn path_and_stamp(request: &[u8]) -> (String, u128) {
    let line = String::from_utf8_lossy(&request[..find(request, b"\r\n").unwrap_or(0)]);
    let target = line.split(' ').nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_owned();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (path, stamp)
}

/// The JSON API: `/a`, `/b` and `/c` (query ignored), each answer with a `Date`, `Server` and
/// `X-Request-Id` that differ on every response (ignored by the comparison by default).
/// The primary answers every path 200 with Content-Length. The mirror answers `/a` with 500,
/// `/b` with the field `count` different, and `/c` with the same JSON written differently
/// (other key order and spacing) in chunked coding. Anything else: 404 on both sides.
pub fn json_api(side: ApiSide, request: &[u8], index: usize) -> Vec<u8> {
    let (path, stamp) = path_and_stamp(request);
    let (status, body, chunked) = match (side, path.as_str()) {
        (ApiSide::Primary, "/a") => (200, r#"{"path":"/a","ok":true}"#.to_string(), false),
        (ApiSide::Mirror, "/a") => (500, r#"{"error":"boom"}"#.to_string(), false),
        (ApiSide::Primary, "/b") => (200, r#"{"id":2,"name":"bee","count":3}"#.to_string(), false),
        (ApiSide::Mirror, "/b") => (200, r#"{"id":2,"name":"bee","count":4}"#.to_string(), false),
        (ApiSide::Primary, "/c") => (200, r#"{"id":3,"items":[1,2,3]}"#.to_string(), false),
        (ApiSide::Mirror, "/c") => (200, r#"{ "items": [1, 2, 3], "id": 3 }"#.to_string(), true),
        _ => (404, r#"{"error":"not found"}"#.to_string(), false),
    };
    let reason = match status {
        200 => "OK",
        500 => "Internal Server Error",
        _ => "Not Found",
    };
    let server = match side {
        ApiSide::Primary => "api-primary",
        ApiSide::Mirror => "api-mirror",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nServer: {server}\r\n\
         Date: {stamp}\r\nX-Request-Id: {side:?}-{index}-{stamp}\r\n"
    );
    if chunked {
        let (a, b) = body.split_at(body.len() / 2);
        out.push_str(&format!(
            "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        ));
    } else {
        out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    }
    out.into_bytes()
}

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The client's address (its port names the connection).
    pub peer: SocketAddr,
    /// Index of the request on its connection.
    pub index: usize,
    /// The exact bytes: head, body and (for chunked bodies) chunk framing and trailers.
    pub bytes: Vec<u8>,
}

impl Received {
    /// The request line, for messages.
    pub fn line(&self) -> String {
        let end = self
            .bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(self.bytes.len().min(80));
        String::from_utf8_lossy(&self.bytes[..end]).into_owned()
    }
}

/// A recording HTTP server on a listener inside a namespace; stops on drop.
pub struct RecordingServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingServer {
    /// Listens on `addr` inside `ns` and serves with `behavior`.
    pub fn start(ns: &NetNs, addr: SocketAddr, behavior: Behavior) -> Self {
        let listener = ns.enter(|| {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind recording server {addr}: {e}"))
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let (rec, st) = (rec.clone(), st.clone());
                        std::thread::spawn(move || serve(conn, peer, behavior, &rec, &st));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until `n` requests arrived and no more arrive for `quiet`, or `timeout` passes;
    /// returns what was received.
    pub fn wait_for(&self, n: usize, quiet: Duration, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut last = (self.count(), Instant::now());
        loop {
            let c = self.count();
            if c != last.0 {
                last = (c, Instant::now());
            }
            if (c >= n && last.1.elapsed() >= quiet) || Instant::now() > deadline {
                return self.received();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Connection threads poll `stop` on their read timeout and end on their own.
    }
}

fn serve(
    mut conn: TcpStream,
    peer: SocketAddr,
    behavior: Behavior,
    rec: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = conn.set_nonblocking(false);
    // Head and body go out in two writes: without NODELAY, Nagle plus delayed ACKs cost 40 ms
    // per keep-alive request.
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf: Vec<u8> = Vec::new();
    let mut index = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        // Take every complete request in the buffer (pipelining).
        while let Some(len) = request_len(&buf) {
            let bytes: Vec<u8> = buf.drain(..len).collect();
            let summary = summarize(&bytes);
            let api = match behavior {
                Behavior::JsonApi(side) => json_api(side, &bytes, index),
                Behavior::NoisyApi(instance) => noisy_api(instance, &bytes),
                _ => Vec::new(),
            };
            rec.lock().unwrap().push(Received { peer, index, bytes });
            index += 1;
            match behavior {
                Behavior::Ok => {
                    let body = summary.into_bytes();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                        return;
                    }
                }
                Behavior::Never => {}
                Behavior::Error500After(d) => {
                    std::thread::sleep(d);
                    let r = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror";
                    if conn.write_all(r).is_err() {
                        return;
                    }
                }
                Behavior::Reset => {
                    reset(&conn);
                    return;
                }
                Behavior::JsonApi(_) | Behavior::NoisyApi(_) => {
                    if conn.write_all(&api).is_err() {
                        return;
                    }
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match conn.read(&mut chunk) {
            Ok(0) => {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Closes with RST: SO_LINGER with a zero timeout makes close(2) abort the connection.
fn reset(conn: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn summarize(req: &[u8]) -> String {
    let head_end = find(req, b"\r\n\r\n").map_or(req.len(), |i| i + 4);
    let line = String::from_utf8_lossy(&req[..find(req, b"\r\n").unwrap_or(0)]).into_owned();
    format!("{line} {}\n", req.len() - head_end)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Length of the first complete request in `buf`, or `None` if it is not complete yet.
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        // Not HTTP: keep everything so the test sees it as one unparseable "request".
        Err(_) => return (!buf.is_empty()).then_some(buf.len()),
    };
    let mut chunked = false;
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = String::from_utf8_lossy(h.value).trim().parse().unwrap_or(0);
        }
    }
    if chunked {
        chunked_len(&buf[head..]).map(|n| head + n)
    } else {
        (buf.len() >= head + length).then_some(head + length)
    }
}

/// Length of a complete chunked body (chunks, last chunk, trailers, final CRLF).
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = pos + find(&b[pos..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[pos..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer fields until an empty line.
            loop {
                let end = pos + find(&b[pos..], b"\r\n")?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some(pos);
                }
            }
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        pos += size + 2;
    }
}

/// Compares two lists of requests as multisets of exact byte strings (connections may be
/// replayed in a different order); panics naming the first difference.
pub fn assert_same_requests(what: &str, primary: &[Received], mirror: &[Received]) {
    let count = |rs: &[Received]| {
        let mut m: HashMap<Vec<u8>, usize> = HashMap::new();
        for r in rs {
            *m.entry(r.bytes.clone()).or_default() += 1;
        }
        m
    };
    let (p, m) = (count(primary), count(mirror));
    for (bytes, n) in &p {
        let got = m.get(bytes).copied().unwrap_or(0);
        if got != *n {
            let line = Received {
                peer: primary[0].peer,
                index: 0,
                bytes: bytes.clone(),
            }
            .line();
            let near = mirror
                .iter()
                .find(|r| r.line() == line)
                .map(|r| {
                    let at = r.bytes.iter().zip(bytes).position(|(a, b)| a != b);
                    format!(
                        "a mirror request with that line has {} bytes vs {} (first difference at {at:?})",
                        r.bytes.len(),
                        bytes.len()
                    )
                })
                .unwrap_or_else(|| "no mirror request has that line".into());
            panic!(
                "{what}: `{line}` ({} bytes) reached the primary {n} times, the mirror {got} times; {near}",
                bytes.len()
            );
        }
    }
    assert_eq!(
        primary.len(),
        mirror.len(),
        "{what}: the mirror received requests the primary did not"
    );
}

/// One row of the agent's exit table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorRow {
    pub name: String,
    pub sampled: u64,
    pub sent: u64,
    pub status: [u64; 4],
    pub errors: u64,
    pub timeouts: u64,
    pub dropped: u64,
}

/// The agent's replay report, parsed from its stderr.
#[derive(Debug, Clone, Default)]
pub struct MirrorTable {
    pub rows: Vec<MirrorRow>,
    /// `captured requests: N`.
    pub captured: u64,
    /// The detail line per mirror (`name: dropped: ...`), as printed.
    pub details: HashMap<String, String>,
}

impl MirrorTable {
    pub fn parse(stderr: &str) -> Self {
        let mut t = Self::default();
        let mut in_table = false;
        for line in stderr.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.first() == Some(&"mirror") && cols.get(2) == Some(&"sampled") {
                in_table = true;
                t.rows.clear();
                continue;
            }
            if let Some(rest) = line.strip_prefix("captured requests: ") {
                in_table = false;
                t.captured = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                continue;
            }
            if !in_table {
                continue;
            }
            if line.starts_with("  ") {
                if let Some((name, _)) = line.trim_start().split_once(": dropped:") {
                    t.details.insert(name.to_owned(), line.trim().to_owned());
                }
                continue;
            }
            if cols.len() == 13 {
                let n = |i: usize| cols[i].parse::<u64>().unwrap_or(u64::MAX);
                t.rows.push(MirrorRow {
                    name: cols[0].to_owned(),
                    sampled: n(2),
                    sent: n(3),
                    status: [n(4), n(5), n(6), n(7)],
                    errors: n(8),
                    timeouts: n(9),
                    dropped: n(10),
                });
            }
        }
        t
    }

    pub fn row(&self, name: &str) -> &MirrorRow {
        self.rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row for mirror {name}: {self:?}"))
    }
}

impl MirrorRow {
    pub fn answered(&self) -> u64 {
        self.status.iter().sum()
    }
    /// Every sampled copy ended somewhere (after shutdown nothing is in flight).
    pub fn balanced(&self) -> bool {
        self.sampled == self.answered() + self.errors + self.timeouts + self.dropped
    }
}

/// The comparison row of `mirror` in the exit log, by column name.
pub fn compare_row(log: &str, mirror: &str) -> std::collections::HashMap<String, u64> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("mirror ") && l.contains("compared") && l.contains(" body"))
        .unwrap_or_else(|| panic!("no comparison table: {log}"));
    let cols: Vec<&str> = lines[start].split_whitespace().collect();
    let row = lines[start + 1..]
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&mirror))
        .unwrap_or_else(|| panic!("no comparison row for {mirror}: {log}"));
    cols.iter()
        .zip(&row)
        .skip(1)
        .map(|(c, v)| (c.to_string(), v.parse().unwrap_or(u64::MAX)))
        .collect()
}
