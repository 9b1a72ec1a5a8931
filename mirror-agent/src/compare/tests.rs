use super::*;
use crate::replay::stats::Outcome;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn p(status: u16, lat: u64) -> PrimarySide {
    PrimarySide {
        status,
        latency: ms(lat),
    }
}
fn m(status: u16, lat: u64) -> MirrorSide {
    MirrorSide::Answered {
        status,
        latency: ms(lat),
    }
}

#[test]
fn either_side_first_gives_one_verdict() {
    let names = ["a".to_string(), "b".to_string()];
    let mut c = Comparator::new(&names, Duration::from_secs(10), 100);
    // Mirror first, then primary.
    assert!(c.on_mirror((1, 0), 0, m(500, 30), 1).is_none());
    let v = c.on_primary((1, 0), p(200, 10), 2);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].mismatch, Some(MismatchKind::StatusClass));
    assert!((v[0].latency_difference.unwrap() - 0.020).abs() < 1e-9);
    // Primary first, then a late second mirror on the same request.
    let v = c.on_mirror((1, 0), 1, m(200, 5), 3).unwrap();
    assert_eq!(v.mismatch, None);
    // A different code in the same class, and no response.
    c.on_primary((1, 1), p(200, 10), 4);
    assert_eq!(
        c.on_mirror((1, 1), 0, m(204, 10), 5).unwrap().mismatch,
        Some(MismatchKind::StatusCode)
    );
    assert_eq!(
        c.on_mirror((1, 1), 1, MirrorSide::NoResponse, 6)
            .unwrap()
            .mismatch,
        Some(MismatchKind::NoResponse)
    );
    let s = c.snapshot();
    assert_eq!((s.mirrors[0].compared, s.mirrors[1].compared), (2, 2));
    assert_eq!(s.mirrors[0].status_class, 1);
    assert_eq!(s.mirrors[0].status_code, 1);
    assert_eq!(s.mirrors[1].no_response, 1);
}

#[test]
fn expiry_and_eviction_are_counted() {
    let names = ["a".to_string()];
    let mut c = Comparator::new(&names, ms(100), 2);
    c.on_mirror((1, 0), 0, m(200, 1), 0);
    c.on_primary((2, 0), p(200, 1), 0);
    // Full: the oldest (a waiting mirror outcome) is evicted.
    c.on_primary((3, 0), p(200, 1), 0);
    assert_eq!(c.pending(), 2);
    c.expire(200_000_000);
    assert_eq!(c.pending(), 0);
    let s = c.snapshot();
    assert_eq!(s.evicted, 1);
    assert_eq!(s.mirrors[0].primary_missing, 1);
    assert_eq!(s.primary_unmatched, 2);
    assert_eq!(s.mirrors[0].compared, 0);
}

