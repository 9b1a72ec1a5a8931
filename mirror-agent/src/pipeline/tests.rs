use super::*;
use crate::capture::TcpFlags;
use crate::capture::pcap::synth::Conversation;

fn cfg() -> PipelineConfig {
    PipelineConfig::default()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn run(p: &mut Pipeline, segs: impl IntoIterator<Item = Segment>) -> Vec<PipelineEvent> {
    let mut out = Vec::new();
    for s in segs {
        p.on_segment(s, &mut out);
    }
    out
}

fn requests(evs: &[PipelineEvent]) -> Vec<&CapturedRequest> {
    evs.iter()
        .filter_map(|e| match e {
            PipelineEvent::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn finish(p: &mut Pipeline, out: &mut Vec<PipelineEvent>) -> PipelineStats {
    p.finish(out);
    let s = p.stats();
    s.check_balance_at_end()
        .unwrap_or_else(|e| panic!("{e}\n{s}"));
    s
}

/// The only segment of connection `i` (its own client address) to port 80: `payload`, no SYN.
fn client_segment(i: u32, payload: &Bytes) -> Segment {
    Segment {
        src: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1024)),
        dst: addr("10.255.0.1:80"),
        seq: i,
        ack: 0,
        flags: TcpFlags(TcpFlags::ACK | TcpFlags::PSH),
        direction: None,
        ts_ns: u64::from(i),
        payload: payload.clone(),
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
const POST: &[u8] = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";

fn keepalive() -> Conversation {
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(GET, 7)
        .server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100)
        .client_sends(POST, 1000)
        .close();
    c
}

#[test]
fn keepalive_requests_in_order_and_counters_add_up() {
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, keepalive().segments);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].src, r[0].dst),
        (addr("10.0.0.1:5000"), addr("10.0.0.2:8080"))
    );
    assert_eq!(&r[0].request.raw[..], GET);
    assert_eq!(&r[1].request.raw[..], POST);
    assert_eq!((r[0].seq_in_flow, r[1].seq_in_flow), (0, 1));
    assert_eq!(r[0].flow_id, r[1].flow_id);
    assert_eq!(s.flows, 1);
    assert_eq!(s.flows_closed, 1);
    assert_eq!(s.requests, 2);
    assert_eq!(s.request_bytes, (GET.len() + POST.len()) as u64);
}

#[test]
fn direction_from_port_syn_or_first_payload() {
    // Capture starts with the server's response, then the client's request: no SYN, no port.
    let mut c = keepalive();
    let segs: Vec<Segment> = c.segments.drain(..).collect();
    let server_first: Vec<Segment> = segs
        .iter()
        .filter(|s| !s.flags.syn() && !s.payload.is_empty())
        .skip_while(|s| s.src.port() == 5000)
        .cloned()
        .collect();
    assert!(server_first[0].payload.starts_with(b"HTTP/1.1"));
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, server_first);
    finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].src, addr("10.0.0.1:5000"));

    // With --port the port decides even when the client sends nothing like HTTP first.
    let mut c = Conversation::new(addr("10.0.0.1:80"), addr("10.0.0.2:9999"), [1, 2]);
    c.client_sends(b"junk\r\n", 100).client_sends(GET, 100);
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![80],
        ..cfg()
    });
    // Here 10.0.0.1:80 is the server (its port is configured): GET comes from "the client"
    // 10.0.0.2:9999 only if it sends it, so nothing is a request from port 80's side.
    let mut out = run(&mut p, c.segments.clone());
    let s = finish(&mut p, &mut out);
    assert_eq!(s.requests, 0);
    assert_eq!(s.server.bytes_offered, (6 + GET.len()) as u64);

    // Other ports are not ours.
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![443],
        ..cfg()
    });
    let mut out = run(&mut p, keepalive().segments);
    let s = finish(&mut p, &mut out);
    assert_eq!(s.segments_other_port, s.segments);
    assert_eq!(s.flows, 0);
}

#[test]
fn non_http_connections_are_counted_and_ignored() {
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:443"), [1, 2]);
    c.handshake()
        .client_sends(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http",
            100,
        )
        .server_sends(b"\x16\x03\x03 server hello", 100)
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    assert_eq!(s.flows_not_http, 1);
    assert_eq!(s.requests, 0);
    assert_eq!(s.request_drops.total().count, 0);
    assert!(s.client_bytes_ignored > 0);

    // Mid-stream without any HTTP line in either direction: never decided, counted.
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:22"), [1, 2]);
    c.client_sends(b"SSH-2.0-x\r\n", 100);
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    assert_eq!(s.flows_undecided, 1);
    assert_eq!(s.undecided_bytes, 11);
}

#[test]
fn gap_timeout_drops_the_request_and_resyncs() {
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.step_ns = 1_000_000;
    c.handshake()
        .client_sends(b"GET /lost HTTP/1.1\r\nHost: h\r\n\r\n", 10)
        .client_sends(GET, 100);
    let mut segs = c.segments;
    // Lose the second piece of the first request for good. (Resync happens at line starts: the
    // framer cannot find a request glued to the end of a body whose length it lost.)
    let lost = segs.remove(4);
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![80],
        ..cfg()
    });
    let mut out = run(&mut p, segs);
    assert!(
        requests(&out).is_empty(),
        "nothing after a hole before its timeout"
    );
    p.on_tick(lost.ts_ns + 2_000_000_000, &mut out);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].request.raw[..], GET);
    assert_eq!(s.client.gaps, 1);
    assert_eq!(s.client.gap_bytes, lost.payload.len() as u64);
    assert_eq!(s.request_drops.gap.count, 1);
}

