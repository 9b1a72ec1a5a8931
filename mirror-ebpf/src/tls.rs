//! TLS plaintext from uprobes on libssl (issue 14 B): what `SSL_read`, `SSL_read_ex`,
//! `SSL_write` and `SSL_write_ex` read or wrote, copied into `MIRROR_TLS_RING`.
//!
//! At a call's entry the uprobe keeps the `SSL*`, the buffer and (for the `_ex` calls) where the
//! call stores its byte count, by thread (`MIRROR_TLS_ACTIVE`); the arguments are gone at the
//! return. The connection is found without OpenSSL's struct offsets (which change between
//! versions), from the kernel's socket work on the same thread while the call is in progress:
//! the `sock_recv_length`/`sock_send_length` tracepoints give the `struct sock *` of the first
//! socket read or write, the syscall tracepoints its fd (OpenSSL's socket BIO uses
//! `read`/`write`; libcurl `recvfrom`/`sendto`). A call served from OpenSSL's buffer touches no
//! socket, so the socket and fd last seen for the same `(process, SSL*)` are used
//! (`MIRROR_TLS_FDS`), else fd -1 (counted in `NO_FD`).
//!
//! The socket's endpoints come from `inet_sock_set_state`, which gives them when a socket of a
//! captured port becomes established (`MIRROR_TLS_SOCKS`, sampled there with the classifiers'
//! flow hash); a connection established before the programs were attached gets an entry at its
//! first call (`UNNOTED`: no endpoints, its records carry only pid and fd, which userspace
//! resolves through procfs). The first call on a noted socket marks its record
//! [`header_flags::FIRST`] and its port [`port_state::TLS`] (the classifiers then leave that
//! port's ciphertext alone); its close is reported with a [`kind::CLOSE`] record (for an unnoted
//! one, with the endpoints the close gives, when its local port is a captured one).
//!
//! At the return the call's bytes go to the ring in records of at most [`MAX_CHUNK`] bytes, at
//! most [`MAX_CHUNKS`] of them; each reserves the smallest size class that holds its chunk and
//! the user memory is read straight into the reservation. A full ring loses the rest of the call
//! (counted); userspace sees an incomplete call from `call_len`, and a call lost wholly from the
//! socket's count of each direction's bytes (`stream_offset`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use mirror_common::{
    TlsActiveCall, TlsConnKey, TlsConnSocket, TlsRecordHeader, TlsSocket, config, family,
    flow_hash, port_state, sampled,
    tls::{
        ACTIVE_ENTRIES, FD_ENTRIES, MAX_CHUNK, MAX_CHUNKS, SOCK_ENTRIES, counter, header_flags,
        kind, socket_flags,
    },
};

use crate::{mark_tls, port_state_of, setting};

/// TLS records; userspace sets the real size at load time (one page when TLS capture is off).
#[map]
static MIRROR_TLS_RING: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Calls in progress, by `pid_tgid`.
#[map]
static MIRROR_TLS_ACTIVE: HashMap<u64, TlsActiveCall> =
    HashMap::with_max_entries(ACTIVE_ENTRIES, 0);

/// The socket and fd last seen for `(tgid, SSL*)`.
#[map]
static MIRROR_TLS_FDS: LruHashMap<TlsConnKey, TlsConnSocket> =
    LruHashMap::with_max_entries(FD_ENTRIES, 0);

/// Established sockets of captured ports, by `struct sock *`.
#[map]
static MIRROR_TLS_SOCKS: LruHashMap<u64, TlsSocket> = LruHashMap::with_max_entries(SOCK_ENTRIES, 0);

/// Per-CPU counters, indexed by [`counter`].
#[map]
static MIRROR_TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Offset of `fd` in the syscall enter tracepoints' records (after the 8-byte common header and
/// `__syscall_nr`), the same for every read/write-family syscall.
const SYSCALL_FD_OFFSET: usize = 16;

/// `sock_recv_length`/`sock_send_length` record: `void *sk` (see the format files).
const SOCK_IO_SK_OFFSET: usize = 8;

