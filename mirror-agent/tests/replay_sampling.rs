//! Consistent sampling (`--sampling consistent`) over real connections: two mirrors at 50%
//! receive exactly the same requests, a 10% mirror a subset of them; with independent sampling
//! two 50% mirrors receive different sets.

mod replay_common;

use std::collections::BTreeSet;

use mirror_agent::replay::sampler::Sampling;
use mirror_agent::replay::{ConnectionHooks, NoObserver, Replayer};
use replay_common::*;

const REQUESTS: u64 = 2000;

/// The targets each mirror received, after sending `REQUESTS` requests over 100 connections.
async fn run(sampling: Sampling, percents: &[f64]) -> Vec<BTreeSet<String>> {
    let mut mirrors = Vec::new();
    for _ in percents {
        mirrors.push(TestMirror::start(Behavior::Ok).await);
    }
    let specs = mirrors
        .iter()
        .zip(percents)
        .enumerate()
        .map(|(i, (m, p))| m.spec(&format!("m{i}"), *p))
        .collect();
    let mut cfg = config(specs);
    cfg.sampling = sampling;
    cfg.capture_percent = 100.0;
    let replayer = Replayer::start(cfg, ConnectionHooks::default(), NoObserver);
    for i in 0..REQUESTS {
        let mut c = one(format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        c.flow_id = i % 100;
        c.seq_in_flow = i / 100;
        replayer.submit(&c);
    }
    let snap = finish(&replayer).await;
    mirrors
        .iter()
        .zip(&snap.mirrors)
        .map(|(m, s)| {
            let got: BTreeSet<String> = m
                .received()
                .iter()
                .map(|r| r.target().to_string())
                .collect();
            assert_eq!(
                got.len() as u64,
                s.sampled,
                "{}: every sampled copy arrived",
                s.name
            );
            got
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_sampling_sends_the_same_requests_to_equal_mirrors() {
    let sets = run(Sampling::Consistent, &[50.0, 50.0, 10.0]).await;
    assert_eq!(
        sets[0], sets[1],
        "the two 50% mirrors received the same requests"
    );
    assert!(
        sets[2].is_subset(&sets[0]),
        "the 10% mirror's requests are among them"
    );
    // Binomial(2000, p): 4 standard deviations.
    for (set, p) in [(&sets[0], 0.5), (&sets[2], 0.1)] {
        let sd = (REQUESTS as f64 * p * (1.0 - p)).sqrt();
        let got = set.len() as f64;
        assert!((got - REQUESTS as f64 * p).abs() < 4.0 * sd, "p {p}: {got}");
    }
    let independent = run(Sampling::Independent, &[50.0, 50.0]).await;
    assert_ne!(
        independent[0], independent[1],
        "independent mirrors sample on their own"
    );
    let common = independent[0].intersection(&independent[1]).count() as f64;
    let sd = (REQUESTS as f64 * 0.25 * 0.75).sqrt();
    assert!(
        (common - REQUESTS as f64 * 0.25).abs() < 4.0 * sd,
        "{common} in both"
    );
}
