use super::*;
use crate::http2::frame::header;

/// Header blocks from a real HPACK encoder (loona-hpack's), which indexes fields into its
/// dynamic table as an HTTP/2 client does: later blocks refer to earlier ones.
struct Client {
    hpack: loona_hpack::Encoder<'static>,
    bytes: Vec<u8>,
}

impl Client {
    fn new() -> Self {
        let mut bytes = PREFACE.to_vec();
        // SETTINGS with one setting (ENABLE_PUSH 0), then a WINDOW_UPDATE.
        bytes.extend_from_slice(&header(6, kind::SETTINGS, 0, 0));
        bytes.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        bytes.extend_from_slice(&header(4, kind::WINDOW_UPDATE, 0, 0));
        bytes.extend_from_slice(&[0, 0xff, 0, 0]);
        Self {
            hpack: loona_hpack::Encoder::new(),
            bytes,
        }
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.hpack
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.bytes
            .extend_from_slice(&header(payload.len(), kind, flags, stream));
        self.bytes.extend_from_slice(payload);
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let b = self.block(fields);
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        self.frame(kind::HEADERS, flags, stream, &b);
    }

    fn get(&mut self, stream: u32, path: &str) {
        self.headers(
            stream,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "api.example"),
                (":path", path),
                ("user-agent", "test/1"),
            ],
            true,
        );
    }
}

fn decode_all(bytes: &[u8], splits: &[usize]) -> (Vec<H2Event>, ClientDecoder) {
    let mut d = ClientDecoder::new(H2Limits::default());
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
        let s = s.clamp(at, bytes.len());
        d.push(&bytes[at..s], &mut out);
        at = s;
    }
    (out, d)
}

fn requests(events: &[H2Event]) -> Vec<&H2Request> {
    events
        .iter()
        .filter_map(|e| match e {
            H2Event::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn balanced(d: &ClientDecoder) {
    let s = d.stats();
    assert_eq!(
        s.accounted() + d.buffered_bytes() as u64 + held_frames(d),
        s.pushed,
        "{s:?}"
    );
}

/// Frame bytes of streams still open (counted when they end).
fn held_frames(d: &ClientDecoder) -> u64 {
    d.streams.values().map(|s| s.bytes).sum::<u64>()
        - d.streams.values().map(|s| s.body.len() as u64).sum::<u64>()
        + d.block
            .as_ref()
            .map_or(0, |b| b.bytes - b.fragment.len() as u64)
}

#[test]
fn requests_with_bodies_trailers_continuation_and_padding_at_every_split() {
    let mut c = Client::new();
    c.get(1, "/a");
    // Stream 3: POST whose header block is cut over HEADERS and two CONTINUATIONs.
    let block = c.block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "api.example"),
        (":path", "/grpc.Svc/Call"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let (a, rest) = block.split_at(5);
    let (b, z) = rest.split_at(rest.len() / 2);
    c.frame(kind::HEADERS, 0, 3, a);
    c.frame(kind::CONTINUATION, 0, 3, b);
    c.frame(kind::CONTINUATION, flag::END_HEADERS, 3, z);
    // Stream 5 opens and ends while 3 is still sending.
    c.get(5, "/b");
    // DATA on 3: plain, then padded (pad length 3).
    c.frame(kind::DATA, 0, 3, b"hello ");
    c.frame(
        kind::DATA,
        flag::PADDED,
        3,
        &[3, b'w', b'o', b'r', b'l', b'd', 0, 0, 0],
    );
    c.frame(kind::PING, 0, 0, &[0; 8]);
    // Trailers end stream 3.
    let t = c.block(&[("grpc-timeout", "1S")]);
    c.frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 3, &t);
    // Stream 7 repeats stream 1's fields: the encoder refers to its dynamic table.
    c.get(7, "/a");
    let bytes = c.bytes.clone();
    let (whole, d) = decode_all(&bytes, &[]);
    balanced(&d);
    let r = requests(&whole);
    let ids: Vec<u32> = r.iter().map(|r| r.stream).collect();
    assert_eq!(ids, [1, 5, 3, 7], "in the order streams end");
    assert_eq!(r[0].field(":path"), Some(&b"/a"[..]));
    assert_eq!(r[0].field("user-agent"), Some(&b"test/1"[..]));
    assert_eq!(r[2].field(":method"), Some(&b"POST"[..]));
    assert_eq!(r[2].body.as_ref(), b"hello world");
    assert_eq!(
        r[2].trailers,
        [(Bytes::from("grpc-timeout"), Bytes::from("1S"))]
    );
    assert_eq!(r[3].headers, r[0].headers);
    let s = d.stats();
    assert_eq!(
        (s.requests, s.dropped_streams, s.undecodable_bytes),
        (4, 0, 0)
    );
    assert_eq!(s.accounted(), s.pushed, "nothing held at the end: {s:?}");
    // Every split point, and byte by byte: the same requests.
    for cut in 0..bytes.len() {
        let (events, d) = decode_all(&bytes, &[cut]);
        assert_eq!(events, whole, "split at {cut}");
        balanced(&d);
    }
    let every: Vec<usize> = (1..bytes.len()).collect();
    let (events, _) = decode_all(&bytes, &every);
    assert_eq!(events, whole);
}

#[test]
fn resets_malformed_heads_and_bounds_drop_only_their_stream() {
    let mut c = Client::new();
    // 1: reset before its end; its later DATA is counted as dropped.
    c.headers(
        1,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/up")],
        false,
    );
    c.frame(kind::DATA, 0, 1, b"part");
    c.frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]);
    c.frame(kind::DATA, flag::END_STREAM, 1, b"late");
    // 3: no :path. 5: a regular field before a pseudo-header field.
    c.headers(3, &[(":method", "GET"), (":scheme", "http")], true);
    c.headers(
        5,
        &[
            (":method", "GET"),
            ("x", "1"),
            (":scheme", "http"),
            (":path", "/"),
        ],
        true,
    );
    // 7: fine, after all that (the table stayed in step).
    c.get(7, "/ok");
    let (events, d) = decode_all(&c.bytes, &[]);
    balanced(&d);
    assert_eq!(
        events,
        [
            H2Event::Dropped {
                stream: 1,
                reason: H2DropReason::Reset
            },
            H2Event::Dropped {
                stream: 3,
                reason: H2DropReason::Malformed
            },
            H2Event::Dropped {
                stream: 5,
                reason: H2DropReason::Malformed
            },
        ]
        .into_iter()
        .chain(std::iter::once(events[3].clone()))
        .collect::<Vec<_>>()
    );
    assert_eq!(requests(&events)[0].field(":path"), Some(&b"/ok"[..]));
    let s = d.stats();
    assert_eq!((s.requests, s.dropped_streams), (1, 3));
    assert!(s.dropped_bytes > 0);
    assert_eq!(s.accounted(), s.pushed);

    // Bounds: a body over max_body, and streams over max_streams.
    let mut c = Client::new();
    c.headers(
        1,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/big")],
        false,
    );
    c.frame(kind::DATA, 0, 1, &[7; 100]);
    c.frame(kind::DATA, flag::END_STREAM, 1, &[7; 100]);
    c.headers(
        3,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/open")],
        false,
    );
    c.get(5, "/over");
    c.frame(kind::DATA, flag::END_STREAM, 3, b"x");
    let mut d = ClientDecoder::new(H2Limits {
        max_body: 150,
        max_streams: 1,
        ..H2Limits::default()
    });
    let mut events = Vec::new();
    d.push(&c.bytes, &mut events);
    let over = H2DropReason::OverLimit;
    assert_eq!(
        events[..2],
        [
            H2Event::Dropped {
                stream: 1,
                reason: over
            },
            H2Event::Dropped {
                stream: 5,
                reason: over
            },
        ]
    );
    assert_eq!(requests(&events).len(), 1, "stream 3 still completes");
    assert_eq!(d.stats().accounted(), d.stats().pushed);

    // The connection ends with a stream open and a frame half read: all counted.
    let mut c = Client::new();
    c.headers(
        1,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/cut")],
        false,
    );
    c.frame(kind::DATA, 0, 1, b"partial body");
    let mut d = ClientDecoder::new(H2Limits::default());
    let mut events = Vec::new();
    d.push(&c.bytes[..c.bytes.len() - 4], &mut events);
    assert!(events.is_empty());
    d.finish(&mut events);
    assert_eq!(
        events,
        [H2Event::Dropped {
            stream: 1,
            reason: H2DropReason::Unfinished
        }]
    );
    assert_eq!(d.stats().accounted(), d.stats().pushed, "{:?}", d.stats());
    // Mid-preface.
    let mut d = ClientDecoder::new(H2Limits::default());
    d.push(&PREFACE[..10], &mut events);
    d.finish(&mut events);
    assert_eq!(d.stats().accounted(), d.stats().pushed);
}

