//! A whole capture file through the pcap reader and the pipeline, with tight bounds.
//!
//! Input: the bytes of a pcap or pcapng file (`seed_corpus.py` seeds it with the shared corpus
//! files as they are). Checks: no panic; a bad file is an error value; the packet counters and
//! every pipeline identity add up at the end; the memory the flows hold never exceeds the budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_agent::capture::pcap::PcapSource;
use mirror_agent::pipeline::{Pipeline, PipelineConfig};
use mirror_agent::reassembly::StreamConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(mut src) = PcapSource::new(std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let budget = 64 * 1024;
    let mut p = Pipeline::new(PipelineConfig {
        max_flows: 8,
        memory_budget: budget,
        stream: StreamConfig {
            max_buffered_bytes: 16 * 1024,
            max_segments: 16,
            gap_timeout_ns: 50_000_000,
            ..StreamConfig::default()
        },
        ..PipelineConfig::default()
    });
    let mut out = Vec::new();
    let mut n = 0u64;
    while let Ok(Some(seg)) = src.next_segment() {
        let ts = seg.ts_ns;
        p.on_segment(seg, &mut out);
        n += 1;
        if n % 16 == 0 {
            p.on_tick(ts, &mut out);
        }
        assert!(p.held_bytes() <= budget, "held {} > budget", p.held_bytes());
        assert!(p.active_flows() <= 8);
        out.clear();
    }
    p.finish(&mut out);
    assert!(src.decoder.stats.balanced(), "{:?}", src.decoder.stats);
    if let Err(e) = p.stats().check_balance_at_end() {
        panic!("{e}");
    }
});
