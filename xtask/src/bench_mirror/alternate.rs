//! The primary's throughput ratio measured in alternating slices of one wrk run: the agent
//! (one mirror at 100%) is started and stopped while wrk keeps loading the primary, and each
//! slice's rate is the primary's responses over the slice.
//!
//! Why not consecutive runs: on this shared VM the host's speed drifts by 10-20% between runs
//! a minute apart (BENCHMARKS.md: two `off` runs bracketing an `on` run were up to 15% apart),
//! which swamps the 1-2% the agent can cost the primary. Slices of a few seconds, each `on`
//! slice judged against the `off` slices just before and after it, cancel drift slower than a
//! slice, not the host's faster changes (a slice's rate still moves by 5-10%). The ratio is the
//! mean over the pairs, and `bench connections` judges the target on the mean of every slice of
//! every round with its standard error. Not the median: it leans high, since a slowdown in an
//! `off` slice raises the two pairs around it and one in an `on` slice lowers only its own
//! (session 20: medians 0.99-1.01 where the mean was 0.983 +- 0.008 and the kernel put the
//! classifier at 1.4-2.2% of the CPU).
//!
//! What a slice counts: packets the primary sent on its veth (`/proc/PID/net/dev` of the
//! primary, read in microseconds, no request of our own). A keep-alive GET's response is one
//! packet carrying the ACK of its request; with thousands of connections the delayed ACK
//! fires before nginx answers and a response is two. Either way the same in both kinds of
//! slice, so ratios hold; rates are shown as requests with the run's packets per wrk request.
//!
//! The kernel's BPF run-time statistics are off during the alternation: they add two clock
//! reads per program run (60-90 ns a packet measured here with `bench classifier`), a cost the
//! agent does not have in production.
//!
//! Slices start after the agent reports `capturing;` (or after it exited) plus [`SETTLE`]: its
//! start (loading and attaching its programs) and stop are not in any slice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::world::{NS, PORT, PRIMARY, World};
use super::{Layout, Settings, measure, spawn_agent};
use crate::netns::ns_cmd_on;

/// Pause after the agent started or stopped before a slice begins.
const SETTLE: Duration = Duration::from_millis(500);
/// wrk's time to open its connections before the first slice.
const WARM_UP: Duration = Duration::from_secs(2);
/// wrk's nominal duration; it is interrupted as soon as the slices are done.
const WRK_MAX_SECS: u64 = 900;

/// The slices' rates (responses a second), in order: `off[i]`, `on[i]`, `off[i + 1]`.
pub struct Alternation {
    pub off: Vec<f64>,
    pub on: Vec<f64>,
    /// The primary's packets sent over the run per request wrk completed.
    pub packets_per_request: f64,
}

impl Alternation {
    /// Each `on` slice over the mean of the `off` slices around it.
    pub fn pair_ratios(&self) -> Vec<f64> {
        self.on
            .iter()
            .enumerate()
            .map(|(i, on)| on / ((self.off[i] + self.off[i + 1]) / 2.0))
            .collect()
    }

    /// The mean of [`Self::pair_ratios`] (see the module doc for why not the median).
    pub fn ratio(&self) -> f64 {
        let r = self.pair_ratios();
        r.iter().sum::<f64>() / r.len() as f64
    }
}

