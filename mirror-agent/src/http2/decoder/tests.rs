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

fn decode_all(bytes: &[u8], splits: &[usize]) -> (Vec<H2Event>, Decoder) {
    feed(Decoder::client(H2Limits::default()), bytes, splits)
}

/// Pushes `bytes` into `d` cut at `splits` (each piece stamped with its offset as its time).
fn feed(mut d: Decoder, bytes: &[u8], splits: &[usize]) -> (Vec<H2Event>, Decoder) {
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&bytes.len())) {
        let s = s.clamp(at, bytes.len());
        d.push_at(&bytes[at..s], at as u64, &mut out);
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

fn balanced(d: &Decoder) {
    let s = d.stats();
    assert_eq!(
        s.accounted() + d.buffered_bytes() as u64 + held_frames(d),
        s.pushed,
        "{s:?}"
    );
}

/// Frame bytes of streams still open (counted when they end).
fn held_frames(d: &Decoder) -> u64 {
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
        (s.messages, s.dropped_streams, s.undecodable_bytes),
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
    assert_eq!((s.messages, s.dropped_streams), (1, 3));
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
    let mut d = Decoder::client(H2Limits {
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
    let mut d = Decoder::client(H2Limits::default());
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
    let mut d = Decoder::client(H2Limits::default());
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
    let mut d = Decoder::client(H2Limits {
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

/// A server's side of a connection: no preface, a SETTINGS frame first.
fn server_peer() -> Client {
    let mut s = Client::new();
    s.bytes.clear();
    s.frame(kind::SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    s
}

fn decode_server(bytes: &[u8], splits: &[usize], max_body: usize) -> (Vec<H2Event>, Decoder) {
    let limits = H2Limits {
        max_body,
        ..H2Limits::default()
    };
    feed(Decoder::server(limits), bytes, splits)
}

fn responses(events: &[H2Event]) -> Vec<&H2Response> {
    events
        .iter()
        .filter_map(|e| match e {
            H2Event::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The server direction: responses in the order the server ends them (not the order the
/// client opened them), a 1xx head skipped, trailers kept, the body prefix bounded, a pushed
/// stream decoded only for the table (later blocks refer to fields the push indexed), a
/// server reset dropping its stream only; the same at every split point.
#[test]
fn server_side_responses_out_of_order_with_informational_trailers_pushes_and_resets() {
    let mut s = server_peer();
    // Stream 3 is answered first, with a 100 (Continue) before its final head.
    s.headers(3, &[(":status", "100")], false);
    s.headers(
        3,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.frame(kind::DATA, 0, 3, b"0123456789");
    s.headers(3, &[("grpc-status", "0"), ("grpc-message", "")], true);
    // A push on stream 1 indexes `x-pushed` in the table; its stream 2 is never compared.
    let promise = s.block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "api"),
        (":path", "/style.css"),
        ("x-pushed", "yes"),
    ]);
    let mut p = vec![0, 0, 0, 2];
    p.extend_from_slice(&promise);
    s.frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &p);
    s.headers(2, &[(":status", "200"), ("x-pushed", "yes")], false);
    s.frame(kind::DATA, flag::END_STREAM, 2, b"body{}");
    // Stream 1's head refers to the pushed field; padded DATA.
    s.headers(1, &[(":status", "404"), ("x-pushed", "yes")], false);
    s.frame(
        kind::DATA,
        flag::PADDED | flag::END_STREAM,
        1,
        &[2, b'n', b'o', 0, 0],
    );
    // Stream 5 is reset by the server after its head.
    s.headers(5, &[(":status", "200")], false);
    s.frame(kind::RST_STREAM, 0, 5, &[0, 0, 0, 2]);
    s.frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]);
    let bytes = s.bytes.clone();
    let (whole, d) = decode_server(&bytes, &[], 4);
    let r = responses(&whole);
    let ids: Vec<u32> = r.iter().map(|r| r.stream).collect();
    assert_eq!(ids, [3, 1], "in the order the server ends them");
    assert_eq!((r[0].status, r[0].informational), (200, 1));
    assert_eq!(
        r[0].headers,
        [(Bytes::from("content-type"), Bytes::from("application/grpc"))]
    );
    assert_eq!(
        (r[0].body.as_ref(), r[0].body_len, r[0].truncated),
        (&b"0123"[..], 10, true)
    );
    assert_eq!(
        r[0].trailers[0],
        (Bytes::from("grpc-status"), Bytes::from("0"))
    );
    assert_eq!((r[1].status, r[1].body.as_ref()), (404, &b"no"[..]));
    assert_eq!(
        r[1].headers,
        [(Bytes::from("x-pushed"), Bytes::from("yes"))]
    );
    assert!(whole.contains(&H2Event::Dropped {
        stream: 5,
        reason: H2DropReason::Reset
    }));
    let st = d.stats();
    assert_eq!(
        (
            st.messages,
            st.informational,
            st.pushed_streams,
            st.dropped_streams
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(st.accounted(), st.pushed, "{st:?}");
    assert!(!d.failed());
    for cut in 0..bytes.len() {
        let (events, d) = decode_server(&bytes, &[cut], 4);
        let got: Vec<_> = responses(&events)
            .iter()
            .map(|r| (r.stream, r.status, r.body.clone()))
            .collect();
        let want: Vec<_> = r
            .iter()
            .map(|r| (r.stream, r.status, r.body.clone()))
            .collect();
        assert_eq!(got, want, "split at {cut}");
        balanced(&d);
    }
}

/// Response heads the server side refuses: a second pseudo-header, a status that is not three
/// digits, a 1xx that ends the stream, DATA before the head: each drops its stream only.
#[test]
fn server_side_malformed_heads_drop_their_stream_only() {
    let mut s = server_peer();
    s.headers(1, &[(":status", "200"), (":path", "/x")], true);
    s.headers(3, &[(":status", "20")], true);
    s.headers(5, &[(":status", "103")], true);
    s.frame(kind::DATA, flag::END_STREAM, 7, b"early");
    s.headers(9, &[(":status", "204")], true);
    let (events, d) = decode_server(&s.bytes, &[], 1024);
    let r = responses(&events);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].stream, r[0].status), (9, 204));
    let dropped: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            H2Event::Dropped { stream, reason } => {
                assert_eq!(*reason, H2DropReason::Malformed);
                Some(*stream)
            }
            _ => None,
        })
        .collect();
    assert_eq!(dropped, [1, 3, 5]);
    let st = d.stats();
    assert_eq!(st.accounted(), st.pushed, "{st:?}");
    // A PUSH_PROMISE is a connection error from a client, not from a server.
    let mut c = Client::new();
    c.frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]);
    let (events, _) = decode_all(&c.bytes, &[]);
    assert_eq!(events.last(), Some(&H2Event::Failed(H2Failure::Protocol)));
}
