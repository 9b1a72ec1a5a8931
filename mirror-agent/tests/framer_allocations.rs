//! Framing a small request read in place (live capture reads the ring buffer without copying)
//! allocates nothing of its own: the method, target and header fields are located in the
//! request's bytes, and small requests share copy buffers (`http::request::copy_out`). Counted
//! with a counting global allocator, so this file holds this one test only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use mirror_agent::http::request::{HttpLimits, RequestEvent, RequestFramer};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the new size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn small_requests_read_in_place_allocate_nothing_of_their_own() {
    const N: u64 = 20_000;
    let wire = b"GET /api/v1/items?page=2 HTTP/1.1\r\nHost: shop.example\r\n\
                 User-Agent: curl/8.5.0\r\nAccept: application/json\r\n\
                 Accept-Encoding: gzip, br\r\nAccept-Language: en-GB\r\n\
                 Cookie: session=abc123\r\nX-Request-Id: 42\r\nCache-Control: no-cache\r\n\
                 Connection: keep-alive\r\nReferer: https://shop.example/\r\n\r\n";
    let mut framer = RequestFramer::new(HttpLimits::default(), false);
    let mut events = Vec::with_capacity(4);
    // Warm up: the framer's own buffers and the first shared copy buffer.
    for _ in 0..100 {
        framer.push_slice(wire, 1, &mut events);
        events.clear();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut framed = 0;
    for i in 0..N {
        framer.push_slice(wire, i, &mut events);
        for ev in events.drain(..) {
            let RequestEvent::Request(r) = ev else {
                panic!("not a request: {ev:?}");
            };
            // What the request offers is there without allocating either.
            assert_eq!(r.method(), "GET");
            assert_eq!(r.target(), "/api/v1/items?page=2");
            assert_eq!(r.headers().count(), 10);
            assert_eq!(r.header("x-request-id"), Some(&b"42"[..]));
            assert_eq!(&r.raw[..], &wire[..]);
            framed += 1;
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(framed, N);
    // Each request was dropped before the next: the shared buffer is reused in place, so a
    // handful of allocations at most (none is expected). Before, each request made 15: its
    // bytes, their shared header, the method, the target, the field list and 10 names.
    assert!(
        allocations <= N / 1000,
        "{allocations} allocations for {N} requests"
    );
    eprintln!("{allocations} allocations for {N} requests");
}
