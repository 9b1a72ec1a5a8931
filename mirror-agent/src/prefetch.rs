//! Asking the CPU for a value's cache lines before the code that reads them runs.
//!
//! Why: with thousands of client connections, each segment reaches per-connection state that
//! has left the caches since the connection's previous request. Read field by field, the
//! connection's state comes in one cache miss after another, each waiting for the one before;
//! asked for at once, its lines come in together (issue 17: the 10000-connection figure).
//! A prefetch never faults and changes nothing the program can see, only the timing.
//!
//! Owns this one helper; depends on nothing else in the crate.

/// Bytes in a cache line on the CPUs the agent runs on (x86-64, most arm64).
const LINE: usize = 64;

/// Prefetches every cache line of `value` (its own bytes, not what it points to).
#[inline]
pub fn prefetch<T>(value: &T) {
    prefetch_at((value as *const T).cast::<u8>(), std::mem::size_of::<T>());
}

/// Prefetches the cache lines of `len` bytes at `start`: memory about to be written, such as
/// the free room of a buffer. Any address will do (a prefetch of one that is not mapped is
/// ignored).
#[inline]
pub fn prefetch_at(start: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        line(start.wrapping_add(off));
        off += LINE;
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn line(p: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults, even
    // on an address that is not mapped; `p` points into a live value anyway.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
}

/// Elsewhere the helper is a no-op (no stable prefetch intrinsic on other targets yet).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn line(_p: *const u8) {}
