use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::*;

/// Writes each item as one line into a real OS pipe (a sink that blocks when nobody reads).
struct PipeLines(std::io::BufWriter<std::io::PipeWriter>);

impl OutputWriter for PipeLines {
    type Item = Vec<u8>;
    fn write(&mut self, item: Vec<u8>) -> std::io::Result<()> {
        self.0.write_all(&item)?;
        self.0.write_all(b"\n")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn pipe_output(limits: QueueLimits) -> (OutputQueue<Vec<u8>>, std::io::PipeReader) {
    let (reader, writer) = std::io::pipe().unwrap();
    let q = OutputQueue::start("test", PipeLines(std::io::BufWriter::new(writer)), limits).unwrap();
    (q, reader)
}

fn adds_up(c: &OutputSnapshot) {
    assert_eq!(
        c.submitted,
        c.written + c.dropped() + c.queued,
        "counters do not add up: {c:?}"
    );
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_drained_sink_gets_every_item_in_order() {
    let (q, mut reader) = pipe_output(QueueLimits {
        items: 16,
        bytes: 1 << 20,
    });
    let reading = std::thread::spawn(move || {
        let mut all = String::new();
        reader.read_to_string(&mut all).unwrap();
        all
    });
    let mut expected = String::new();
    for i in 0..2000 {
        let line = format!("item {i}");
        expected.push_str(&line);
        expected.push('\n');
        // Paced by the queue: wait for room rather than drop (as file sources do).
        wait_until(|| q.fill() < 0.75);
        q.submit(line.into_bytes(), 8);
    }
    let report = q.finish(Duration::from_secs(10));
    assert!(!report.unfinished && report.error.is_none(), "{report:?}");
    assert_eq!(report.counters.written, 2000);
    assert_eq!(report.counters.dropped(), 0);
    adds_up(&report.counters);
    assert_eq!(reading.join().unwrap(), expected);
}

#[test]
fn a_stalled_sink_drops_for_itself_counted_and_submit_never_blocks() {
    let (q, reader) = pipe_output(QueueLimits {
        items: 8,
        bytes: 1 << 20,
    });
    // Nobody reads: the pipe (64 KiB) fills, the writer blocks, the queue fills.
    let item = vec![b'x'; 32 * 1024];
    let started = Instant::now();
    for _ in 0..200 {
        q.submit(item.clone(), item.len());
    }
    // 200 submits into a stuck output return at once (generous bound: no blocking write).
    assert!(started.elapsed() < Duration::from_secs(2));
    let c = q.stats().snapshot();
    assert!(c.dropped_queue_full > 0, "{c:?}");
    adds_up(&c);
    let report = q.finish(Duration::from_millis(200));
    assert!(report.unfinished, "{report:?}");
    let c = report.counters;
    assert!(c.dropped_at_exit > 0, "{c:?}");
    assert_eq!(c.queued, 0);
    adds_up(&c);
    assert!(report.summary().contains("dropped.queue_full"));
    // Unblocks the writer thread so it ends.
    drop(reader);
}

#[test]
fn the_byte_bound_drops_what_would_pass_it() {
    let (q, reader) = pipe_output(QueueLimits {
        items: 1000,
        bytes: 100_000,
    });
    let big = vec![b'y'; 40_000];
    for _ in 0..50 {
        q.submit(big.clone(), big.len());
    }
    let c = q.stats().snapshot();
    assert!(c.queued_bytes <= 100_000, "{c:?}");
    assert!(c.dropped_queue_full > 0, "{c:?}");
    adds_up(&c);
    drop(reader);
    let report = q.finish(Duration::from_secs(5));
    adds_up(&report.counters);
}

#[test]
fn an_item_larger_than_the_queue_is_taken_when_the_queue_is_empty() {
    let (q, mut reader) = pipe_output(QueueLimits {
        items: 8,
        bytes: 1000,
    });
    let reading = std::thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all.len()
    });
    q.submit(vec![b'w'; 5000], 5000);
    wait_until(|| q.stats().snapshot().queued == 0);
    q.submit(vec![b'w'; 5000], 5000);
    let report = q.finish(Duration::from_secs(5));
    assert_eq!(report.counters.written, 2, "{report:?}");
    assert_eq!(reading.join().unwrap(), 2 * 5001);
}

#[test]
fn after_a_write_error_every_item_is_counted_as_such() {
    let (q, reader) = pipe_output(QueueLimits {
        items: 64,
        bytes: 1 << 20,
    });
    // The reading end is gone: writes fail with EPIPE (Rust ignores SIGPIPE).
    drop(reader);
    for _ in 0..10 {
        q.submit(vec![b'z'; 100_000], 100_000);
        wait_until(|| q.stats().snapshot().queued == 0);
    }
    let report = q.finish(Duration::from_secs(5));
    let c = report.counters;
    assert_eq!(c.dropped_write_error, 10, "{report:?}");
    assert_eq!(c.written, 0);
    assert!(report.error.is_some());
    adds_up(&c);
}