/// `inet_sock_set_state` record fields (see its format file).
mod state_field {
    pub const SKADDR: usize = 8;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Adds to a counter atomically: uprobes and tracepoints run in process context, where another
/// program run on the same CPU can come between a plain load and store.
#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(p) = MIRROR_TLS_COUNTERS.get_ptr_mut(index) {
        // SAFETY: a valid, aligned per-CPU slot; every writer adds atomically. BPF_ATOMIC |
        // BPF_ADD, 64 bits.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {v}",
                p = in(reg) p,
                v = in(reg) n,
            )
        };
    }
}

/// Remembers a call at its entry.
#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u8, ex: bool) {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let out_len: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let call = TlsActiveCall {
        ssl,
        buf,
        out_len,
        sk: 0,
        fd: -1,
        kind,
        _pad: [0; 3],
    };
    let id = bpf_get_current_pid_tgid();
    // A full map loses this call (its return finds no entry: counted there).
    let _ = MIRROR_TLS_ACTIVE.insert(&id, &call, 0);
}

/// A call returned `n` bytes (0: nothing to copy): its records, and the call forgotten.
#[inline(always)]
fn leave(n: u64) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed below.
    let Some(call) = (unsafe { MIRROR_TLS_ACTIVE.get(&id) }).copied() else {
        count(counter::UNMATCHED, 1);
        return;
    };
    let _ = MIRROR_TLS_ACTIVE.remove(&id);
    if n == 0 || n > u32::MAX as u64 {
        return;
    }
    let tgid = (id >> 32) as u32;
    let key = TlsConnKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    // The call's own socket and fd, else those last seen for the same SSL*.
    // SAFETY: read of a plain value, copied.
    let stored = unsafe { MIRROR_TLS_FDS.get(&key) }.copied();
    let seen = if call.fd >= 0 || call.sk != 0 {
        let seen = TlsConnSocket {
            sk: call.sk,
            fd: call.fd,
            _pad: 0,
        };
        // An LRU update costs more than its lookup: only when the connection changed.
        if stored.is_none_or(|s| s.sk != seen.sk || s.fd != seen.fd) {
            let _ = MIRROR_TLS_FDS.insert(&key, &seen, 0);
        }
        Some(seen)
    } else {
        stored
    };
    let (sk, fd) = seen.map_or((0, -1), |s| (s.sk, s.fd));
    if fd < 0 && sk == 0 {
        // Neither the socket nor the fd: userspace cannot tell the connection.
        count(counter::NO_FD, 1);
    }
    let mut hdr = TlsRecordHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl: call.ssl,
        pid: tgid,
        tid: id as u32,
        fd,
        call_len: n as u32,
        chunk_offset: 0,
        captured_len: 0,
        stream_offset: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        kind: call.kind,
        flags: 0,
        _pad: 0,
        _pad2: 0,
    };
    let mut sock = if sk != 0 {
        MIRROR_TLS_SOCKS.get_ptr_mut(&sk)
    } else {
        None
    };
    if sk != 0 && sock.is_none() {
        if setting(config::TLS_OPEN_BEFORE) == 0 {
            // Not noted when established, and nothing was open before: no captured connection.
            count(counter::OTHER, 1);
            return;
        }
        // Open before the programs were attached (or another service's: userspace tells from
        // the fd): followed from here, so its bytes are counted and its close reported.
        let unnoted = TlsSocket {
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 0,
            remote_port: 0,
            family: 0,
            flags: socket_flags::UNNOTED,
            _pad: [0; 2],
            offsets: [0; 2],
        };
        let _ = MIRROR_TLS_SOCKS.insert(&sk, &unnoted, BPF_NOEXIST as u64);
        sock = MIRROR_TLS_SOCKS.get_ptr_mut(&sk);
    }
    if let Some(sock) = sock {
        // SAFETY: a map value; its fields are plain data, written in place (a race with
        // another call on the same socket at worst marks FIRST twice).
        let sock = unsafe { &mut *sock };
        if sock.flags & socket_flags::CLIENT != 0 {
            count(counter::CLIENT_SIDE, 1);
            return;
        }
        if sock.flags & socket_flags::SAMPLED_OUT != 0 {
            count(counter::SAMPLED_OUT, 1);
            return;
        }
        if sock.flags & socket_flags::UNNOTED == 0 {
            hdr.local_addr = sock.local_addr;
            hdr.remote_addr = sock.remote_addr;
            hdr.local_port = sock.local_port;
            hdr.remote_port = sock.remote_port;
            hdr.family = sock.family;
            hdr.flags = header_flags::ENDPOINTS;
            if sock.flags & socket_flags::TLS_SEEN == 0 {
                hdr.flags |= header_flags::FIRST;
                // From now on the classifiers leave this port's ciphertext alone.
                mark_tls(sock.local_port);
            }
        }
        sock.flags |= socket_flags::TLS_SEEN;
        // The call's place in its direction, counted whether or not its bytes reach the ring:
        // one SSL object is never read (or written) by two threads at once, so no race.
        hdr.flags |= header_flags::STREAM_OFFSET;
        if call.kind == kind::READ {
            hdr.stream_offset = sock.offsets[0];
            sock.offsets[0] = sock.offsets[0].wrapping_add(n as u32);
        } else {
            hdr.stream_offset = sock.offsets[1];
            sock.offsets[1] = sock.offsets[1].wrapping_add(n as u32);
        }
    }
    count(counter::CALLS, 1);
    let total = n as u32;
    let mut index = 0u32;
    // Bounded: at most MAX_CHUNKS records.
    while index < MAX_CHUNKS {
        let off = index * MAX_CHUNK as u32;
        if off >= total {
            return;
        }
        let left = total - off;
        hdr.chunk_offset = off;
        let sent = if left <= 256 {
            chunk::<256>(&mut hdr, call.buf, left)
        } else if left <= 2048 {
            chunk::<2048>(&mut hdr, call.buf, left)
        } else {
            let len = if left < MAX_CHUNK as u32 {
                left
            } else {
                MAX_CHUNK as u32
            };
            chunk::<MAX_CHUNK>(&mut hdr, call.buf, len)
        };
        if !sent {
            // The ring is full: the rest of the call is lost.
            count(counter::RING_FULL, (MAX_CHUNKS - index) as u64);
            return;
        }
        index += 1;
    }
    let copied = MAX_CHUNKS * MAX_CHUNK as u32;
    if total > copied {
        count(counter::TRUNCATED_BYTES, (total - copied) as u64);
    }
}