#[test]
fn idle_flows_expire_on_ticks() {
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake().client_sends(b"GET /half HTTP/1.1\r\n", 100);
    let t0 = c.ts_ns;
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    p.on_tick(t0 + 1_000_000_000, &mut out);
    assert_eq!(p.stats().flows_active, 1);
    p.on_tick(t0 + 121_000_000_000, &mut out);
    let s = finish(&mut p, &mut out);
    assert_eq!(s.flows_idle_expired, 1);
    assert_eq!(s.request_drops.truncated.count, 1);
}

#[test]
fn quiet_finished_connections_are_retired_not_evicted() {
    // A keep-alive connection whose last request (and its response) is complete goes quiet:
    // the idle timeout retires it, and that is no loss, so it is not an eviction.
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake()
        .client_sends(GET, 100)
        .server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", 100);
    let t0 = c.ts_ns;
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    p.on_tick(t0 + 121_000_000_000, &mut out);
    assert_eq!(p.stats().flows_active, 0);
    let s = finish(&mut p, &mut out);
    assert_eq!((s.flows_idle_finished, s.flows_idle_expired), (1, 0), "{s}");
    assert_eq!(s.request_drops.lost().count, 0);
    assert_eq!(requests(&out).len(), 1);
    // The same connection in the middle of its next request is an expiry that loses it.
    let mut c = Conversation::new(addr("10.0.0.1:5001"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake()
        .client_sends(GET, 100)
        .client_sends(b"GET /half HTTP/1.1\r\n", 100);
    let t0 = c.ts_ns;
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    p.on_tick(t0 + 121_000_000_000, &mut out);
    let s = finish(&mut p, &mut out);
    assert_eq!((s.flows_idle_finished, s.flows_idle_expired), (0, 1), "{s}");
    assert_eq!(s.request_drops.truncated.count, 1);
}

#[test]
fn a_million_flows_stay_bounded_and_evictions_are_counted() {
    const N: u32 = 1_000_000;
    let max_flows = 10_000;
    let mut p = Pipeline::new(PipelineConfig { max_flows, ..cfg() });
    let mut out = Vec::new();
    let head = Bytes::from_static(b"GET /partial HTTP/1.1\r\nHost: x\r\n");
    for i in 0..N {
        p.on_segment(client_segment(i, &head), &mut out);
        assert!(p.flows.len() <= max_flows);
        assert!(p.flows.lru_len() <= 2 * max_flows + 64);
    }
    assert!(p.held_bytes() <= max_flows * head.len());
    let s = finish(&mut p, &mut out);
    assert_eq!(s.flows, u64::from(N));
    assert_eq!(s.flows_evicted_max_flows, u64::from(N) - max_flows as u64);
    assert_eq!(s.request_drops.truncated.count, u64::from(N));
    assert_eq!(s.requests, 0);
}

#[test]
fn memory_budget_evicts_flows_holding_bytes() {
    let budget = 64 * 1024;
    let mut p = Pipeline::new(PipelineConfig {
        memory_budget: budget,
        ..cfg()
    });
    let mut out = Vec::new();
    let mut total_held = 0;
    for i in 0..100u16 {
        let mut c = Conversation::new(
            SocketAddr::from(([10, 0, 0, 1], 2000 + i)),
            addr("10.0.0.2:80"),
            [1, 2],
        );
        // A hole at the start of the body, then 4 KiB out of order behind it.
        c.handshake()
            .client_sends(b"POST / HTTP/1.1\r\nContent-Length: 8192\r\n\r\n", 1000);
        c.next_seq[0] = c.next_seq[0].wrapping_add(100);
        c.client_sends(&[b'x'; 4096], 1000);
        for s in c.segments {
            p.on_segment(s, &mut out);
            assert!(p.held_bytes() <= budget, "held {}", p.held_bytes());
        }
        total_held += 4096;
    }
    assert!(total_held > budget);
    let s = finish(&mut p, &mut out);
    assert!(s.memory_sheds > 0, "{s}");
    assert!(s.client.gaps_bound >= s.memory_sheds, "{s}");
    assert_eq!(s.flows_open_at_end, 100);

    // Partial requests (held by the framer, not by reassembly) can only be evicted.
    let mut p = Pipeline::new(PipelineConfig {
        memory_budget: budget,
        ..cfg()
    });
    let head = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "y".repeat(8000));
    for i in 0..20u16 {
        let mut c = Conversation::new(
            SocketAddr::from(([10, 0, 0, 1], 3000 + i)),
            addr("10.0.0.2:80"),
            [1, 2],
        );
        c.handshake().client_sends(head.as_bytes(), 1400);
        for seg in c.segments {
            p.on_segment(seg, &mut out);
            assert!(p.held_bytes() <= budget, "held {}", p.held_bytes());
        }
    }
    let s = finish(&mut p, &mut out);
    assert!(s.flows_evicted_memory > 0, "{s}");
    assert_eq!(s.request_drops.truncated.count, 20);
}

#[test]
fn garbage_payloads_never_panic_and_add_up() {
    let mut x = 0x9e37_79b9_u32;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut p = Pipeline::new(PipelineConfig {
        max_flows: 50,
        memory_budget: 256 * 1024,
        ..cfg()
    });
    let mut out = Vec::new();
    for i in 0..20_000u64 {
        let len = (rnd() % 1500) as usize;
        let mut payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        if rnd() % 4 == 0 {
            payload.splice(0..0, b"GET / HTTP/1.1\r\n".iter().copied());
        }
        let port = 1000 + (rnd() % 80) as u16;
        let (a, b) = (SocketAddr::from(([10, 0, 0, 1], port)), addr("10.0.0.2:80"));
        let (src, dst) = if rnd() % 3 == 0 { (b, a) } else { (a, b) };
        p.on_segment(
            Segment {
                src,
                dst,
                seq: rnd(),
                ack: rnd(),
                flags: TcpFlags((rnd() & 0x1f) as u8),
                direction: None,
                ts_ns: i * 1_000_000,
                payload: Bytes::from(payload),
            },
            &mut out,
        );
        if i % 100 == 0 {
            p.on_tick(i * 1_000_000, &mut out);
        }
        out.clear();
    }
    finish(&mut p, &mut out);
}

#[test]
fn responses_are_paired_with_requests_in_order() {
    let mut c = Conversation::new(
        addr("10.0.0.1:5000"),
        addr("10.0.0.2:80"),
        [u32::MAX - 10, 7],
    );
    c.handshake()
        .client_sends(b"HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n", 9)
        // HEAD: Content-Length but no body; then a 100 and a 200 with a chunked body.
        .server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 5)
        .server_sends(b"HTTP/1.1 100 Continue\r\n\r\n", 5)
        .server_sends(
            b"HTTP/1.1 404 NF\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            5,
        )
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    let pairs: Vec<(u64, u16, u64)> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Response(r) => {
                Some((r.seq_in_flow, r.response.status, r.response.body_len))
            }
            _ => None,
        })
        .collect();
    assert_eq!(pairs, vec![(0, 200, 0), (1, 404, 3)], "{s}");
    assert_eq!(
        (s.responses, s.responses_informational, s.responses_unpaired),
        (2, 1, 0)
    );
    // Each response event follows its request's event.
    let first_resp = out
        .iter()
        .position(|e| matches!(e, PipelineEvent::Response(_)))
        .unwrap();
    assert!(
        out[..first_resp]
            .iter()
            .any(|e| matches!(e, PipelineEvent::Request(_)))
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// A keep-alive conversation in both directions, cut into random segment sizes.
    fn conversation(cuts: &[usize], isn: [u32; 2]) -> (Vec<Segment>, Vec<Vec<u8>>) {
        let reqs: Vec<Vec<u8>> = (0..6)
            .map(|i| match i % 3 {
                0 => format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes(),
                1 => format!("POST /p{i} HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
                    .into_bytes(),
                _ => format!(
                    "PUT /c{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
                )
                .into_bytes(),
            })
            .collect();
        let mut c = Conversation::new(addr("10.9.0.1:4000"), addr("10.9.0.2:80"), isn);
        c.handshake();
        for (i, r) in reqs.iter().enumerate() {
            c.client_sends(r, cuts[i % cuts.len()]);
            c.server_sends(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
                cuts[(i + 1) % cuts.len()],
            );
        }
        c.close();
        (c.segments, reqs)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Reordering (within a window and a direction), duplicates (also after the close)
        /// and sequence wraparound change nothing:
        /// the same requests, byte for byte, in order, each paired with its response, and the
        /// counters add up.
        #[test]
        fn reordered_and_duplicated_segments_give_the_same_requests(
            cuts in proptest::collection::vec(1usize..40, 1..6),
            swaps in proptest::collection::vec((0usize..200, 1usize..4), 0..30),
            dups in proptest::collection::vec(0usize..200, 0..10),
            isn in (any::<u32>(), any::<u32>()),
        ) {
            let (mut segs, reqs) = conversation(&cuts, [isn.0, isn.1]);
            // Keep the handshake first (it fixes the client side and the ISNs).
            let n = segs.len();
            for (at, dist) in swaps {
                let i = 3 + at % (n - 3);
                let j = (i + dist).min(n - 1);
                // Reordering within a direction. Across directions a response captured before
                // any byte of its request cannot be told from the answer to a lost request;
                // `response_overtaking_part_of_its_request` covers what can be told.
                if segs[i].src == segs[j].src {
                    segs.swap(i, j);
                }
            }
            for d in dups {
                let i = 3 + d % (n - 3);
                let copy = segs[i].clone();
                segs.push(copy);
            }
            let mut p = Pipeline::new(cfg());
            let mut out = run(&mut p, segs);
            p.finish(&mut out);
            let s = p.stats();
            prop_assert!(s.check_balance_at_end().is_ok(), "{:?}\n{}", s.check_balance_at_end(), s);
            let got: Vec<Vec<u8>> = requests(&out).iter().map(|r| r.request.raw.to_vec()).collect();
            prop_assert_eq!(got, reqs);
            prop_assert_eq!(s.responses, 6);
            prop_assert_eq!(s.client.gaps + s.server.gaps, 0);
        }
    }
}

#[test]
fn response_overtaking_part_of_its_request_is_still_paired() {
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake()
        .client_sends(b"GET /1 HTTP/1.1\r\n\r\n", 100)
        .server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", 100)
        .client_sends(b"POST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\n", 100)
        .client_sends(b"body", 100)
        .server_sends(b"HTTP/1.1 201 Created\r\n\r\n", 100)
        .close();
    let mut segs = c.segments;
    // The 201 is captured before the last piece of the POST it answers.
    let body = segs.remove(6);
    segs.insert(7, body);
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, segs);
    let s = finish(&mut p, &mut out);
    let pairs: Vec<(u64, u16)> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Response(r) => Some((r.seq_in_flow, r.response.status)),
            _ => None,
        })
        .collect();
    assert_eq!(pairs, vec![(0, 204), (1, 201)]);
    assert_eq!(s.responses_unpaired, 0);
}