#[test]
fn hub_converts_outcomes_and_skips_drops() {
    use crate::replay::stats::{DropReason, ErrorKind};
    let hub = CompareHub::new(vec!["a".into()], Duration::from_secs(5), 16, None);
    hub.primary((1, 0), p(200, 5));
    hub.primary((1, 1), p(200, 5));
    hub.primary((1, 2), p(404, 5));
    hub.mirror(
        (1, 0),
        0,
        &Outcome::Answered {
            status: 503,
            latency: ms(1),
            grpc_status: None,
        },
    );
    hub.mirror((1, 1), 0, &Outcome::Error(ErrorKind::Connect));
    hub.mirror((1, 2), 0, &Outcome::Dropped(DropReason::QueueFull));
    let s = hub.snapshot();
    let table = s.table();
    assert!(table.starts_with("mirror "), "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("a "), "{table}");
    assert_eq!(s.mirrors[0].compared, 2);
    assert_eq!(s.mirrors[0].status_class, 1);
    assert_eq!(s.mirrors[0].no_response, 1);
    hub.expire();
    assert_eq!(hub.snapshot().primary_unmatched, 0, "ttl not reached");
}

fn json_cap(body: &str) -> ResponseSample {
    ResponseSample {
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\n\r\n".to_vec(),
        body: body.as_bytes().to_vec(),
        body_len: body.len() as u64,
        truncated: false,
    }
}

fn info(target: &str, body: &str) -> Option<PrimaryInfo> {
    Some(PrimaryInfo {
        method: "GET".into(),
        target: target.into(),
        capture: Some(json_cap(body)),
    })
}

fn answered(status: u16) -> Outcome {
    Outcome::Answered {
        status,
        latency: ms(2),
        grpc_status: None,
    }
}

#[test]
fn hub_compares_content_only_for_equal_statuses_and_logs_mismatches() {
    let path = std::env::temp_dir().join(format!("mirror-hub-difflog-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let log = difflog::DiffLog::create(&path, 100, Default::default(), false).unwrap();
    let rules = rules::CompareRules::new(&["json:$.ts".into()], None, None, &[]).unwrap();
    let hub = CompareHub::new(vec!["m".into()], Duration::from_secs(5), 64, None)
        .with_content(rules, Some(log));
    assert_eq!(hub.capture_limit(), Some(rules::DEFAULT_BODY_LIMIT));
    let cases: [(&str, &str, u16, &str); 5] = [
        // primary body, target, mirror status, mirror body
        (r#"{"a":1}"#, "/a", 500, r#"{"a":9}"#), // status only (bodies not compared)
        (r#"{"a":1}"#, "/b", 200, r#"{"a":2}"#), // body
        (r#"{"a":1,"ts":1}"#, "/c", 200, r#"{"a":1,"ts":2}"#), // ignored path: equal
        (r#"{"a":1}"#, "/d", 200, r#"{"a":1}"#), // equal
        (r#"{"a":1}"#, "/e", 200, r#"{"a":1}"#), // mirror first, capture missing: skipped
    ];
    for (i, (pb, target, status, mb)) in cases.iter().enumerate() {
        let key = (7, i as u64);
        let side = PrimarySide {
            status: 200,
            latency: ms(1),
        };
        let mirror_cap = (i != 4).then(|| Box::new(json_cap(mb)));
        if i == 4 {
            hub.mirror_with(key, 0, &answered(*status), mirror_cap);
            hub.primary_with(key, side, info(target, pb));
        } else {
            hub.primary_with(key, side, info(target, pb));
            hub.mirror_with(key, 0, &answered(*status), mirror_cap);
        }
    }
    hub.flush(Duration::from_secs(5));
    let s = hub.snapshot();
    let m = &s.mirrors[0];
    assert_eq!(
        (m.compared, m.status_class, m.header, m.body),
        (5, 1, 0, 1),
        "{s:?}"
    );
    assert_eq!(m.content_skipped, 1);
    assert_eq!(s.diff_log.lines, 2);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["path"], "/a");
    assert_eq!(lines[0]["kinds"], serde_json::json!(["status_class"]));
    assert_eq!(lines[1]["path"], "/b");
    assert_eq!(lines[1]["kinds"], serde_json::json!(["body"]));
    assert_eq!(lines[1]["json_paths"], serde_json::json!(["$.a"]));
    assert!(
        s.table().lines().next().unwrap().contains("body"),
        "{}",
        s.table()
    );
    let _ = std::fs::remove_file(&path);
    // Entries fully compared leave the table at once, with their captures.
    assert_eq!(hub.with(|c| (c.pending(), c.held_bytes())), (0, 0));
}

#[test]
fn captures_over_the_budget_are_dropped_and_counted() {
    let names = ["a".to_string(), "b".to_string()];
    let mut c = Comparator::new(&names, Duration::from_secs(10), 100).with_max_held(300);
    let big = "x".repeat(150);
    let p = PrimarySide {
        status: 200,
        latency: ms(1),
    };
    c.on_primary_with((1, 0), p, info("/1", &big), 0);
    let held = c.held_bytes();
    assert!(held > 150, "{held}");
    // No room for a second primary capture: kept without it.
    c.on_primary_with((1, 1), p, info("/2", &big), 0);
    assert_eq!(
        (c.held_bytes(), c.snapshot().captures_over_budget),
        (held, 1)
    );
    let v = c
        .on_mirror_with((1, 1), 0, m(200, 1), Some(json_cap("{}")), 0)
        .unwrap();
    assert!(v.info.as_ref().unwrap().capture.is_none() && v.mirror_capture.is_some());
    // Both mirrors compared: the first entry and its capture go.
    c.on_mirror_with((1, 0), 0, m(200, 1), None, 0);
    c.on_mirror_with((1, 0), 1, m(200, 1), None, 0);
    assert_eq!(c.held_bytes(), 0);
    // Expired entries give their bytes back too.
    c.on_mirror_with((2, 0), 0, m(200, 1), Some(json_cap("{}")), 0);
    assert!(c.held_bytes() > 0);
    c.expire(20_000_000_000);
    assert_eq!((c.held_bytes(), c.pending()), (0, 0));
}

/// Prints what comparison mode adds per response (no timing assertion: a table to read with
/// `cargo test --release -p mirror-agent --lib per_response_cost -- --nocapture`). Checks only
/// that the work measured did what it should.
#[test]
fn per_response_cost_printed() {
    use crate::http::request::HttpLimits;
    use crate::http::response::{ResponseEvent, ResponseFramer};
    use std::time::Instant;
    const N: usize = 2000;
    let body: String = format!(
        "{{\"items\":[{}],\"ts\":1}}",
        (0..60)
            .map(|i| format!("{{\"id\":{i},\"name\":\"item-{i}\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let frame = |limit: Option<usize>| {
        let mut f = ResponseFramer::new(HttpLimits::default()).with_capture(limit);
        let mut ev = Vec::new();
        let t = Instant::now();
        let mut kept = 0;
        for _ in 0..N {
            f.push(resp.as_bytes(), 1, &mut ev);
            for e in ev.drain(..) {
                if let ResponseEvent::Final(r) = e {
                    kept += r.capture.map_or(0, |c| c.body.len());
                }
            }
        }
        (t.elapsed().as_nanos() as f64 / N as f64, kept)
    };
    let (off, kept_off) = frame(None);
    let (on, kept_on) = frame(Some(rules::DEFAULT_BODY_LIMIT));
    assert_eq!((kept_off, kept_on), (0, N * body.len()));
    let p = json_cap(&body);
    let m = json_cap(&body.replace("\"ts\":1", "\"ts\":2"));
    let r = rules::CompareRules::new(&["json:$.ts".into()], None, None, &[]).unwrap();
    let t = Instant::now();
    for _ in 0..N {
        assert!(!content::compare(&r, &p, &m).body_mismatch());
    }
    let json = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for _ in 0..N {
        assert!(!content::compare(&r, &p, &p).body_mismatch());
    }
    let same = t.elapsed().as_nanos() as f64 / N as f64;
    let exact = rules::CompareRules::new(&[], Some("exact"), None, &[]).unwrap();
    let t = Instant::now();
    for _ in 0..N {
        assert!(!content::compare(&exact, &p, &p).body_mismatch());
    }
    let exact = t.elapsed().as_nanos() as f64 / N as f64;
    eprintln!(
        "per response ({} B JSON body): framing without capture {off:.0} ns, with capture \
         {on:.0} ns (+{:.0} ns, each side); comparison thread: headers + json body {json:.0} ns \
         (identical bytes: {same:.0} ns), headers + exact body {exact:.0} ns",
        body.len(),
        on - off
    );
}

#[test]
fn copies_never_sent_do_not_keep_the_entry_waiting() {
    let names = ["all".to_string(), "half".to_string()];
    let mut c = Comparator::new(&names, Duration::from_secs(10), 100);
    // Request 1: the 50% mirror did not sample it; told before the primary answers.
    c.on_not_mirrored((1, 0), 0);
    c.on_primary((1, 0), p(200, 1), 1);
    assert_eq!(c.pending(), 1, "still waiting for the first mirror");
    assert!(c.on_mirror((1, 0), 0, m(200, 2), 2).is_some());
    assert_eq!(c.pending(), 0, "every mirror settled: the entry is gone");
    // Request 2: dropped for both mirrors (queue full) after the primary answered.
    c.on_primary((1, 1), p(200, 1), 3);
    c.on_not_mirrored((1, 1), 4);
    c.on_not_mirrored((1, 1), 4);
    assert_eq!(c.pending(), 0);
    c.expire(u64::MAX);
    let s = c.snapshot();
    assert_eq!(
        (s.evicted, s.primary_unmatched, s.mirrors[0].compared),
        (0, 0, 1),
        "nothing was waiting for a copy that was never sent: {s:?}"
    );
}

#[test]
fn a_copy_dropped_before_the_primary_answers_leaves_nothing_waiting() {
    let names = ["only".to_string()];
    let mut c = Comparator::new(&names, Duration::from_secs(10), 100);
    // Queue full: the replayer says so before the primary's response is captured.
    c.on_not_mirrored((7, 0), 0);
    assert_eq!(c.pending(), 1, "kept until the primary's response arrives");
    assert!(c.on_primary((7, 0), p(200, 1), 1).is_empty());
    assert_eq!(
        c.pending(),
        0,
        "settled: released, not waiting for a mirror"
    );
    // A request whose primary response never comes expires without counting anything.
    c.on_not_mirrored((7, 1), 2);
    c.expire(u64::MAX);
    let s = c.snapshot();
    assert_eq!((s.primary_unmatched, s.evicted), (0, 0), "{s:?}");
    assert_eq!(s.mirrors[0].primary_missing, 0, "{s:?}");
}

fn json_with(header: &str, body: &str) -> ResponseSample {
    ResponseSample {
        head: format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{header}\r\n")
            .into_bytes(),
        body: body.as_bytes().to_vec(),
        body_len: body.len() as u64,
        truncated: false,
    }
}

/// Baseline (mirror 0) and candidate (mirror 1): the candidate's verdict waits for the
/// baseline's answer to the same request, whichever comes first; noise the baseline shows is
/// never a mismatch; a real change is, and is logged with the noise marked.
#[test]
fn a_baseline_mirror_turns_its_differences_into_noise_for_the_candidate() {
    use crate::replay::NotSent;
    use crate::replay::ReplayObserver;
    let path = std::env::temp_dir().join(format!("mirror-baseline-difflog-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let log = difflog::DiffLog::create(&path, 1000, Default::default(), false).unwrap();
    let hub = CompareHub::new(
        vec!["base".into(), "cand".into()],
        Duration::from_secs(5),
        64,
        None,
    )
    .with_content_and_baseline(
        rules::CompareRules::default(),
        Some(log),
        Some((0, Duration::from_secs(30))),
    );
    let side = PrimarySide {
        status: 200,
        latency: ms(1),
    };
    let body = |who: &str, i: u64, plan: &str| {
        format!(r#"{{"id":"{who}-{i}","plan":"{plan}","ts":"{who}@{i}"}}"#)
    };
    let primary = |i: u64, target: &str| {
        Some(PrimaryInfo {
            method: "GET".into(),
            target: target.into(),
            capture: Some(json_with(
                &format!("X-Host: p{i}\r\n"),
                &body("p", i, "free"),
            )),
        })
    };
    let answer = |who: &str, i: u64, plan: &str| {
        Some(Box::new(json_with(
            &format!("X-Host: {who}{i}\r\n"),
            &body(who, i, plan),
        )))
    };
    // 1: the candidate answers first (waits), then the baseline: all noise.
    hub.primary_with((1, 0), side, primary(0, "/users/10"));
    hub.mirror_with((1, 0), 1, &answered(200), answer("c", 0, "free"));
    hub.mirror_with((1, 0), 0, &answered(200), answer("b", 0, "free"));
    // 2: the baseline first; the candidate changes a real field.
    hub.primary_with((1, 1), side, primary(1, "/users/11?x=1"));
    hub.mirror_with((1, 1), 0, &answered(200), answer("b", 1, "free"));
    hub.mirror_with((1, 1), 1, &answered(200), answer("c", 1, "pro"));
    // 3: the baseline was not sampled: judged with what was learned (noise, no change).
    hub.primary_with((1, 2), side, primary(2, "/users/12"));
    hub.not_sent(0, (1, 2), NotSent::NotSampled);
    hub.mirror_with((1, 2), 1, &answered(200), answer("c", 2, "free"));
    // 4: on another endpoint nothing is learned yet and the baseline never answers: the
    // candidate waits until the end of the run, then every difference there is real.
    hub.primary_with((1, 3), side, primary(3, "/orders/1"));
    hub.mirror_with((1, 3), 1, &answered(200), answer("c", 3, "free"));
    hub.flush(Duration::from_secs(5));
    let s = hub.snapshot();
    let (b, c) = (&s.mirrors[0], &s.mirrors[1]);
    assert_eq!(
        (b.compared, b.header, b.body, b.noise_only),
        (2, 0, 0, 2),
        "{s:?}"
    );
    assert_eq!(
        (
            c.compared,
            c.header,
            c.body,
            c.noise_only,
            c.baseline_wait_expired
        ),
        (4, 1, 2, 2, 1),
        "{s:?}"
    );
    let users = &s.endpoints[&("GET /users/{n}".to_string(), 1)];
    assert_eq!((users.compared, users.real, users.noise_only), (3, 1, 2));
    let orders = &s.endpoints[&("GET /orders/{n}".to_string(), 1)];
    assert_eq!((orders.compared, orders.real), (1, 1));
    let noise = s.noise.as_ref().expect("noise published");
    assert_eq!(noise.baseline, "base");
    let fields: Vec<&str> = noise.endpoints[0]
        .fields
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(fields, ["header:x-host", "json:$.id", "json:$.ts"]);
    let table = s.table();
    assert!(
        table.contains("noise learned from baseline `base`: 3 fields on 1 endpoints"),
        "{table}"
    );
    assert!(table.contains("GET /users/{n}"), "{table}");
    // The diff log: the real change with its noise marked, and the unknown endpoint's line.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let l = &lines[0];
    assert_eq!(l["path"], "/users/11?x=1");
    assert_eq!(l["kinds"], serde_json::json!(["body"]), "{l}");
    assert_eq!(l["json_paths"], serde_json::json!(["$.plan"]), "{l}");
    assert_eq!(
        l["noise_json_paths"],
        serde_json::json!(["$.id", "$.ts"]),
        "{l}"
    );
    assert_eq!(l["headers"][0]["name"], "x-host");
    assert_eq!(l["headers"][0]["noise"], true);
    assert_eq!(
        lines[1]["kinds"],
        serde_json::json!(["header", "body"]),
        "{text}"
    );
    let _ = std::fs::remove_file(&path);
}

/// The comparison thread's queue full (the thread held while more verdicts than the queue
/// holds arrive): each verdict over it is counted `content_queue_full`, its request
/// `content_skipped`, never waited on; the queued ones are compared once the thread goes on.
#[test]
fn verdicts_over_a_full_comparison_queue_are_counted_not_waited_on() {
    let rules = rules::CompareRules::new(&[], None, None, &[]).unwrap();
    let hub = CompareHub::new(vec!["m".into()], Duration::from_secs(60), 1 << 14, None)
        .with_content(rules, None);
    let release = hub.hold_content();
    let over = 3;
    let n = worker::QUEUE + over;
    let side = PrimarySide {
        status: 200,
        latency: ms(1),
    };
    for i in 0..n {
        let key = (9, i as u64);
        hub.primary_with(key, side, info("/q", r#"{"a":1}"#));
        hub.mirror_with(
            key,
            0,
            &answered(200),
            Some(Box::new(json_cap(r#"{"a":2}"#))),
        );
    }
    let s = hub.snapshot();
    assert_eq!(s.content_queue_full, over as u64);
    assert_eq!(s.mirrors[0].content_skipped, over as u64);
    drop(release);
    hub.flush(Duration::from_secs(30));
    let s = hub.snapshot();
    let m = &s.mirrors[0];
    assert_eq!(m.compared, n as u64, "{s:?}");
    assert_eq!(
        (m.body, m.content_skipped),
        (worker::QUEUE as u64, over as u64),
        "every queued verdict compared, the others skipped: {s:?}"
    );
}
