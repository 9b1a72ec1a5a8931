//! Replay's outward interface through a real replay to a loopback mirror: what an observer
//! hears of a copy answered, of copies never sent, and the comparison as the only observer
//! (telemetry off).

mod replay_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirror_agent::compare::{CompareHub, PrimarySide};
use mirror_agent::http::response::ResponseSample;
use mirror_agent::pipeline::RequestKey;
use mirror_agent::replay::filter::Filter;
use mirror_agent::replay::stats::{DropReason, Outcome};
use mirror_agent::replay::{ConnectionHooks, MirrorCopy, NotSent, ReplayObserver, Replayer};
use replay_common::{Behavior, TestMirror, config, finish, one, wait_until};

/// What the observer heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Sending(usize, String),
    NotSent(usize, RequestKey, NotSent),
    Finished(usize, String, Option<u16>),
}

/// Records every call; rewrites nothing.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Heard>>>);

impl Recorder {
    fn heard(&self) -> Vec<Heard> {
        self.0.lock().unwrap().clone()
    }
}

impl ReplayObserver for Recorder {
    /// The target, to show the flight goes from `sending` to `finished` of the same copy.
    type Flight = String;

    fn sending(&self, mirror: usize, copy: &mut MirrorCopy) -> String {
        let target = copy.target().to_string();
        self.0
            .lock()
            .unwrap()
            .push(Heard::Sending(mirror, target.clone()));
        target
    }

    fn not_sent(&self, mirror: usize, key: RequestKey, why: NotSent) {
        self.0
            .lock()
            .unwrap()
            .push(Heard::NotSent(mirror, key, why));
    }

    fn finished(
        &self,
        mirror: usize,
        copy: &MirrorCopy,
        flight: String,
        outcome: &Outcome,
        _: &mut Option<Box<ResponseSample>>,
    ) {
        assert_eq!(flight, copy.target(), "the copy's own flight");
        let status = match outcome {
            Outcome::Answered { status, .. } => Some(*status),
            _ => None,
        };
        self.0
            .lock()
            .unwrap()
            .push(Heard::Finished(mirror, flight, status));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_answered_and_copies_never_sent_are_heard_once_each() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    let silent = TestMirror::start(Behavior::Ok).await;
    // Mirror 0 takes every request; mirror 1 is at 0%: its sampling passes every one over.
    let mut cfg = config(vec![mirror.spec("a", 100.0), silent.spec("b", 0.0)]);
    cfg.capture_percent = 100.0;
    cfg.filter = Filter::new(&[], &[], &["^/secret".into()], &[]).unwrap();
    let recorder = Recorder::default();
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), recorder.clone());
    replayer.submit(&one(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"));
    wait_until("the copy answered", Duration::from_secs(5), || {
        recorder.heard().len() >= 3
    })
    .await;
    let mut secret = one(b"GET /secret HTTP/1.1\r\nHost: h\r\n\r\n");
    secret.seq_in_flow = 1;
    replayer.submit(&secret);
    let snap = finish(&replayer).await;
    let heard = recorder.heard();
    let sorted = |mut v: Vec<Heard>| {
        v.sort_by_key(|h| format!("{h:?}"));
        v
    };
    // Each exactly once; the mirrors' workers run concurrently with `submit`, so only the
    // order within one copy is fixed.
    assert_eq!(
        sorted(heard.clone()),
        sorted(vec![
            Heard::NotSent(1, (1, 0), NotSent::NotSampled),
            Heard::Sending(0, "/ok".into()),
            Heard::Finished(0, "/ok".into(), Some(200)),
            Heard::NotSent(0, (1, 1), NotSent::Dropped(DropReason::Filtered)),
            Heard::NotSent(1, (1, 1), NotSent::NotSampled),
        ])
    );
    let at = |h: Heard| heard.iter().position(|x| *x == h).unwrap();
    assert!(
        at(Heard::Sending(0, "/ok".into())) < at(Heard::Finished(0, "/ok".into(), Some(200))),
        "{heard:?}"
    );
    assert_eq!(
        mirror.count(),
        1,
        "the filtered copy never reached the mirror"
    );
    assert_eq!(silent.count(), 0);
    assert_eq!(snap.mirrors[0].answered(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_works_with_telemetry_off() {
    let mirror = TestMirror::start(Behavior::Ok).await;
    // No telemetry anywhere: the hub is replay's only observer and has no subscriber.
    let hub = CompareHub::new(vec!["a".into()], Duration::from_secs(30), 64, None);
    let cfg = config(vec![mirror.spec("a", 100.0)]);
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), hub.clone());
    replayer.submit(&one(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"));
    hub.primary(
        (1, 0),
        PrimarySide {
            status: 503,
            latency: Duration::from_millis(2),
        },
    );
    wait_until("the verdict", Duration::from_secs(5), || {
        hub.snapshot().mirrors[0].compared == 1
    })
    .await;
    finish(&replayer).await;
    let c = hub.snapshot();
    assert_eq!(
        (c.mirrors[0].compared, c.mirrors[0].status_class),
        (1, 1),
        "the mirror's 200 against the primary's 503: {c:?}"
    );
}