#[test]
fn late_retransmission_after_close_is_not_a_second_request() {
    let mut segs = keepalive().segments;
    let get = segs[3].clone();
    assert!(get.payload.starts_with(b"GET"));
    let mut late = get.clone();
    late.ts_ns += 1_000_000_000;
    segs.push(late);
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![8080],
        ..cfg()
    });
    let mut out = run(&mut p, segs);
    let s = finish(&mut p, &mut out);
    assert_eq!(s.requests, 2);
    assert_eq!(s.flows, 1);
    assert_eq!(s.segments_after_close, 1);
    assert_eq!(s.after_close_bytes, get.payload.len() as u64);

    // A new connection (SYN) on the same addresses is a new flow.
    let mut p = Pipeline::new(cfg());
    let mut segs = keepalive().segments;
    segs.extend(keepalive().segments);
    let mut out = run(&mut p, segs);
    let s = finish(&mut p, &mut out);
    assert_eq!((s.flows, s.requests), (2, 4));
}

#[test]
fn megabyte_header_line_and_100k_tiny_chunks() {
    // A 1 MiB header line: dropped as too large (counted), with bounded memory. The head's end
    // and framing are unknown, so the rest of the connection joins the drop; the next
    // connection is framed as usual.
    let mut big = b"GET /big HTTP/1.1\r\nX-Long: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(b"\r\n\r\n");
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake()
        .client_sends(&big, 1448)
        .client_sends(GET, 100)
        .close();
    let mut next = Conversation::new(addr("10.0.0.1:5001"), addr("10.0.0.2:80"), [3, 4]);
    next.handshake().client_sends(GET, 100).close();
    let mut p = Pipeline::new(cfg());
    let mut out = Vec::new();
    let mut peak = 0;
    for s in c.segments.into_iter().chain(next.segments) {
        p.on_segment(s, &mut out);
        peak = peak.max(p.held_bytes());
    }
    let s = finish(&mut p, &mut out);
    assert!(peak <= 2 * 64 * 1024, "held {peak} bytes for one head");
    assert_eq!(s.request_drops.head_too_large.count, 1);
    assert_eq!(
        s.request_drops.head_too_large.bytes,
        (big.len() + GET.len()) as u64
    );
    let r = requests(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].request.raw[..], GET);
    assert_eq!(r[0].src, addr("10.0.0.1:5001"));

    // 100k one-byte chunks, each in its own segment.
    const HEAD: &[u8] = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = Vec::new();
    for _ in 0..100_000 {
        body.extend_from_slice(b"1\r\nx\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut c = Conversation::new(addr("10.0.0.1:5001"), addr("10.0.0.2:80"), [1, 2]);
    c.handshake()
        .client_sends(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            100,
        )
        .client_sends(&body, 6)
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].request.body_len, 100_000);
    assert_eq!(s.request_bytes, (HEAD.len() + body.len()) as u64);
}

