use super::synth::{self, Conversation, SynthLink};
use super::*;

fn conversation(v6: bool) -> Vec<Segment> {
    let (c, s) = if v6 {
        ("[2001:db8::1]:40000", "[2001:db8::2]:80")
    } else {
        ("10.0.0.1:40000", "10.0.0.2:80")
    };
    let mut conv = Conversation::new(c.parse().unwrap(), s.parse().unwrap(), [100, 9000]);
    conv.handshake()
        .client_sends(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 10)
        .server_sends(b"HTTP/1.1 204 No Content\r\n\r\n", 1000)
        .close();
    conv.segments
}

fn read_all(bytes: Vec<u8>) -> (Vec<Segment>, DecodeStats, Option<PcapError>) {
    let mut src = PcapSource::new(std::io::Cursor::new(bytes)).expect("header");
    let mut out = Vec::new();
    let err = loop {
        match src.next_segment() {
            Ok(Some(s)) => out.push(s),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    (out, src.decoder.stats.clone(), err)
}

#[test]
fn every_link_type_and_both_containers_round_trip() {
    let links = [
        SynthLink::Ethernet { vlans: 0 },
        SynthLink::Ethernet { vlans: 1 },
        SynthLink::Ethernet { vlans: 2 },
        SynthLink::Null,
        SynthLink::Raw,
        SynthLink::LinuxSll,
        SynthLink::LinuxSll2,
    ];
    for v6 in [false, true] {
        let segs = conversation(v6);
        for link in links {
            let frames = synth::frames(link, &segs);
            for ng in [false, true] {
                let file = if ng {
                    synth::pcapng_file(link.linktype(), &frames)
                } else {
                    synth::pcap_file(link.linktype(), &frames)
                };
                let (got, stats, err) = read_all(file);
                assert!(err.is_none(), "{link:?} ng={ng} v6={v6}: {err:?}");
                assert_eq!(got, segs, "{link:?} ng={ng} v6={v6}");
                assert_eq!(stats.packets, segs.len() as u64);
                assert!(stats.balanced(), "{stats:?}");
            }
        }
    }
}

#[test]
fn ipv4_fragments_are_reassembled_and_counted() {
    let segs = conversation(false);
    let mut frames = Vec::new();
    for s in &segs {
        let ip = synth::ip_packet(s);
        for f in synth::fragment_ipv4(&ip, 16).into_iter().rev() {
            frames.push((s.ts_ns, synth::frame(SynthLink::Ethernet { vlans: 0 }, &f)));
        }
    }
    // One more datagram whose last fragment never comes.
    let lost = synth::ip_packet(&segs[3]);
    let mut partial = synth::fragment_ipv4(&lost, 8);
    partial.pop();
    for f in partial {
        frames.push((
            segs[3].ts_ns,
            synth::frame(SynthLink::Ethernet { vlans: 0 }, &f),
        ));
    }
    let (got, stats, err) = read_all(synth::pcap_file(1, &frames));
    assert!(err.is_none());
    assert_eq!(got, segs);
    assert!(stats.balanced(), "{stats:?}");
    assert_eq!(stats.fragments, frames.len() as u64);
}

#[test]
fn checksums_are_never_checked() {
    let segs = conversation(false);
    let mut frames = synth::frames(SynthLink::Raw, &segs);
    for (_, f) in frames.iter_mut() {
        f[10] ^= 0xff; // IPv4 header checksum
        f[36] ^= 0xff; // TCP checksum
    }
    let (got, _, err) = read_all(synth::pcap_file(101, &frames));
    assert!(err.is_none());
    assert_eq!(got, segs);
}

#[test]
fn truncated_files_end_with_an_error_after_the_good_packets() {
    let segs = conversation(false);
    let file = synth::pcap_file(1, &synth::frames(SynthLink::Ethernet { vlans: 0 }, &segs));
    for cut in [file.len() - 1, file.len() - 30, 40] {
        let (got, _, err) = read_all(file[..cut].to_vec());
        match err {
            Some(PcapError::Truncated { packets }) => assert_eq!(packets as usize, got.len()),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Header shorter than 24 bytes, and an empty file.
    for cut in [0, 3, 10] {
        let e = PcapSource::new(std::io::Cursor::new(file[..cut].to_vec()))
            .err()
            .expect("must fail");
        assert!(matches!(e, PcapError::Truncated { .. }), "{e}");
    }
    let ng = synth::pcapng_file(1, &synth::frames(SynthLink::Ethernet { vlans: 0 }, &segs));
    let (got, _, err) = read_all(ng[..ng.len() - 7].to_vec());
    assert!(err.is_some());
    assert_eq!(got.len(), segs.len() - 1);
}

#[test]
fn corrupt_files_give_one_line_errors_never_panics() {
    let e = PcapSource::new(std::io::Cursor::new(b"hello world, not a pcap".to_vec()))
        .err()
        .unwrap();
    assert!(matches!(e, PcapError::NotPcap { .. }));
    assert!(!e.to_string().contains('\n'));

    let segs = conversation(false);
    let file = synth::pcap_file(1, &synth::frames(SynthLink::Ethernet { vlans: 0 }, &segs));
    // A packet header claiming 4 GiB.
    let mut huge = file.clone();
    huge[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let (_, _, err) = read_all(huge);
    assert!(err.is_some());
    // Deterministic garbage over every byte after the file header: no panic, counted or error.
    let mut x = 0x2545_f491_u32;
    for round in 0..300 {
        let mut f = file.clone();
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = 24 + (x as usize) % (f.len() - 24);
            f[i] = (x >> 8) as u8;
        }
        let (_, stats, err) = read_all(f);
        if let Some(e) = err {
            assert!(!e.to_string().contains('\n'), "round {round}: {e}");
        }
        assert!(stats.balanced(), "round {round}: {stats:?}");
    }
}

#[test]
fn garbage_frames_are_counted_not_fatal() {
    let frames: Vec<(u64, Vec<u8>)> = vec![
        (1, vec![]),
        (2, vec![0xff; 5]),
        (3, vec![0x45; 40]),
        (
            4,
            synth::frame(SynthLink::Ethernet { vlans: 0 }, &[0x60, 0, 0]),
        ),
    ];
    let (got, stats, err) = read_all(synth::pcap_file(1, &frames));
    assert!(err.is_none());
    assert!(got.is_empty());
    assert_eq!(stats.packets, 4);
    assert!(stats.balanced(), "{stats:?}");
    // Unsupported link type: counted.
    let (_, stats, _) = read_all(synth::pcap_file(147, &frames));
    assert_eq!(stats.unsupported_link, 4);
}

/// Frames cut short by the capture's snap length are decoded as far as they go and counted;
/// a TCP header broken in one frame, and one broken across IPv4 fragments (seen only once they
/// are put together), are each counted as malformed, never decoded.
#[test]
fn cut_and_broken_tcp_headers_are_each_counted() {
    let segs = conversation(false);
    let eth = |ip: &[u8]| synth::frame(SynthLink::Ethernet { vlans: 0 }, ip);
    // The request, its last 10 bytes cut off by the snap length.
    let request = &segs[3];
    assert!(request.payload.starts_with(b"GET"));
    let ip = synth::ip_packet(request);
    let cut = eth(&ip[..ip.len() - 10]);
    // A TCP header whose data offset (4 words) is below the minimum of 5.
    let mut broken = synth::ip_packet(&segs[0]);
    broken[20 + 12] = 0x40;
    // The same broken header, split over two IPv4 fragments.
    let fragments = synth::fragment_ipv4(&broken, 8);
    assert_eq!(fragments.len(), 3);
    let mut frames = vec![(1, cut), (2, eth(&broken))];
    frames.extend(fragments.iter().map(|f| (3, eth(f))));
    let (got, stats, err) = read_all(synth::pcap_file(1, &frames));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 1, "the cut request, as far as it goes");
    assert_eq!(
        got[0].payload[..],
        request.payload[..request.payload.len() - 10]
    );
    assert_eq!(stats.snaplen_truncated, 1, "{stats:?}");
    assert_eq!(stats.malformed, 1, "{stats:?}");
    assert_eq!(stats.fragments, 3, "{stats:?}");
    assert_eq!(stats.malformed_reassembled, 1, "{stats:?}");
    assert_eq!(stats.packets, 5);
    assert!(stats.balanced(), "{stats:?}");
}

#[test]
fn ipv6_fragments_and_gre_are_decoded() {
    let segs = conversation(true);
    let mut frames = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        for f in synth::fragment_ipv6(&synth::ip_packet(s), 16, i as u32) {
            frames.push((s.ts_ns, synth::frame(SynthLink::Raw, &f)));
        }
    }
    let mut src = PcapSource::new(std::io::Cursor::new(synth::pcap_file(101, &frames))).unwrap();
    let mut got = Vec::new();
    while let Some(s) = src.next_segment().expect("reads") {
        got.push(s);
    }
    let stats = src.decoder.stats.clone();
    assert_eq!(got, segs, "{stats:?} {:?}", src.decoder.defrag.stats);
    assert!(stats.balanced(), "{stats:?}");

    for v6 in [false, true] {
        let segs = conversation(v6);
        let frames: Vec<(u64, Vec<u8>)> = segs
            .iter()
            .map(|s| {
                let outer = synth::gre_ipv4(&synth::ip_packet(s));
                (
                    s.ts_ns,
                    synth::frame(SynthLink::Ethernet { vlans: 1 }, &outer),
                )
            })
            .collect();
        let (got, stats, err) = read_all(synth::pcap_file(1, &frames));
        assert!(err.is_none());
        assert_eq!(got, segs, "inner v6={v6}");
        assert_eq!(stats.gre_decapsulated, segs.len() as u64);
    }
}
#[test]
fn ipv6_with_a_lying_hop_by_hop_header_is_not_read_out_of_bounds() {
    // Found by the pcap_pipeline fuzz target: payload length 0, a hop-by-hop header (16 bytes)
    // whose next header is hop-by-hop again, and nothing after it. etherparse 0.19's extension
    // iterator reads out of bounds here; the decoder must count the frame and go on.
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, 0, 0];
    ip.extend_from_slice(&[0; 15]);
    ip.push(1);
    ip.extend_from_slice(&[0; 15]);
    ip.push(1);
    ip.extend_from_slice(&[
        0, 1, 0xd9, 0xa5, 0x1f, 0x40, 0x11, 0xb0, 0xc5, 0x40, 0, 0, 0, 0, 0xb0, 2,
    ]);
    let frames = vec![
        (1, synth::frame(SynthLink::Null, &ip)),
        (
            2,
            synth::frame(SynthLink::Null, &synth::ip_packet(&conversation(true)[0])),
        ),
    ];
    let (got, stats, err) = read_all(synth::pcap_file(0, &frames));
    assert!(err.is_none());
    assert_eq!(got.len(), 1);
    assert_eq!(stats.packets, 2);
    assert!(stats.balanced(), "{stats:?}");
}

/// A classic pcap file (LINKTYPE_RAW, microseconds) with a snap length large enough for any
/// record, written here because pcap-file's writer holds records to 64 KiB.
fn big_snaplen_pcap(records: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&u32::MAX.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    for (i, r) in records.iter().enumerate() {
        f.extend_from_slice(&(i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(r.len() as u32).to_le_bytes());
        f.extend_from_slice(&(r.len() as u32).to_le_bytes());
        f.extend_from_slice(r);
    }
    f
}

#[test]
fn a_whole_record_over_the_read_buffer_is_not_called_truncated() {
    // A 20 MiB record, whole, between two good packets: pcap-file cannot hold it in its 8 MB
    // buffer. That is reported as an oversized record, not as a truncated file.
    let segs = conversation(false);
    let ip = |i: usize| synth::ip_packet(&segs[i]);
    let records = [ip(0), vec![0x45; 20 << 20], ip(1)];
    let (got, _, err) = read_all(big_snaplen_pcap(&records));
    assert_eq!(got.len(), 1, "the packet before it is read");
    match err {
        Some(e @ PcapError::Corrupt { packets: 1, .. }) => {
            assert!(e.to_string().contains("larger than 8 MB"), "{e}");
            assert!(e.to_string().contains("not truncated"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A file cut inside a record that fits the buffer is truncated.
    let file = big_snaplen_pcap(&[ip(0), vec![0x45; 1 << 20]]);
    let (got, _, err) = read_all(file[..file.len() - 100].to_vec());
    assert_eq!(got.len(), 1);
    assert!(
        matches!(err, Some(PcapError::Truncated { packets: 1 })),
        "{err:?}"
    );
}