/// A record of class `N` holding `len` (1..=N) bytes from `buf + hdr.chunk_offset`. `false`
/// when the ring is full.
#[inline(always)]
fn chunk<const N: usize>(hdr: &mut TlsRecordHeader, buf: u64, len: u32) -> bool {
    let Some(mut entry) = MIRROR_TLS_RING.reserve::<Record<N>>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    let n = crate::load_len::<N>(len);
    let src = buf.wrapping_add(hdr.chunk_offset as u64) as *const core::ffi::c_void;
    // SAFETY: the reservation's data area has N bytes and n <= N; the source is user memory,
    // which the helper reads safely (an error leaves the destination zeroed).
    let r = unsafe { probe_read_user_raw((&raw mut (*record).data).cast(), n, src) };
    hdr.captured_len = if r == 0 {
        n
    } else {
        count(counter::READ_ERRORS, 1);
        0
    };
    // SAFETY: the header area of the reservation.
    unsafe { (&raw mut (*record).hdr).write(*hdr) };
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    count(counter::RECORDS, 1);
    true
}

/// A record of class `N`.
#[repr(C)]
struct Record<const N: usize> {
    hdr: TlsRecordHeader,
    data: [u8; N],
}

#[uprobe]
pub fn mirror_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::READ, false);
    0
}

#[uprobe]
pub fn mirror_ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::READ, true);
    0
}

#[uprobe]
pub fn mirror_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::WRITE, false);
    0
}

#[uprobe]
pub fn mirror_ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::WRITE, true);
    0
}

/// OpenSSL's internal `ssl_read_internal(SSL *, buf, num, size_t *readbytes)`, which
/// `SSL_read` and `SSL_read_ex` call (probed instead of them where userspace finds it: its first
/// instruction is emulated, theirs is single-stepped; see the agent's `tls_points`).
#[uprobe]
pub fn mirror_ssl_internal_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::READ, true);
    0
}

/// `ssl_write_internal(SSL *, buf, num, size_t *written)`, as above.
#[uprobe]
pub fn mirror_ssl_internal_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::WRITE, true);
    0
}

