//! TLS plaintext from uprobes on libssl (issue 14 B, first stage: the kernel side and its
//! reader; not yet turned into flow segments nor wired to the agent's flags).
//!
//! Owns loading the TLS programs (`mirror-ebpf/src/tls.rs`) on their own [`Ebpf`] instance,
//! attaching them (the four SSL calls' entries and returns on one libssl file, for every
//! process that maps it; the read/write-family syscall tracepoints), and decoding the records
//! of `MIRROR_TLS_RING` into [`TlsChunk`]s. The TC maps of that instance are made minimal.
//!
//! Needs tracefs for the syscall tracepoints (mounted at `/sys/kernel/tracing` when it is not)
//! and the privileges to load tracing programs (CAP_BPF and CAP_PERFMON, or root).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use mirror_common::{TLS_HEADER_LEN, TlsRecordHeader, maps, tls};

use super::{CaptureError, object, take};

/// The uprobes: (program, libssl function).
const PROBES: [(&str, &str); 8] = [
    ("mirror_ssl_read", "SSL_read"),
    ("mirror_ssl_read_ex", "SSL_read_ex"),
    ("mirror_ssl_write", "SSL_write"),
    ("mirror_ssl_write_ex", "SSL_write_ex"),
    ("mirror_ssl_ret", "SSL_read"),
    ("mirror_ssl_ex_ret", "SSL_read_ex"),
    ("mirror_ssl_ret", "SSL_write"),
    ("mirror_ssl_ex_ret", "SSL_write_ex"),
];

/// The syscalls whose fd names a call's connection (OpenSSL's socket BIO uses read/write;
/// libcurl's own BIO recvfrom/sendto; the vector forms for completeness).
const SYSCALLS: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_write",
    "sys_enter_recvfrom",
    "sys_enter_sendto",
    "sys_enter_readv",
    "sys_enter_writev",
    "sys_enter_recvmsg",
    "sys_enter_sendmsg",
];

const SYSCALL_PROGRAM: &str = "mirror_tls_syscall";
const TRACEFS: &str = "/sys/kernel/tracing";

/// One record: a chunk of what one SSL call read or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsChunk<'a> {
    pub header: TlsRecordHeader,
    pub data: &'a [u8],
}

impl TlsChunk<'_> {
    /// Plaintext the process read (for a server: requests).
    pub fn is_read(&self) -> bool {
        self.header.kind == tls::kind::READ
    }
}

/// A record's header and data, or `None` for a record shorter than its header says.
pub fn decode(record: &[u8]) -> Option<TlsChunk<'_>> {
    let head = record.get(..TLS_HEADER_LEN)?;
    // SAFETY: TlsRecordHeader is repr(C), plain integers, no padding (asserted in
    // mirror-common): any TLS_HEADER_LEN bytes are a valid value; read unaligned.
    let header: TlsRecordHeader =
        unsafe { head.as_ptr().cast::<TlsRecordHeader>().read_unaligned() };
    let data = record.get(TLS_HEADER_LEN..TLS_HEADER_LEN + header.captured_len as usize)?;
    Some(TlsChunk { header, data })
}

/// The TLS programs loaded and attached to one libssl, and their ring.
pub struct TlsCapture {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

impl TlsCapture {
    /// Loads the TLS programs and attaches them to `libssl` (every process that maps that
    /// file) and to the syscall tracepoints. `ring_size`: a power of two of at least 4096.
    pub fn attach(libssl: &Path, ring_size: u32) -> Result<Self, CaptureError> {
        let data = object().ok_or(CaptureError::NoObject)?;
        let mut ebpf = EbpfLoader::new()
            // This instance carries no TC capture: its maps cost a page each.
            .map_max_entries(maps::RING, 4096)
            .map_max_entries(maps::SCRATCH, 1)
            .map_max_entries(maps::IGNORE, 1)
            .map_max_entries(maps::SKIP, 1)
            .map_max_entries(maps::IFACES, 1)
            .map_max_entries(maps::IFACE_SLOTS, 1)
            .map_max_entries(tls::RING, ring_size)
            .load(data)
            .map_err(CaptureError::Load)?;
        mount_tracefs()?;
        for (name, function) in PROBES {
            let program = uprobe(&mut ebpf, name)?;
            if program.fd().is_err() {
                program
                    .load()
                    .map_err(|source| CaptureError::Program { name, source })?;
            }
            program
                .attach(function, libssl, UProbeScope::AllProcesses)
                .map_err(|source| CaptureError::Program { name, source })?;
        }
        let program: &mut TracePoint = ebpf
            .program_mut(SYSCALL_PROGRAM)
            .ok_or(CaptureError::Missing(SYSCALL_PROGRAM))?
            .try_into()
            .map_err(|source| CaptureError::Program {
                name: SYSCALL_PROGRAM,
                source,
            })?;
        program.load().map_err(|source| CaptureError::Program {
            name: SYSCALL_PROGRAM,
            source,
        })?;
        for syscall in SYSCALLS {
            program
                .attach("syscalls", syscall)
                .map_err(|source| CaptureError::Program {
                    name: SYSCALL_PROGRAM,
                    source,
                })?;
        }
        let ring = take(&mut ebpf, tls::RING)?;
        Ok(Self { ebpf, ring })
    }

