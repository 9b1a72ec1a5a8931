//! TLS plaintext from uprobes on libssl (issue 14 B, first stage): what `SSL_read`,
//! `SSL_read_ex`, `SSL_write` and `SSL_write_ex` read or wrote, copied into `MIRROR_TLS_RING`.
//!
//! At a call's entry the uprobe keeps the `SSL*`, the buffer and (for the `_ex` calls) where the
//! call stores its byte count, by thread (`MIRROR_TLS_ACTIVE`); the arguments are gone at the
//! return. The connection is found without OpenSSL's struct offsets (which change between
//! versions): the syscall tracepoints note the fd of the first read/write-family syscall the same
//! thread makes while the call is in progress (OpenSSL's socket BIO uses `read`/`write`; libcurl
//! `recvfrom`/`sendto`); a call served from OpenSSL's buffer makes none, so the fd last seen for
//! the same `(process, SSL*)` is used (`MIRROR_TLS_FDS`), else -1 (counted in `NO_FD`).
//!
//! At the return the call's bytes go to the ring in records of at most [`MAX_CHUNK`] bytes, at
//! most [`MAX_CHUNKS`] of them; each reserves the smallest size class that holds its chunk and
//! the user memory is read straight into the reservation. A full ring loses the rest of the call
//! (counted); userspace sees an incomplete call from `call_len`.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use mirror_common::{
    TlsActiveCall, TlsConnKey, TlsRecordHeader,
    tls::{ACTIVE_ENTRIES, FD_ENTRIES, MAX_CHUNK, MAX_CHUNKS, counter, kind},
};

/// TLS records; userspace sets the real size at load time (one page when TLS capture is off).
#[map]
static MIRROR_TLS_RING: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Calls in progress, by `pid_tgid`.
#[map]
static MIRROR_TLS_ACTIVE: HashMap<u64, TlsActiveCall> =
    HashMap::with_max_entries(ACTIVE_ENTRIES, 0);

/// The fd last seen for `(tgid, SSL*)`.
#[map]
static MIRROR_TLS_FDS: LruHashMap<TlsConnKey, i32> = LruHashMap::with_max_entries(FD_ENTRIES, 0);

/// Per-CPU counters, indexed by [`counter`].
#[map]
static MIRROR_TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Offset of `fd` in the syscall enter tracepoints' records (after the 8-byte common header and
/// `__syscall_nr`), the same for every read/write-family syscall.
const SYSCALL_FD_OFFSET: usize = 16;

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
    let fd = if call.fd >= 0 {
        let _ = MIRROR_TLS_FDS.insert(&key, &call.fd, 0);
        call.fd
    } else {
        // SAFETY: read of a plain i32 value.
        match unsafe { MIRROR_TLS_FDS.get(&key) } {
            Some(fd) => *fd,
            None => {
                count(counter::NO_FD, 1);
                -1
            }
        }
    };
    count(counter::CALLS, 1);
    let total = n as u32;
    let mut hdr = TlsRecordHeader {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl: call.ssl,
        pid: tgid,
        tid: id as u32,
        fd,
        call_len: total,
        chunk_offset: 0,
        captured_len: 0,
        kind: call.kind,
        _pad: [0; 7],
    };
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
            let len = if left < MAX_CHUNK as u32 { left } else { MAX_CHUNK as u32 };
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

/// `SSL_read`/`SSL_write` return the byte count (<= 0: nothing).
#[uretprobe]
pub fn mirror_ssl_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    leave(if ret > 0 { ret as u64 } else { 0 });
    0
}

/// `SSL_read_ex`/`SSL_write_ex` return 1 on success and store the count through their 4th
/// argument.
#[uretprobe]
pub fn mirror_ssl_ex_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let mut n = 0u64;
    if ret == 1 {
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