/// `SSL_read`/`SSL_write` return the byte count (<= 0: nothing).
#[uretprobe]
pub fn mirror_ssl_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    leave(if ret > 0 { ret as u64 } else { 0 });
    0
}

/// `SSL_read_ex`/`SSL_write_ex` return 1 on success, the internal functions > 0; both store the
/// count through their 4th argument.
#[uretprobe]
pub fn mirror_ssl_ex_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let mut n = 0u64;
    if ret > 0 {
        let id = bpf_get_current_pid_tgid();
        // SAFETY: read of a plain value.
        if let Some(call) = unsafe { MIRROR_TLS_ACTIVE.get(&id) } {
            // SAFETY: user memory, read by the helper (an error gives Err).
            n = unsafe { bpf_probe_read_user(call.out_len as *const u64) }.unwrap_or(0);
        }
    }
    leave(n);
    0
}

/// Every read/write-family syscall enter (`read`, `write`, `recvfrom`, `sendto`, `readv`,
/// `writev`, `recvmsg`, `sendmsg`): the fd of the first one a thread makes inside an SSL call.
#[tracepoint]
pub fn mirror_tls_syscall(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = MIRROR_TLS_ACTIVE.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: the entry of this thread, which only this thread's programs touch.
    let call = unsafe { &mut *call };
    if call.fd < 0 {
        // SAFETY: the tracepoint record holds the fd at this offset (see the format files).
        if let Ok(fd) = unsafe { ctx.read_at::<u64>(SYSCALL_FD_OFFSET) } {
            call.fd = fd as i32;
        }
    }
    0
}

/// `sock_recv_length`/`sock_send_length` (every socket read and write, at its end): the socket
/// of the first one a thread makes inside an SSL call.
#[tracepoint]
pub fn mirror_tls_sock_io(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = MIRROR_TLS_ACTIVE.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: the entry of this thread, which only this thread's programs touch.
    let call = unsafe { &mut *call };
    if call.sk == 0 {
        // SAFETY: the tracepoint record holds the socket pointer at this offset.
        if let Ok(sk) = unsafe { ctx.read_at::<u64>(SOCK_IO_SK_OFFSET) } {
            call.sk = sk;
        }
    }
    0
}

/// `inet_sock_set_state`: a TCP socket of a captured port established (its endpoints noted,
/// sampled; a client's socket to a captured port noted as such, its calls are left out), or
/// closed (a [`kind::CLOSE`] record when TLS calls used it; the entry removed).
#[tracepoint]
pub fn mirror_tls_sock_state(ctx: TracePointContext) -> u32 {
    // SAFETY (all reads): fields of the tracepoint record at their format-file offsets.
    let field = |off: usize| unsafe { ctx.read_at::<u16>(off) }.unwrap_or(0);
    if field(state_field::PROTOCOL) != IPPROTO_TCP {
        return 0;
    }
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(state_field::SKADDR) }) else {
        return 0;
    };
    let newstate = unsafe { ctx.read_at::<i32>(state_field::NEWSTATE) }.unwrap_or(0);
    let local_port = field(state_field::SPORT);
    let remote_port = field(state_field::DPORT);
    if newstate == TCP_CLOSE {
        // SAFETY: read of a plain value, copied.
        let sock = unsafe { MIRROR_TLS_SOCKS.get(&sk) }.copied();
        match sock {
            // Unknown to the programs and nothing open at start: no captured connection.
            None if setting(config::TLS_OPEN_BEFORE) == 0 => return 0,
            // Unknown while connections open at start are unaccounted for: it may be one of
            // them, closing without a call since (reported below if of a captured port).
            None => {}
            Some(s) => {
                let _ = MIRROR_TLS_SOCKS.remove(&sk);
                if s.flags & socket_flags::TLS_SEEN == 0 {
                    // A server-side connection of a TLS port, sampled in, whose plaintext was
                    // never read: say so (see `counter::UNREAD`). (An unnoted socket gets its
                    // entry at a call, so it always has TLS_SEEN.)
                    if s.flags & (socket_flags::CLIENT | socket_flags::SAMPLED_OUT) == 0
                        && port_state_of(s.local_port) == Some(port_state::TLS)
                    {
                        count(counter::UNREAD, 1);
                    }
                    return 0;
                }
                if s.flags & socket_flags::UNNOTED == 0 {
                    report_close(&s);
                    return 0;
                }
            }
        }
        // An unnoted socket (followed from a call) or an unknown one: the endpoints are the
        // record's, reported for a server-side socket of a captured port (others' closes would
        // only be unmatched in userspace).
        if port_state_of(local_port).is_some()
            && let Some(ended) = endpoints(&ctx, local_port, remote_port, 0)
        {
            report_close(&ended);
        }
        return 0;
    }
    if newstate != TCP_ESTABLISHED {
        return 0;
    }
    let flags = if port_state_of(local_port).is_some() {
        0
    } else if port_state_of(remote_port).is_some() {
        socket_flags::CLIENT
    } else {
        return 0;
    };
    let Some(mut sock) = endpoints(&ctx, local_port, remote_port, flags) else {
        return 0;
    };
    let basis_points = setting(config::SAMPLE_BASIS_POINTS);
    if flags == 0 && basis_points < 10000 {
        let h = flow_hash(
            setting(config::HASH_SEED),
            &sock.remote_addr,
            sock.remote_port,
            &sock.local_addr,
            sock.local_port,
        );
        if !sampled(h, basis_points) {
            sock.flags |= socket_flags::SAMPLED_OUT;
        }
    }
    count(counter::SOCKETS, 1);
    let _ = MIRROR_TLS_SOCKS.insert(&sk, &sock, 0);
    0
}