#[test]
fn a_final_after_a_dropped_answer_is_not_paired_with_its_request() {
    // The response to the only request loses bytes of its body (an answer drop), then a second
    // response comes that no request waits for. (The fuzz input that broke pairing had this
    // shape within one batch; this test has it across batches.)
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:80"), [1, 2]);
    c.step_ns = 1_000_000;
    c.handshake()
        .client_sends(GET, 100)
        .server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 100)
        .server_sends(b"01234", 100)
        .server_sends(b"56789", 100)
        .server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", 100);
    let mut segs = c.segments;
    let lost = segs.remove(5);
    assert_eq!(&lost.payload[..], b"01234");
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, segs);
    p.on_tick(lost.ts_ns + 5_000_000_000, &mut out);
    let s = finish(&mut p, &mut out);
    assert!(
        !out.iter().any(|e| matches!(e, PipelineEvent::Response(_))),
        "{out:?}"
    );
    assert_eq!((s.responses_lost, s.responses_unpaired), (1, 1), "{s}");
}

#[test]
fn budget_victims_are_found_without_scanning_every_flow() {
    // Flows that each hold an unfinished head (no holes) past the memory budget: every segment
    // over the budget needs a victim. Finding it once scanned every flow (for holes, then for
    // bytes), so the time grew with flows x segments; the budget queues skip each entry once.
    const N: u32 = 20_000;
    let head = Bytes::from(format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n", "p".repeat(8000)));
    let budget = 1000 * head.len();
    let mut p = Pipeline::new(PipelineConfig {
        memory_budget: budget,
        ..cfg()
    });
    let mut out = Vec::new();
    for i in 0..N {
        p.on_segment(client_segment(i, &head), &mut out);
        assert!(p.held_bytes() <= budget, "held {}", p.held_bytes());
    }
    let steps = p.flows.budget_steps;
    assert!(
        steps <= 4 * u64::from(N),
        "{steps} queue entries looked at for {N} segments: victims are searched, not queued"
    );
    let s = finish(&mut p, &mut out);
    assert_eq!(s.flows_evicted_memory, u64::from(N) - 1000, "{s}");
    assert_eq!(s.request_drops.truncated.count, u64::from(N));
}

#[test]
fn a_client_only_flow_closes_on_the_client_fin() {
    // Live capture of requests only (no --compare): the server's side is never followed, so
    // the client's FIN ends the flow; it used to wait 120 s and end as an idle eviction.
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(GET, 1000)
        .client_sends(POST, 1000)
        .close();
    let server_fin = c.segments.pop().expect("the server's FIN");
    assert!(server_fin.flags.fin() && server_fin.src == addr("10.0.0.2:8080"));
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![8080],
        responses: false,
        ..cfg()
    });
    let out = run(&mut p, c.segments.clone());
    assert_eq!(requests(&out).len(), 2);
    assert_eq!(p.flows.len(), 0, "closed on the client's FIN");
    let mut out = Vec::new();
    let s = finish(&mut p, &mut out);
    assert_eq!((s.flows_closed, s.flows_idle_expired), (1, 0), "{s}");

    // Following both sides (pcap files, --compare), the flow waits for the server's FIN.
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![8080],
        ..cfg()
    });
    run(&mut p, c.segments);
    assert_eq!(p.flows.len(), 1);
}

