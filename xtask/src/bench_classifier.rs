//! `cargo xtask bench classifier`: the ingress classifier's time per packet, by kind of packet,
//! without load noise.
//!
//! The agent (release build, or `MIRROR_BENCH_AGENT`) runs in a network namespace of its own,
//! attached to that namespace's `lo` on one port, with a mirror nobody listens on. Each packet
//! kind is then run through its loaded `mirror_ingress` program with `BPF_PROG_TEST_RUN`
//! (`bpftool prog run ... repeat N`): the kernel runs the program N times on the same skb and
//! reports the mean, against the agent's real maps and ring. With `MIRROR_BENCH_AGENT_BASE`
//! a second agent binary is measured the same way in the same run, and the table shows both
//! (before/after pairs).
//!
//! What it shows and what it does not: the program's own path per kind of packet (not TCP,
//! another port, an ACK of a captured port, a SYN, a request of 46 or 1400 bytes, IPv6, a
//! VLAN-tagged frame, which takes the field-by-field parser) with warm caches. Under real load
//! the ring's and maps' cache lines are colder; `bench capture` and `bench connections` report
//! that cost (`kernel.bpf_stats_enabled`) under wrk and nginx.
//!
//! The copies each run makes go to the agent's ring: runs are short (`REPEAT` skbs) with a pause
//! between them so the agent drains the ring, and the agent's exit report must show no ring
//! drop (a full ring takes a cheaper path and would flatter the figures): the bench fails if it
//! does. `MIRROR_BENCH_ROUNDS` (default 5): runs per packet kind; the table shows the median.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mirror_agent::capture::pcap::synth::{SynthLink, frame, ip_packet};
use mirror_agent::capture::{Segment, TcpFlags};

use crate::lab::Proc;
use crate::netns::Namespace;

const NS: &str = "mirror-bench-cls";
const PORT: u16 = 18080;
/// Program runs per `bpftool prog run`: as many ring records, of the largest kind about 10.7 MB
/// (a 72-byte header and a 2 KiB size class for 1400 bytes of payload), within the default
/// 16 MiB ring even if the agent read nothing during the run.
const REPEAT: u32 = 5000;
const DEFAULT_ROUNDS: usize = 5;

/// One kind of packet: its label and frame (Ethernet, as `lo` carries it).
struct Kind {
    label: &'static str,
    frame: Vec<u8>,
}

fn tcp(src: &str, dst: &str, flags: u8, payload: &[u8]) -> Vec<u8> {
    ip_packet(&Segment {
        src: src.parse().expect("address"),
        dst: dst.parse().expect("address"),
        seq: 1000,
        ack: 2000,
        flags: TcpFlags(flags),
        direction: None,
        ts_ns: 0,
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

fn request(len: usize) -> Vec<u8> {
    let head = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Pad: ";
    let mut r = head.to_vec();
    r.resize(len.saturating_sub(4).max(head.len()), b'a');
    r.extend_from_slice(b"\r\n\r\n");
    r
}

fn kinds() -> Vec<Kind> {
    let client = "127.0.0.1:40000";
    let server = format!("127.0.0.1:{PORT}");
    let eth = SynthLink::Ethernet { vlans: 0 };
    let ack = TcpFlags::ACK;
    let push = TcpFlags::ACK | TcpFlags::PSH;
    let mut udp = frame(eth, &tcp(client, &server, ack, b""));
    // The IPv4 protocol byte (after 14 bytes of Ethernet): UDP. Nothing else is read.
    udp[14 + 9] = 17;
    vec![
        Kind {
            label: "not TCP (UDP)",
            frame: udp,
        },
        Kind {
            label: "TCP, another port",
            frame: frame(eth, &tcp(client, "127.0.0.1:9999", ack, b"")),
        },
        Kind {
            label: "ACK, captured port",
            frame: frame(eth, &tcp(client, &server, ack, b"")),
        },
        Kind {
            label: "SYN, captured port",
            frame: frame(eth, &tcp(client, &server, TcpFlags::SYN, b"")),
        },
        Kind {
            label: "request, 46 bytes",
            frame: frame(eth, &tcp(client, &server, push, &request(46))),
        },
        Kind {
            label: "request, 1400 bytes",
            frame: frame(eth, &tcp(client, &server, push, &request(1400))),
        },
        Kind {
            label: "IPv6 request, 46 bytes",
            frame: frame(
                eth,
                &tcp("[::1]:40000", &format!("[::1]:{PORT}"), push, &request(46)),
            ),
        },
        Kind {
            label: "VLAN-tagged request, 46 bytes",
            frame: frame(
                SynthLink::Ethernet { vlans: 1 },
                &tcp(client, &server, push, &request(46)),
            ),
        },
    ]
}

/// Ids of the loaded programs named `mirror_ingress`.
fn ingress_programs() -> anyhow::Result<Vec<u32>> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .context("bpftool prog show")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" name mirror_ingress "))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect())
}

