//! Copying a request out of a borrowed buffer (the capture ring, read in place).
//!
//! A small request gets no allocation of its own: the requests of one thread are copied one
//! after another into a shared buffer of [`CHUNK`] bytes, and each is a `Bytes` slice of it.
//! Why: a request copied into its own `Bytes` costs two allocations (its bytes, then the
//! shared header `bytes` adds on the first clone or slice), and at tens of thousands of
//! requests a second glibc's allocator was a fifth of the agent's CPU (issue 17). With the
//! buffer shared, one allocation serves about [`CHUNK`] / request-size requests, and a buffer
//! whose requests are all done is written over in place instead of freed.
//!
//! The price, bounded: a buffer lives until its last request is done, so a small request that
//! stays queued keeps up to [`CHUNK`] bytes alive instead of its own (a mirror's full queue of
//! 4096 small requests: at most 16 MiB). Requests over [`SMALL`] bytes get their own
//! allocation, as before.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

/// Requests up to this many bytes share a buffer.
pub const SMALL: usize = 1024;
/// Size of a shared buffer.
pub const CHUNK: usize = 4096;

thread_local! {
    /// This thread's buffer: the bytes after the last request copied in.
    static SHARED: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `bytes` as a `Bytes` of its own content.
pub fn copy_out(bytes: &[u8]) -> Bytes {
    if bytes.len() > SMALL {
        return Bytes::copy_from_slice(bytes);
    }
    SHARED.with_borrow_mut(|buf| {
        if buf.capacity() < bytes.len() {
            // Reuses the whole buffer in place when every request cut from it is done, else
            // starts a new one (the old one is freed with its last request).
            buf.reserve(CHUNK);
        }
        buf.extend_from_slice(bytes);
        buf.split().freeze()
    })
}