/// The socket of an `inet_sock_set_state` record, with `flags`: its addresses as the
/// classifiers see its packets (an IPv4 peer of an IPv6 socket as IPv4). `None` for another
/// family or an unreadable field.
#[inline(always)]
fn endpoints(
    ctx: &TracePointContext,
    local_port: u16,
    remote_port: u16,
    flags: u8,
) -> Option<TlsSocket> {
    let mut sock = TlsSocket {
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port,
        remote_port,
        family: family::IPV4,
        flags,
        _pad: [0; 2],
        offsets: [0; 2],
    };
    // SAFETY (all reads): fields of the tracepoint record at their format-file offsets.
    match unsafe { ctx.read_at::<u16>(state_field::FAMILY) }.unwrap_or(0) {
        AF_INET => {
            let l = unsafe { ctx.read_at::<[u8; 4]>(state_field::SADDR) }.ok()?;
            let r = unsafe { ctx.read_at::<[u8; 4]>(state_field::DADDR) }.ok()?;
            sock.local_addr[..4].copy_from_slice(&l);
            sock.remote_addr[..4].copy_from_slice(&r);
        }
        AF_INET6 => {
            let l = unsafe { ctx.read_at::<[u8; 16]>(state_field::SADDR_V6) }.ok()?;
            let r = unsafe { ctx.read_at::<[u8; 16]>(state_field::DADDR_V6) }.ok()?;
            if v4_mapped(&l) && v4_mapped(&r) {
                // An IPv4 peer of an IPv6 socket: its packets are IPv4.
                sock.local_addr[..4].copy_from_slice(&l[12..]);
                sock.remote_addr[..4].copy_from_slice(&r[12..]);
            } else {
                sock.family = family::IPV6;
                sock.local_addr = l;
                sock.remote_addr = r;
            }
        }
        _ => return None,
    }
    Some(sock)
}

#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// A [`kind::CLOSE`] record for a socket that carried TLS plaintext.
#[inline(always)]
fn report_close(sock: &TlsSocket) {
    let Some(mut entry) = MIRROR_TLS_RING.reserve::<TlsRecordHeader>(0) else {
        count(counter::CLOSE_LOST, 1);
        return;
    };
    let hdr = TlsRecordHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl: 0,
        pid: 0,
        tid: 0,
        fd: -1,
        call_len: 0,
        chunk_offset: 0,
        captured_len: 0,
        stream_offset: 0,
        local_addr: sock.local_addr,
        remote_addr: sock.remote_addr,
        local_port: sock.local_port,
        remote_port: sock.remote_port,
        family: sock.family,
        kind: kind::CLOSE,
        flags: header_flags::ENDPOINTS,
        _pad: 0,
        _pad2: 0,
    };
    entry.write(hdr);
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    count(counter::RECORDS, 1);
}