/// Mean nanoseconds per run of program `id` on `frame` (`bpftool prog run`).
fn test_run(id: u32, frame_path: &Path) -> anyhow::Result<f64> {
    let out = Command::new("bpftool")
        .args(["prog", "run", "id", &id.to_string(), "data_in"])
        .arg(frame_path)
        .args(["repeat", &REPEAT.to_string()])
        .output()
        .context("bpftool prog run")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "Return value: 3, duration (average): 412ns"
    let ns = text
        .split("duration (average):")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.trim_end_matches("ns").parse::<f64>().ok());
    match ns {
        Some(ns) if out.status.success() => Ok(ns),
        _ => bail!("bpftool prog run id {id}: {}", text.trim()),
    }
}

/// Medians per kind for one agent binary.
fn measure(
    ns: &Namespace,
    agent: &Path,
    kinds: &[(String, PathBuf)],
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    let before = ingress_programs()?;
    let dir = crate::util::target_dir().join("bench-classifier");
    let log = dir.join("agent.log");
    let mut child = ns.cmd(agent.to_str().context("agent path: not UTF-8")?);
    child
        .args(["--iface", "lo", "--port", &PORT.to_string()])
        .args(["--mirror", "http://127.0.0.1:18081", "--duration", "600"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let agent_proc = Proc(child.spawn().context("starting the agent")?);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let Some(id) = ingress_programs()?
            .into_iter()
            .find(|id| !before.contains(id))
        {
            break id;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent attached no mirror_ingress in 20 s: see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Attached is not yet reading: give the agent its start.
    std::thread::sleep(Duration::from_millis(500));
    let mut medians = Vec::new();
    for (label, path) in kinds {
        let mut runs = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            runs.push(test_run(id, path).with_context(|| label.clone())?);
            // Let the agent drain what the run put in the ring.
            std::thread::sleep(Duration::from_millis(150));
        }
        runs.sort_by(f64::total_cmp);
        medians.push(runs[runs.len() / 2]);
    }
    agent_proc.signal(libc::SIGINT)?;
    let mut agent_proc = agent_proc;
    let status = agent_proc.0.wait()?;
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        bail!("the agent exited with {status}: see {}", log.display());
    }
    let ring_full = report
        .split("ring_full=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no ring_full= in the agent's report: {}", log.display()))?;
    if ring_full > 0 {
        bail!(
            "the ring was full {ring_full} times: the figures include the cheaper ring-full \
             path; see {}",
            log.display()
        );
    }
    Ok(medians)
}

pub fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "bench classifier loads eBPF programs: run as root"
    );
    let agent = match std::env::var_os("MIRROR_BENCH_AGENT").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => crate::ebpf::release_agent()?,
    };
    let base = std::env::var_os("MIRROR_BENCH_AGENT_BASE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let rounds: usize = match std::env::var("MIRROR_BENCH_ROUNDS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .context("MIRROR_BENCH_ROUNDS: 1-100")?,
        Err(_) => DEFAULT_ROUNDS,
    };
    let dir = crate::util::target_dir().join("bench-classifier");
    std::fs::create_dir_all(&dir)?;
    let kinds: Vec<(String, PathBuf)> = kinds()
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let path = dir.join(format!("packet-{i}.bin"));
            std::fs::write(&path, &k.frame).map(|()| (k.label.to_string(), path))
        })
        .collect::<Result<_, _>>()?;
    // The kernel's own run statistics are not needed: test_run times the runs itself.
    let ns = Namespace::new(NS.to_string())?;
    let this = measure(&ns, &agent, &kinds, rounds)?;
    let before = base
        .as_ref()
        .map(|b| measure(&ns, b, &kinds, rounds))
        .transpose()?;

    println!(
        "\nbench classifier: mirror_ingress per packet, BPF_PROG_TEST_RUN x{REPEAT}, median of \
         {rounds} runs"
    );
    println!("agent: {}", agent.display());
    if let Some(b) = &base {
        println!("base:  {}", b.display());
        println!("\n| packet | base | this | this / base |\n|---|---:|---:|---:|");
    } else {
        println!("\n| packet | ns per packet |\n|---|---:|");
    }
    for (i, (label, _)) in kinds.iter().enumerate() {
        match &before {
            Some(b) => println!(
                "| {label} | {:.0} ns | {:.0} ns | {:.2} |",
                b[i],
                this[i],
                this[i] / b[i]
            ),
            None => println!("| {label} | {:.0} ns |", this[i]),
        }
    }
    Ok(())
}
