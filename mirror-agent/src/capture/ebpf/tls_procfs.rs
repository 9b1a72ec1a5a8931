//! What `--tls` learns from procfs: which libssl files to probe (`--tls auto`), the
//! connections of the captured ports already open when the probes attach, and process names for
//! the exit report.
//!
//! Owns reading `/proc`: processes, their mapped files (`maps`), their sockets (`fd` links to
//! `socket:[INODE]`) and their network namespace's TCP tables (`net/tcp`, `net/tcp6`). Reading
//! another process's fds needs the agent's privileges, so everything here but
//! [`process_name`] (world-readable) runs before the agent confines itself.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// TCP states in `/proc/net/tcp`.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0a;

/// One line of a `/proc/PID/net/tcp{,6}` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpEntry {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    inode: u64,
}

/// The processes, by pid.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The TCP sockets of process `pid`'s network namespace, IPv4 and IPv6.
fn tcp_table(pid: u32) -> Vec<TcpEntry> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(tcp_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The socket inodes of process `pid`'s fds, with the fds.
fn socket_fds(pid: u32) -> Vec<(i32, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let n = fd.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(fd.path()).ok()?;
            Some((n, socket_inode(link.to_str()?)?))
        })
        .collect()
}

/// Where `--tls auto` attaches: the libssl files mapped by the processes that listen on one of
/// `ports` (as seen from the agent: through `/proc/PID/root`, so a container's own libssl is
/// found, one path per file), and those processes (pid, name). When no such process runs yet,
/// the system's own libssl (`libssl.so.3`, `libssl.so.1.1` in the usual library directories),
/// so servers started later with it are read.
pub fn discover(ports: &[u16]) -> (Vec<PathBuf>, Vec<(u32, String)>) {
    let Listeners { libs, processes } = listeners_libssl(ports);
    if libs.is_empty() {
        return (system_libssl(), processes);
    }
    (libs.into_iter().map(|(path, _)| path).collect(), processes)
}

/// A file's (device, inode).
pub type FileId = (u64, u64);

/// What [`listeners_libssl`] found.
pub struct Listeners {
    /// The libssl files (through `/proc/PID/root`, one per file, with its [`FileId`]).
    pub libs: Vec<(PathBuf, FileId)>,
    /// The processes listening that map one (pid, name).
    pub processes: Vec<(u32, String)>,
}

/// The libssl files mapped by the processes listening on `ports`, and those processes.
pub fn listeners_libssl(ports: &[u16]) -> Listeners {
    let mut libs = BTreeSet::new();
    let mut processes = Vec::new();
    for pid in pids() {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let mapped: BTreeSet<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| is_libssl(p))
            .collect();
        if mapped.is_empty() || !listens_on(pid, ports) {
            continue;
        }
        for path in mapped {
            libs.insert(PathBuf::from(format!("/proc/{pid}/root{path}")));
        }
        processes.push((pid, process_name(pid)));
    }
    let mut seen = BTreeSet::new();
    let libs = libs
        .into_iter()
        .filter_map(|p| {
            let id = file_id(&p)?;
            seen.insert(id).then_some((p, id))
        })
        .collect();
    Listeners { libs, processes }
}

/// A file's (device, inode): what a uprobe is attached to, whatever the path.
pub fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// The system's libssl files, OpenSSL 3 first.
pub fn system_libssl() -> Vec<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/lib64",
        "/usr/lib",
    ];
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in ["libssl.so.3", "libssl.so.1.1"] {
        for dir in dirs {
            if let Ok(real) = std::fs::canonicalize(Path::new(dir).join(name))
                && seen.insert(real.clone())
            {
                out.push(real);
                break;
            }
        }
    }
    out
}

/// Whether process `pid` holds a listening TCP socket on one of `ports`.
fn listens_on(pid: u32, ports: &[u16]) -> bool {
    let listening: BTreeSet<u64> = tcp_table(pid)
        .into_iter()
        .filter(|e| e.state == LISTEN && ports.contains(&e.local.port()))
        .map(|e| e.inode)
        .collect();
    !listening.is_empty()
        && socket_fds(pid)
            .iter()
            .any(|(_, inode)| listening.contains(inode))
}

/// The established TCP connections with a local or remote port among `ports`, by (pid, fd),
/// as (local, remote): every process's fds matched against its network namespace's table (read
/// once per namespace).
pub fn snapshot_connections(ports: &[u16]) -> HashMap<(u32, i32), (SocketAddr, SocketAddr)> {
    let mut out = HashMap::new();
    let mut by_netns: HashMap<PathBuf, HashMap<u64, (SocketAddr, SocketAddr)>> = HashMap::new();
    for pid in pids() {
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let conns = by_netns.entry(ns).or_insert_with(|| {
            tcp_table(pid)
                .into_iter()
                .filter(|e| {
                    e.state == ESTABLISHED
                        && (ports.contains(&e.local.port()) || ports.contains(&e.remote.port()))
                })
                .map(|e| (e.inode, (e.local, e.remote)))
                .collect()
        });
        if conns.is_empty() {
            continue;
        }
        for (fd, inode) in socket_fds(pid) {
            if let Some(c) = conns.get(&inode) {
                out.insert((pid, fd), *c);
            }
        }
    }
    out
}

/// The TCP endpoints (local, remote) of the socket `fd` of process `pid`: its inode (the fd's
/// link), then its line in the process's network namespace's table. `None` when the fd is
/// closed, not a socket, not TCP, or not readable (another process's fds need privileges).
pub fn tcp_endpoints(pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = socket_inode(link.to_str()?)?;
    tcp_table(pid)
        .into_iter()
        .find(|e| e.inode == inode)
        .map(|e| (e.local, e.remote))
}

/// A process's `comm` (world-readable), "" when it is gone; pid 0 names the rest.
pub fn process_name(pid: u32) -> String {
    if pid == 0 {
        return "(other processes)".into();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A `/proc/net/tcp{,6}` line: addresses are the kernel's 32-bit words in host order, printed
/// in hex (IPv4: one word; IPv6: four), ports and state in hex.
fn tcp_line(line: &str) -> Option<TcpEntry> {
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(TcpEntry {
        local: endpoint(f.get(1)?)?,
        remote: endpoint(f.get(2)?)?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

fn endpoint(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip: IpAddr = match addr.len() {
        8 => Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_tcp_lines_give_endpoints_state_and_inode() {
        let v4 = "   1: 0100007F:E652 0100007F:0391 01 00000000:00000000 03:000013E2 00000000     0        0 4242 3 0000";
        assert_eq!(
            tcp_line(v4),
            Some(TcpEntry {
                local: "127.0.0.1:58962".parse().unwrap(),
                remote: "127.0.0.1:913".parse().unwrap(),
                state: ESTABLISHED,
                inode: 4242,
            })
        );
        // ::1 port 443 to ::ffff:10.0.0.2 port 50000, listening.
        let v6 = "   0: 00000000000000000000000001000000:01BB 0000000000000000FFFF00000200000A:C350 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000";
        assert_eq!(
            tcp_line(v6),
            Some(TcpEntry {
                local: "[::1]:443".parse().unwrap(),
                remote: "[::ffff:10.0.0.2]:50000".parse().unwrap(),
                state: LISTEN,
                inode: 77,
            })
        );
        assert_eq!(tcp_line("garbage"), None);
        assert_eq!(tcp_line("  sl  local_address rem_address   st"), None);
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert!(
            is_libssl("/usr/lib/x86_64-linux-gnu/libssl.so.3") && !is_libssl("/x/libcrypto.so.3")
        );
    }
}