/// Live capture reads the ring in place (`on_segment_ref`): the events and every counter must be
/// exactly those of the same segments handed over owned, whatever the order, duplicates or
/// holes, with and without responses framed.
#[test]
fn reading_in_place_gives_the_same_events_and_counters_as_owned_segments() {
    let body = vec![b'z'; 70_000];
    let mut big = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n".to_vec();
    big.extend_from_slice(&body);
    let chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let mut conversations = Vec::new();
    for (i, mss) in [(0u8, 7usize), (1, 100), (2, 1448), (3, 65_000)] {
        let mut c = Conversation::new(
            SocketAddr::from(([10, 0, 1, i], 5000)),
            addr("10.0.0.2:8080"),
            [u32::MAX - 50, 9],
        );
        c.handshake()
            .client_sends(GET, mss)
            .server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", mss)
            .client_sends(&big, mss)
            .client_sends(chunked, mss)
            .server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", mss)
            .client_sends(POST, mss)
            .close();
        conversations.push(c.segments);
    }
    // A flow picked up mid-stream, and one that is not HTTP.
    let mut mid = Conversation::new(addr("10.0.2.1:6000"), addr("10.0.0.2:8080"), [1, 1]);
    mid.client_sends(b"tail of a body", 5).client_sends(GET, 9);
    conversations.push(mid.segments);
    conversations.push(vec![client_segment(
        7,
        &Bytes::from_static(b"\x16\x03\x01 not http"),
    )]);

    // Deterministic disorder: interleave the flows, swap neighbours, repeat some, drop one.
    let mut segs: Vec<Segment> = Vec::new();
    let longest = conversations.iter().map(Vec::len).max().unwrap();
    for n in 0..longest {
        for c in &conversations {
            if let Some(s) = c.get(n) {
                segs.push(s.clone());
            }
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in (1..segs.len()).rev() {
        match next() % 10 {
            0 => segs.swap(i, i - 1),
            1 => {
                let s = segs[i].clone();
                segs.insert(i, s);
            }
            _ => {}
        }
    }
    segs.remove(segs.len() / 2);

    for responses in [false, true] {
        let config = PipelineConfig {
            ports: vec![8080],
            responses,
            ..cfg()
        };
        let mut owned = Pipeline::new(config.clone());
        let mut in_place = Pipeline::new(config);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for s in &segs {
            owned.on_segment(s.clone(), &mut a);
            in_place.on_segment_ref(s.as_ref(), &mut b);
            assert_eq!(a, b, "events differ after {s:?}");
        }
        let (sa, sb) = (finish(&mut owned, &mut a), finish(&mut in_place, &mut b));
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert!(sa.requests >= 8, "{sa}");
    }
}

#[test]
fn an_omitted_body_asks_capture_to_skip_to_its_end_once() {
    let mut cfg = cfg();
    cfg.http.omit_bodies_over = Some(0);
    cfg.skip_omitted_bodies = true;
    let mut p = Pipeline::new(cfg);
    let client = addr("10.0.0.9:4000");
    let server = addr("10.0.0.1:80");
    let seg = |seq: u32, flags: u8, payload: &[u8]| Segment {
        src: client,
        dst: server,
        seq,
        ack: 0,
        flags: TcpFlags(flags),
        direction: None,
        ts_ns: 1,
        payload: Bytes::copy_from_slice(payload),
    };
    let head = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n";
    let isn = 0xffff_f000u32; // the body's end wraps around
    let mut first = head.to_vec();
    first.extend_from_slice(&[7u8; 1000]);
    let out = run(
        &mut p,
        [
            seg(isn, TcpFlags::SYN, b""),
            seg(isn.wrapping_add(1), TcpFlags::ACK, &first),
            seg(
                isn.wrapping_add(1 + first.len() as u32),
                TcpFlags::ACK,
                &[7u8; 1000],
            ),
        ],
    );
    let skips: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::SkipClientBytes {
                client,
                server,
                until_seq,
            } => Some((*client, *server, *until_seq)),
            _ => None,
        })
        .collect();
    let end = isn.wrapping_add(1 + head.len() as u32 + 200_000);
    assert_eq!(skips, [(client, server, end)], "once, at the body's end");
    let r = requests(&out);
    assert_eq!(r.len(), 1);
    assert!(r[0].request.body_omitted);
    // Bodies below the threshold ask for nothing: the skb with the head holds most of them.
    let mut cfg = self::cfg();
    cfg.http.omit_bodies_over = Some(0);
    cfg.skip_omitted_bodies = true;
    let mut p = Pipeline::new(cfg);
    let small = b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n";
    let out = run(
        &mut p,
        [seg(5, TcpFlags::SYN, b""), seg(6, TcpFlags::ACK, small)],
    );
    assert!(
        !out.iter()
            .any(|e| matches!(e, PipelineEvent::SkipClientBytes { .. }))
    );
}

/// Runs `segments` through a pipeline that frames responses (samples up to 1 KiB) to its end:
/// the events and the balanced stats.
fn run_with_responses(segments: Vec<Segment>) -> (Vec<PipelineEvent>, PipelineStats) {
    let mut p = Pipeline::new(PipelineConfig {
        capture_responses: Some(1024),
        ..cfg()
    });
    let mut out = run(&mut p, segments);
    let s = finish(&mut p, &mut out);
    (out, s)
}

/// Appends one HTTP/2 frame to `out`.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&crate::http2::frame::header(
        payload.len(),
        kind,
        flags,
        stream,
    ));
    out.extend_from_slice(payload);
}

