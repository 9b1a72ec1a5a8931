//! What the bench reads: wrk's summary, /proc (process CPU time, peak RSS, per-CPU busy time,
//! load average) and the agent's exit table.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// wrk's totals for one run.
pub struct Wrk {
    pub requests: u64,
    pub rps: f64,
    pub p99_ms: f64,
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("wrk: no request count")?;
    let rps = find("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk: no Requests/sec")?;
    let p99 = find("99%").context("wrk: no 99% latency")?;
    Ok(Wrk {
        requests,
        rps,
        p99_ms: parse_ms(&p99)?,
    })
}

pub fn run_wrk(cmd: &mut Command) -> Result<Wrk> {
    let out = cmd.output().context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_ms(v: &str) -> Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("latency {v:?}")
    };
    Ok(num.parse::<f64>()? * mult)
}

/// utime + stime of a process, in seconds (proc(5): fields 14 and 15).
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / clk_tck())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Peak resident set (VmHWM), KiB.
pub fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")
}

/// Run time (ns) and run count summed over the BPF programs a process holds open, from
/// /proc/PID/fdinfo (the kernel counts them only while `kernel.bpf_stats_enabled` is 1).
pub fn bpf_prog_stats(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if !info.contains("prog_type:") {
            continue;
        }
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("run_time_ns:");
        total.1 += field("run_cnt:");
    }
    total
}

/// [`bpf_prog_stats`] by program type (`prog_type:` in fdinfo: 2 kprobe/uprobe, 3 sched_cls,
/// 5 tracepoint, ...).
pub fn bpf_prog_stats_by_type(pid: u32) -> std::collections::HashMap<u32, (u64, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let Some(kind) = field("prog_type:") else {
            continue;
        };
        let e: &mut (u64, u64) = out.entry(kind as u32).or_default();
        e.0 += field("run_time_ns:").unwrap_or(0);
        e.1 += field("run_cnt:").unwrap_or(0);
    }
    out
}

/// Turns the kernel's BPF run-time statistics (`kernel.bpf_stats_enabled`, off by default: it
/// adds two clock reads per program run, 60-90 ns a packet on the bench's VM) on or off, and
/// restores the previous value on drop.
pub struct BpfStats {
    previous: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Self {
        Self::set(true)
    }