/// `pairs` `on` slices between `pairs + 1` `off` slices of `slice` each, under one wrk run of
/// `connections` connections, pinned layout; the agent mirrors to fast-mirror.
pub fn alternate(
    world: &mut World,
    s: &Settings,
    connections: u32,
    pairs: usize,
    slice: Duration,
    primary: usize,
) -> Result<Alternation> {
    let _plain = measure::BpfStats::set(false);
    let layout = Layout::Pinned;
    let [node_cpus, _, _] = layout.cpus(s.ncpu);
    let primary_pid = world.pid(primary);
    let sent = || primary_packets_sent(primary_pid, "mbn");
    let before = sent()?;
    let mut wrk_cmd = ns_cmd_on(NS[0], Some(&node_cpus), "wrk");
    wrk_cmd.args([
        "-t",
        "2",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{WRK_MAX_SECS}s"),
        "--latency",
        &format!("http://{PRIMARY}:{PORT}/bench"),
    ]);
    let wrk_name = format!("wrk-alternate-c{connections}");
    let wrk = world.spawn(&mut wrk_cmd, &wrk_name)?;
    std::thread::sleep(WARM_UP);
    let measure_slice = || -> Result<f64> {
        let (t0, c0) = (Instant::now(), sent()?);
        std::thread::sleep(slice);
        let (t1, c1) = (Instant::now(), sent()?);
        Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64())
    };
    let mut off = vec![measure_slice()?];
    let mut on = Vec::new();
    for pair in 1..=pairs {
        let name = format!("agent-alternate-c{connections}-{pair}");
        let mirror = format!(
            "http://{}:{},name=fast",
            super::world::MIRROR,
            super::world::FAST_PORT
        );
        let agent = spawn_agent(world, s, layout, &name, &["--mirror".into(), mirror])?;
        std::thread::sleep(SETTLE);
        on.push(measure_slice()?);
        world.interrupt(agent, Duration::from_secs(30))?;
        std::thread::sleep(SETTLE);
        off.push(measure_slice()?);
    }
    world.interrupt(wrk, Duration::from_secs(30))?;
    let out = world.read(&format!("{wrk_name}.out"))?;
    let requests = measure::parse_wrk(&out)
        .with_context(|| format!("wrk's summary after SIGINT: {out}"))?
        .requests;
    let packets = sent()? - before;
    Ok(Alternation {
        off,
        on,
        packets_per_request: packets as f64 / requests.max(1) as f64,
    })
}

/// Packets `dev` sent, in the network namespace of process `pid` (`/proc/PID/net/dev`).
fn primary_packets_sent(pid: u32, dev: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .with_context(|| format!("reading /proc/{pid}/net/dev"))?;
    parse_tx_packets(&text, dev).with_context(|| format!("no {dev} in /proc/{pid}/net/dev"))
}

/// The transmitted-packets column of `dev` in a `/proc/net/dev` table: after the `dev:` label,
/// eight receive columns, then transmit bytes and packets.
fn parse_tx_packets(text: &str, dev: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(dev)?.strip_prefix(':'))?;
    rest.split_whitespace().nth(9)?.parse().ok()
}

/// Checks the knobs: `pairs` 1-20 and a slice of 1-30 s (each alternation is bounded).
pub fn check_knobs(pairs: usize, slice_secs: u64) -> Result<()> {
    if pairs > 20 || !(1..=30).contains(&slice_secs) {
        bail!("MIRROR_BENCH_SLICES: 0-20 pairs; MIRROR_BENCH_SLICE_SECS: 1-30");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
   mbn: 98765432  123456    0    0    0     0          0         0 55555555   654321    0    0    0     0       0          0
   mbu:  1000  10    0    0    0     0          0         0 2000   20    0    0    0     0       0          0
";

    #[test]
    fn the_transmitted_packets_of_the_named_device_are_read() {
        assert_eq!(parse_tx_packets(NET_DEV, "mbn"), Some(654_321));
        assert_eq!(parse_tx_packets(NET_DEV, "mbu"), Some(20));
        assert_eq!(parse_tx_packets(NET_DEV, "mb"), None);
        assert_eq!(parse_tx_packets(NET_DEV, "eth0"), None);
    }

    #[test]
    fn each_on_slice_is_judged_against_the_off_slices_around_it() {
        let a = Alternation {
            off: vec![100.0, 120.0, 80.0],
            on: vec![110.0, 99.0],
            packets_per_request: 1.0,
        };
        let r = a.pair_ratios();
        assert!((r[0] - 1.0).abs() < 1e-9 && (r[1] - 0.99).abs() < 1e-9);
        assert!((a.ratio() - 0.995).abs() < 1e-9, "the pairs' mean");
    }
}