/// An h2c connection with prior knowledge: its streams become requests, written as HTTP/1.1,
/// and every client byte is in the ledger (frames of requests, control frames, a reset stream).
#[test]
fn http2_prior_knowledge_streams_become_requests_and_add_up() {
    use crate::http2::frame::{PREFACE, flag, header, kind};
    let mut hpack = loona_hpack::Encoder::new();
    let mut first = PREFACE.to_vec();
    frame(&mut first, kind::SETTINGS, 0, 0, &[]);
    let get = hpack.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"http"),
        (b":authority", b"api"),
        (b":path", b"/h2/a"),
    ]);
    frame(
        &mut first,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &get,
    );
    let post = hpack.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":authority", b"api"),
        (b":path", b"/h2/b"),
    ]);
    let mut second = Vec::new();
    frame(&mut second, kind::HEADERS, flag::END_HEADERS, 3, &post);
    frame(&mut second, kind::DATA, flag::END_STREAM, 3, b"hello");
    frame(&mut second, kind::HEADERS, flag::END_HEADERS, 5, &post);
    frame(&mut second, kind::RST_STREAM, 0, 5, &[0, 0, 0, 8]);
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(&first, 10)
        .server_sends(&header(0, kind::SETTINGS, 0, 0), 10)
        .client_sends(&second, 10)
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 2, "{s}");
    assert_eq!(
        r[0].request.raw.as_ref(),
        b"GET /h2/a HTTP/1.1\r\nHost: api\r\n\r\n"
    );
    assert_eq!(
        r[1].request.raw.as_ref(),
        b"POST /h2/b HTTP/1.1\r\nHost: api\r\ncontent-length: 5\r\n\r\nhello"
    );
    assert_eq!(
        (r[0].request.h2_stream, r[1].request.h2_stream),
        (Some(1), Some(3))
    );
    assert_eq!((r[0].seq_in_flow, r[1].seq_in_flow), (0, 1));
    assert_eq!((s.h2_flows, s.h2_requests, s.requests), (1, 2, 2));
    assert_eq!(
        (s.h2_streams_dropped, s.h2_flows_failed, s.flows_h2),
        (1, 0, 0)
    );
    assert_eq!(
        s.h2_frame_bytes + s.h2_dropped_bytes,
        (first.len() + second.len()) as u64
    );
    assert_eq!(s.request_bytes, 0, "the HTTP/1.1 forms are not wire bytes");
}

/// With responses on, the server side of an h2c connection is decoded with its own table:
/// responses are paired with their requests by stream id, whatever order the server answers
/// in; one that ends before its request (the server answered early) waits for it; the server's
/// SETTINGS, sent before the client's preface arrives, reach the HTTP/2 decoder, not the
/// HTTP/1 response framer; the sample is written as the HTTP/2 mirror side's (`HTTP/1.1
/// <status>`, fields, trailers); a server reset loses one response, counted; every server byte
/// is in the ledger.
#[test]
fn http2_responses_are_paired_by_stream_and_add_up() {
    use crate::http2::frame::{PREFACE, flag, kind};
    let mut req = loona_hpack::Encoder::new();
    let mut res = loona_hpack::Encoder::new();
    let head = |enc: &mut loona_hpack::Encoder<'static>, path: &str| {
        enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b"api"),
            (b":path", path.as_bytes()),
        ])
    };
    let mut server_first = Vec::new();
    frame(&mut server_first, kind::SETTINGS, 0, 0, &[]);
    let mut client = PREFACE.to_vec();
    frame(&mut client, kind::SETTINGS, 0, 0, &[]);
    for (id, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        let h = head(&mut req, path);
        frame(&mut client, kind::HEADERS, flag::END_HEADERS, id, &h);
        frame(&mut client, kind::DATA, flag::END_STREAM, id, b"ping");
    }
    // Stream 7's head only: it is answered before the client ends it.
    let h = head(&mut req, "/d");
    frame(&mut client, kind::HEADERS, flag::END_HEADERS, 7, &h);
    let mut answers = Vec::new();
    let ok = res.encode([
        (&b":status"[..], &b"200"[..]),
        (b"content-type", b"text/plain"),
    ]);
    frame(&mut answers, kind::HEADERS, flag::END_HEADERS, 3, &ok);
    frame(&mut answers, kind::DATA, flag::END_STREAM, 3, b"three");
    let teapot = res.encode([(&b":status"[..], &b"418"[..])]);
    frame(&mut answers, kind::HEADERS, flag::END_HEADERS, 1, &teapot);
    frame(&mut answers, kind::DATA, 0, 1, b"one");
    let trailers = res.encode([(&b"grpc-status"[..], &b"0"[..])]);
    frame(
        &mut answers,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &trailers,
    );
    let early = res.encode([(&b":status"[..], &b"413"[..])]);
    frame(
        &mut answers,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        7,
        &early,
    );
    let ok_again = res.encode([(&b":status"[..], &b"200"[..])]);
    frame(&mut answers, kind::HEADERS, flag::END_HEADERS, 5, &ok_again);
    frame(&mut answers, kind::RST_STREAM, 0, 5, &[0, 0, 0, 2]);
    let mut last = Vec::new();
    frame(&mut last, kind::DATA, flag::END_STREAM, 7, b"late");
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .server_sends(&server_first, 100)
        .client_sends(&client, 17)
        .server_sends(&answers, 13)
        .client_sends(&last, 100)
        .close();
    let (out, s) = run_with_responses(c.segments);
    let reqs: Vec<(u32, u64)> = requests(&out)
        .iter()
        .map(|r| (r.request.h2_stream.unwrap(), r.seq_in_flow))
        .collect();
    assert_eq!(reqs, [(1, 0), (3, 1), (5, 2), (7, 3)], "{s}");
    let resps: Vec<(u64, u16, String)> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Response(r) => {
                let c = r.response.capture.as_ref().expect("a sample");
                Some((
                    r.seq_in_flow,
                    r.response.status,
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&c.head),
                        String::from_utf8_lossy(&c.body)
                    ),
                ))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        resps,
        [
            (
                1,
                200,
                "HTTP/1.1 200 \r\ncontent-type: text/plain\r\n\r\nthree".to_string()
            ),
            (
                0,
                418,
                "HTTP/1.1 418 \r\ngrpc-status: 0\r\n\r\none".to_string()
            ),
            (3, 413, "HTTP/1.1 413 \r\n\r\n".to_string()),
        ],
        "{s}"
    );
    assert!(
        out.iter()
            .position(|e| matches!(e, PipelineEvent::Request(r) if r.seq_in_flow == 3))
            < out
                .iter()
                .position(|e| matches!(e, PipelineEvent::Response(r) if r.seq_in_flow == 3)),
        "a request goes out before its response"
    );
    assert_eq!(
        (s.responses, s.h2_responses, s.responses_unpaired),
        (3, 3, 0),
        "{s}"
    );
    assert_eq!(
        (s.h2_response_streams_dropped, s.h2_responses_lost),
        (1, 1),
        "{s}"
    );
    assert_eq!(s.requests_unanswered, 0, "{s}");
    assert_eq!(
        s.response_drops.total().bytes,
        0,
        "no server byte went to the HTTP/1 framer"
    );
    assert_eq!(
        s.h2_server_frame_bytes + s.h2_server_dropped_bytes,
        (server_first.len() + answers.len()) as u64
    );
}