    /// Hands every record in the ring to `f`; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(TlsChunk<'_>)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            if let Some(chunk) = decode(&item) {
                f(chunk);
            }
        }
        n
    }

    /// The programs' counters, summed over CPUs, indexed by [`tls::counter`].
    pub fn counters(&self) -> Result<[u64; tls::counter::LEN as usize], CaptureError> {
        let map = self
            .ebpf
            .map(tls::COUNTERS)
            .ok_or(CaptureError::Missing(tls::COUNTERS))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|source| CaptureError::Map {
            name: tls::COUNTERS,
            source,
        })?;
        let mut out = [0u64; tls::counter::LEN as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array
                .get(&(i as u32), 0)
                .map_err(|source| CaptureError::Map {
                    name: tls::COUNTERS,
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// The TCP endpoints (local, remote) of the socket `fd` of process `pid`, from procfs: the
/// socket's inode (`/proc/PID/fd/FD` links to `socket:[INODE]`), then its line in
/// `/proc/PID/net/tcp` or `tcp6` (the process's network namespace). `None` when the fd is
/// closed, not a socket, or not TCP.
pub fn tcp_endpoints(pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode: u64 = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        text.lines().skip(1).find_map(|l| tcp_line(l, inode))
    })
}

/// The endpoints of a `/proc/net/tcp{,6}` line when its inode is `inode`. Addresses are the
/// kernel's 32-bit words in host order, printed in hex (IPv4: one word; IPv6: four), ports in
/// hex.
fn tcp_line(line: &str, inode: u64) -> Option<(SocketAddr, SocketAddr)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(9)?.parse::<u64>().ok()? != inode {
        return None;
    }
    Some((endpoint(fields.get(1)?)?, endpoint(fields.get(2)?)?))
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

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })
}

/// Mounts tracefs at its usual place when nothing is mounted there (aya finds the tracepoints'
/// ids in it).
fn mount_tracefs() -> Result<(), CaptureError> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(CaptureError::Io {
            what: "mounting tracefs at /sys/kernel/tracing",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_tcp_lines_give_both_endpoints() {
        let v4 = "   1: 0100007F:E652 0100007F:0391 01 00000000:00000000 03:000013E2 00000000     0        0 4242 3 0000";
        assert_eq!(
            tcp_line(v4, 4242),
            Some((
                "127.0.0.1:58962".parse().unwrap(),
                "127.0.0.1:913".parse().unwrap()
            ))
        );
        assert_eq!(tcp_line(v4, 4243), None);
        // ::1 port 443 to ::ffff:10.0.0.2 port 50000.
        let v6 = "   0: 00000000000000000000000001000000:01BB 0000000000000000FFFF00000200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0000";
        assert_eq!(
            tcp_line(v6, 77),
            Some((
                "[::1]:443".parse().unwrap(),
                "[::ffff:10.0.0.2]:50000".parse().unwrap()
            ))
        );
        assert_eq!(tcp_line("garbage", 1), None);
        assert_eq!(tcp_line("  sl  local_address rem_address   st", 1), None);
    }

    #[test]
    fn short_or_mislabelled_records_are_not_decoded() {
        assert_eq!(decode(&[0u8; 10]), None);
        let mut r = vec![0u8; TLS_HEADER_LEN + 4];
        // captured_len (offset 36) says 8 bytes follow; only 4 do.
        r[36] = 8;
        assert_eq!(decode(&r), None);
        r[36] = 4;
        r[TLS_HEADER_LEN..].copy_from_slice(b"GET ");
        let c = decode(&r).unwrap();
        assert_eq!((c.data, c.is_read()), (&b"GET "[..], true));
    }
}