#[test]
fn connection_errors_stop_decoding_and_count_the_rest() {
    // Not HTTP/2 (or its start was not seen).
    let (events, d) = decode_all(b"GET / HTTP/1.1\r\n\r\n", &[3]);
    assert_eq!(events, [H2Event::Failed(H2Failure::NoPreface)]);
    assert_eq!(d.stats().undecodable_bytes, 18);
    assert_eq!(starts_with_preface(b"PRI * HT"), None);
    assert_eq!(starts_with_preface(b"GET "), Some(false));
    assert_eq!(starts_with_preface(PREFACE), Some(true));
    // CONTINUATION expected, another frame came.
    let mut c = Client::new();
    let b = c.block(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]);
    c.frame(kind::HEADERS, 0, 1, &b);
    c.frame(kind::PING, 0, 0, &[0; 8]);
    c.get(3, "/never");
    let (events, d) = decode_all(&c.bytes, &[]);
    assert_eq!(events, [H2Event::Failed(H2Failure::Protocol)]);
    let s = d.stats();
    assert_eq!(s.accounted(), s.pushed, "{s:?}");
    // A frame over the bound, announced by a partial header.
    let mut c = Client::new();
    c.frame(kind::DATA, 0, 1, &vec![0; 2000]);
    let mut d = ClientDecoder::new(H2Limits {
        max_frame: 1000,
        ..H2Limits::default()
    });
    let mut events = Vec::new();
    let cut = c.bytes.len() - 1990;
    d.push(&c.bytes[..cut], &mut events);
    d.push(&c.bytes[cut..], &mut events);
    assert_eq!(events, [H2Event::Failed(H2Failure::TooLarge)]);
    assert_eq!(d.stats().accounted(), d.stats().pushed);
    // An HPACK index that does not exist.
    let mut c = Client::new();
    c.frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &[0xff, 0x7f],
    );
    let (events, d) = decode_all(&c.bytes, &[]);
    assert_eq!(events, [H2Event::Failed(H2Failure::Hpack)]);
    assert_eq!(d.stats().accounted(), d.stats().pushed);
    // A table size update over the decoder's bound (0x3f e1 ff 03: 65536 + 31 ...).
    let mut c = Client::new();
    let mut big = vec![0x3f];
    big.extend(
        loona_hpack::encoder::encode_integer(1 << 20, 5)
            .into_iter()
            .skip(1),
    );
    c.frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &big);
    let (events, _) = decode_all(&c.bytes, &[]);
    assert_eq!(events, [H2Event::Failed(H2Failure::Hpack)]);
}