/// A server side that breaks the protocol (a response header block naming an HPACK index that
/// does not exist) fails its decoder alone: counted once as `h2_server_flows_failed`; the
/// client's streams are still requests, the one answered before the failure is paired, the
/// others are unanswered at close; every server byte, before and after the failure, is in the
/// ledger.
#[test]
fn http2_server_side_failure_is_counted_and_spares_the_requests() {
    use crate::http2::frame::{PREFACE, flag, kind};
    let mut req = loona_hpack::Encoder::new();
    let mut client = PREFACE.to_vec();
    frame(&mut client, kind::SETTINGS, 0, 0, &[]);
    for (id, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        let h = req.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":authority", b"api"),
            (b":path", path.as_bytes()),
        ]);
        frame(
            &mut client,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &h,
        );
    }
    let mut res = loona_hpack::Encoder::new();
    let mut answers = Vec::new();
    frame(&mut answers, kind::SETTINGS, 0, 0, &[]);
    let ok = res.encode([(&b":status"[..], &b"200"[..])]);
    frame(
        &mut answers,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &ok,
    );
    frame(
        &mut answers,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &[0xff, 0x7f],
    );
    let mut after = Vec::new();
    frame(
        &mut after,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        5,
        &ok,
    );
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(&client, 100)
        .server_sends(&answers, 7)
        .server_sends(&after, 100)
        .close();
    let (out, s) = run_with_responses(c.segments);
    assert_eq!(requests(&out).len(), 3, "{s}");
    assert_eq!((s.h2_requests, s.h2_flows_failed), (3, 0), "{s}");
    assert_eq!(s.h2_server_failed, 1, "{s}");
    let paired: Vec<(u64, u16)> = out
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::Response(r) => Some((r.seq_in_flow, r.response.status)),
            _ => None,
        })
        .collect();
    assert_eq!(paired, [(0, 200)], "{s}");
    assert_eq!((s.responses, s.requests_unanswered), (1, 2), "{s}");
    assert!(s.h2_server_dropped_bytes >= after.len() as u64, "{s}");
    assert_eq!(
        s.h2_server_frame_bytes + s.h2_server_dropped_bytes,
        (answers.len() + after.len()) as u64,
        "{s}"
    );
}

/// An HTTP/1.1 connection that upgrades to h2c (`Upgrade: h2c`, 101, then the preface): the
/// upgrading request is an HTTP/1.1 request, the streams after it are decoded as HTTP/2. One
/// whose upgrade the server declines goes on in HTTP/1.1.
#[test]
fn h2c_upgrade_taken_is_decoded_and_declined_goes_on_in_http11() {
    use crate::http2::frame::{PREFACE, flag, header, kind};
    let upgrade = b"GET /up HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let mut hpack = loona_hpack::Encoder::new();
    let mut h2 = PREFACE.to_vec();
    h2.extend_from_slice(&header(0, kind::SETTINGS, 0, 0));
    let get = hpack.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"http"),
        (b":authority", b"api"),
        (b":path", b"/after"),
    ]);
    h2.extend_from_slice(&header(
        get.len(),
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
    ));
    h2.extend_from_slice(&get);
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(upgrade, 10)
        .server_sends(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            10,
        )
        .client_sends(&h2, 10)
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 2, "{s}");
    assert!(r[0].request.raw.starts_with(b"GET /up HTTP/1.1\r\n"));
    assert_eq!(r[0].request.h2_stream, None);
    assert_eq!(
        r[1].request.raw.as_ref(),
        b"GET /after HTTP/1.1\r\nHost: api\r\n\r\n"
    );
    assert_eq!(r[1].request.h2_stream, Some(3));
    assert_eq!(
        (s.h2_flows, s.h2_upgrades, s.flows_h2, s.flows_tunnel),
        (1, 1, 0, 0),
        "{s}"
    );
    assert_eq!(s.h2_frame_bytes, h2.len() as u64, "{s}");

    // Declined: the server answers in HTTP/1.1 and the client carries on.
    let mut c = Conversation::new(addr("10.0.0.1:5001"), addr("10.0.0.2:8080"), [1, 2]);
    c.handshake()
        .client_sends(upgrade, 10)
        .server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 10)
        .client_sends(b"GET /next HTTP/1.1\r\nHost: api\r\n\r\n", 10)
        .close();
    let mut p = Pipeline::new(cfg());
    let mut out = run(&mut p, c.segments);
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 2, "{s}");
    assert!(r[1].request.raw.starts_with(b"GET /next HTTP/1.1\r\n"));
    assert_eq!(
        (s.h2_flows, s.h2_upgrades, s.flows_tunnel),
        (0, 0, 0),
        "{s}"
    );
}

