//! A client byte stream of an HTTP/2 connection cut at arbitrary points into `Decoder`.
//!
//! Input format: `control u64 LE | stream bytes`, see `common` (gaps are not used: the decoder
//! takes in-order bytes, the pipeline ends it at a gap). Control bit 0 set: the client preface
//! is put in front of the stream, so the fuzzer works on frames and HPACK rather than on
//! finding the preface. Bits 26..: tighter bounds, so the limits are reached too.
//!
//! Checked: no panic, no hang; every byte pushed is accounted for once the connection ends;
//! every request has a `:method` and a body within the bound. The same pieces also go through
//! the walk of a connection picked up mid-way (`http2::midstream`): no panic, every byte
//! counted, no more streams than HEADERS frame headers could fit. And through the server
//! direction's decoder (`Decoder::server`, no preface): no panic, every byte accounted for,
//! every response with a final status and a body prefix within the bound.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use mirror_agent::http2::decoder::{Decoder, H2Event, H2Limits};
use mirror_agent::http2::frame::{HEADER_LEN, PREFACE};
use mirror_agent::http2::midstream::{Midstream, looks_like_frames};

fuzz_target!(|data: &[u8]| {
    let Some(input) = common::Input::decode(data) else {
        return;
    };
    let control = input.control;
    let mut stream = Vec::with_capacity(PREFACE.len() + input.stream.len());
    if control & 1 != 0 {
        stream.extend_from_slice(PREFACE);
    }
    stream.extend_from_slice(input.stream);
    let limits = if control >> 26 & 1 != 0 {
        H2Limits {
            max_frame: 64 + (control >> 27 & 0xFFF) as usize,
            max_header_block: 64 + (control >> 39 & 0x3FF) as usize,
            max_header_list: 64 + (control >> 49 & 0x3FF) as usize,
            max_body: (control >> 59 & 0xF) as usize * 16,
            max_streams: 1 + (control >> 59 & 0x3) as usize,
            max_table: 4096,
        }
    } else {
        H2Limits::default()
    };
    let mut d = Decoder::client(limits);
    let mut server = Decoder::server(limits);
    let mut mid = Midstream::default();
    let _ = looks_like_frames(input.stream);
    let mut out = Vec::new();
    let shifted = common::Input {
        control,
        stream: &stream,
        limits: input.limits.clone(),
    };
    for (range, _gap) in shifted.pieces() {
        d.push(&stream[range.clone()], &mut out);
        server.push(&stream[range.clone()], &mut out);
        mid.push(&stream[range]);
        assert!(d.stats().accounted() <= d.stats().pushed);
    }
    d.finish(&mut out);
    server.finish(&mut out);
    let s = server.stats();
    assert_eq!(s.accounted(), s.pushed, "server side {s:?}");
    assert_eq!(mid.bytes, stream.len() as u64);
    assert!(mid.streams <= (stream.len() / HEADER_LEN) as u64);
    let s = d.stats();
    assert_eq!(s.accounted(), s.pushed, "{s:?}");
    assert_eq!(s.pushed, stream.len() as u64);
    for e in &out {
        if let H2Event::Request(r) = e {
            assert!(r.field(":method").is_some(), "request without :method");
            assert!(r.body.len() <= limits.max_body, "body over the bound");
        }
        if let H2Event::Response(r) = e {
            assert!((200..600).contains(&r.status), "final status {}", r.status);
            assert!(r.body.len() <= limits.max_body, "response prefix over the bound");
            assert!(r.body.len() as u64 <= r.body_len);
        }
    }
});