    /// On or off until dropped (off: for measures the clock reads would perturb).
    pub fn set(on: bool) -> Self {
        let previous = std::fs::read_to_string(BPF_STATS).ok();
        let _ = std::fs::write(BPF_STATS, if on { "1" } else { "0" });
        Self { previous }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(p) = &self.previous {
            let _ = std::fs::write(BPF_STATS, p.trim());
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Per-CPU (busy, softirq, total) jiffies from /proc/stat; busy excludes idle and iowait.
/// Per CPU: (busy, softirq, steal, total) ticks from /proc/stat (proc(5)); busy includes
/// steal, the time the hypervisor ran someone else while this vCPU wanted to run.
pub fn cpu_times() -> Vec<(u64, u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            (total - idle, at(6), at(7), total)
        })
        .collect()
}

/// Busy share of each CPU between two [`cpu_times`] samples, e.g. `98 (20, 3) / 71 (9, 2)`
/// (percent), with the softirq and steal shares in brackets.
pub fn cpu_busy(before: &[(u64, u64, u64, u64)], after: &[(u64, u64, u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = (a.3 - b.3).max(1) as f64;
            let pct = |x: u64, y: u64| (x - y) as f64 * 100.0 / total;
            format!(
                "{:.0} ({:.0}, {:.0})",
                pct(a.0, b.0),
                pct(a.1, b.1),
                pct(a.2, b.2)
            )
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The agent's exit table, for the `fast` mirror.
#[derive(Debug, Default)]
pub struct AgentTable {
    pub captured: u64,
    pub sampled: u64,
    pub sent: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub dropped: u64,
    pub queue_full: u64,
    /// The `fast: dropped: ...` line as printed.
    pub detail: String,
}

impl AgentTable {
    /// Copies not delivered for a reason other than a full queue (drops, errors, timeouts).
    pub fn other_loss(&self) -> u64 {
        self.dropped - self.queue_full + self.errors + self.timeouts
    }

    /// Captured requests not delivered to the mirror (completeness's complement).
    pub fn shortfall(&self) -> u64 {
        self.captured.saturating_sub(self.sent)
    }
}

/// Copies sent to all the `fast*` mirrors together (the `sent` column of their rows).
pub fn sent_by_all(log: &str) -> u64 {
    let lines: Vec<&str> = log.lines().collect();
    let Some(header) = lines
        .iter()
        .rposition(|l| l.starts_with("mirror ") && l.contains(" sampled "))
    else {
        return 0;
    };
    lines[header + 1..]
        .iter()
        .take_while(|l| !l.starts_with("captured requests:"))
        .filter(|l| l.starts_with("fast"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum()
}

/// Parses the replay exit table: the `fast` row (name pct sampled sent 2xx 3xx 4xx 5xx errors
/// timeouts dropped p50 p99), its loss line and the `captured requests:` line.
pub fn parse_agent_table(log: &str) -> Option<AgentTable> {
    // The replay table's header names `sampled`; with --compare a comparison table with its
    // own `fast` row follows it.
    let lines: Vec<&str> = log.lines().collect();
    let header = lines
        .iter()
        .rposition(|l| l.starts_with("mirror ") && l.contains(" sampled "))?;
    let row: Vec<&str> = lines[header..]
        .iter()
        .find(|l| l.starts_with("fast "))?
        .split_whitespace()
        .collect();
    let num = |i: usize| row.get(i).and_then(|v| v.parse::<u64>().ok());
    let detail = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("fast: dropped:"))?
        .trim()
        .to_owned();
    let queue_full = detail
        .split_once("queue full ")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let captured = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("captured requests: "))?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(AgentTable {
        captured,
        sampled: num(2)?,
        sent: num(3)?,
        errors: num(8)?,
        timeouts: num(9)?,
        dropped: num(10)?,
        queue_full,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_table_parses() {
        let log = "mirror pct sampled sent 2xx 3xx 4xx 5xx errors timeouts dropped p50 p99\n\
                   fast 100 1000 990 985 0 0 0 2 1 7 1.00ms 2.00ms\n\
                   \x20 fast: dropped: queue full 5, filtered 0, body too large 0, backoff 2, shutdown 0; errors: ...\n\
                   captured requests: 1000; completeness (...): 99.000%\n\
                   mirror compared status_class status_code no_response primary_missing\n\
                   fast 990 0 0 0 0\n";
        let t = parse_agent_table(log).expect("parses");
        assert_eq!(sent_by_all(log), 990);
        let three = log.replace(
            "fast 100 1000 990",
            "fast 100 1000 990 0 0 0 0 0 0 0 - -\nfast-2 100 1000 980",
        );
        assert_eq!(sent_by_all(&three), 1970);
        assert_eq!((t.captured, t.sampled, t.sent), (1000, 1000, 990));
        assert_eq!(
            (t.errors, t.timeouts, t.dropped, t.queue_full),
            (2, 1, 7, 5)
        );
        assert_eq!(t.other_loss(), 5);
        assert_eq!(t.shortfall(), 10);
    }

    #[test]
    fn wrk_parses() {
        let text = "  Latency Distribution\n     50%  1.00ms\n     99%  250.00us\n\
                    1000 requests in 1.00s, 1 MB read\nRequests/sec:   1000.50\n";
        let w = parse_wrk(text).expect("parses");
        assert_eq!(w.requests, 1000);
        assert!((w.p99_ms - 0.25).abs() < 1e-9 && (w.rps - 1000.5).abs() < 1e-9);
    }
}