/// With responses on, an `Upgrade: h2c` connection's answers are decoded too: the 101 is a
/// 1xx on the way, not the upgrading request's answer; the server's HTTP/2 frames that follow
/// its head in the same segment go to the server-side decoder, stream 1's response answers the
/// upgrading request and stream 3's the first HTTP/2 request; every server byte is counted
/// once.
#[test]
fn h2c_upgrade_answers_come_from_stream_1_after_the_101() {
    use crate::http2::frame::{PREFACE, flag, kind};
    let upgrade = b"GET /up HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
    let mut req = loona_hpack::Encoder::new();
    let mut res = loona_hpack::Encoder::new();
    let mut switch =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    let head_101 = switch.len();
    frame(&mut switch, kind::SETTINGS, 0, 0, &[]);
    let ok = res.encode([(&b":status"[..], &b"200"[..])]);
    frame(&mut switch, kind::HEADERS, flag::END_HEADERS, 1, &ok);
    frame(&mut switch, kind::DATA, flag::END_STREAM, 1, b"upgraded");
    let mut client = PREFACE.to_vec();
    frame(&mut client, kind::SETTINGS, 0, 0, &[]);
    let get = req.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":scheme", b"http"),
        (b":authority", b"api"),
        (b":path", b"/after"),
    ]);
    frame(
        &mut client,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &get,
    );
    let mut answer = Vec::new();
    let no_content = res.encode([(&b":status"[..], &b"204"[..])]);
    frame(
        &mut answer,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &no_content,
    );
    for mss in [10, 1000] {
        let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
        c.handshake()
            .client_sends(upgrade, mss)
            .server_sends(&switch, mss)
            .client_sends(&client, mss)
            .server_sends(&answer, mss)
            .close();
        let mut p = Pipeline::new(PipelineConfig {
            capture_responses: Some(64),
            ..cfg()
        });
        let mut out = run(&mut p, c.segments);
        let s = finish(&mut p, &mut out);
        assert_eq!(requests(&out).len(), 2, "{s}");
        let resps: Vec<(u64, u16, Vec<u8>)> = out
            .iter()
            .filter_map(|e| match e {
                PipelineEvent::Response(r) => Some((
                    r.seq_in_flow,
                    r.response.status,
                    r.response.capture.as_ref().unwrap().body.clone(),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(
            resps,
            [(0, 200, b"upgraded".to_vec()), (1, 204, Vec::new())],
            "mss {mss}: {s}"
        );
        assert_eq!(
            (s.h2_flows, s.h2_upgrades, s.h2_responses),
            (1, 1, 2),
            "{s}"
        );
        assert_eq!((s.responses, s.responses_informational), (2, 1), "{s}");
        assert_eq!(s.requests_unanswered + s.responses_unpaired, 0, "{s}");
        assert_eq!(s.response_bytes, head_101 as u64, "the 101 head: {s}");
        assert_eq!(
            s.h2_server_frame_bytes,
            (switch.len() - head_101 + answer.len()) as u64,
            "{s}"
        );
    }
}

/// An HTTP/2 connection picked up mid-way (no SYN, no preface): its frames are recognised,
/// its streams and bytes counted under their own names, nothing is guessed or mirrored, and
/// the ledger adds up. An HTTP/1.1 connection picked up mid-way still resyncs on its next
/// request line.
#[test]
fn http2_picked_up_midway_is_counted_never_decoded() {
    use crate::http2::frame::{flag, header, kind};
    // Header blocks that index a table the agent never saw (62+), then gRPC-like bodies.
    let mut first = Vec::new();
    frame(
        &mut first,
        kind::HEADERS,
        flag::END_HEADERS,
        41,
        &[0xbe, 0xbf, 0xc0],
    );
    frame(
        &mut first,
        kind::DATA,
        flag::END_STREAM,
        41,
        &[0, 0, 0, 0, 3, 1, 2, 3],
    );
    let mut second = Vec::new();
    frame(&mut second, kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]);
    frame(
        &mut second,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        43,
        &[0xbe],
    );
    let mut c = Conversation::new(addr("10.0.0.1:5000"), addr("10.0.0.2:8080"), [1, 2]);
    c.client_sends(&first, 1400)
        .server_sends(&header(0, kind::SETTINGS, flag::END_STREAM, 0), 100)
        .client_sends(&second, 1400)
        .close();
    let mut http1 = Conversation::new(addr("10.0.0.3:5000"), addr("10.0.0.2:8080"), [1, 2]);
    http1
        .client_sends(b"dy of an earlier request\r\n", 1400)
        .client_sends(b"GET /next HTTP/1.1\r\nHost: api\r\n\r\n", 1400)
        .close();
    // The captured port tells the direction (as in live capture): no request line does here.
    let mut p = Pipeline::new(PipelineConfig {
        ports: vec![8080],
        ..cfg()
    });
    let mut out = run(&mut p, c.segments.clone());
    out.extend(run(&mut p, http1.segments.clone()));
    let s = finish(&mut p, &mut out);
    let r = requests(&out);
    assert_eq!(r.len(), 1, "{s}");
    assert!(r[0].request.raw.starts_with(b"GET /next HTTP/1.1\r\n"));
    assert_eq!(
        (
            s.h2_midstream_flows,
            s.h2_midstream_streams,
            s.h2_midstream_bytes
        ),
        (1, 2, (first.len() + second.len()) as u64),
        "{s}"
    );
    assert_eq!((s.h2_flows, s.h2_requests, s.flows_h2), (0, 0, 0), "{s}");
}
