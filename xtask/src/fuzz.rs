//! `cargo xtask fuzz`: runs every cargo-fuzz target of `mirror-agent/fuzz` (or those named) for a
//! fixed time each, seeded from the shared capture corpus, and prints a table of what each run
//! did. Fails when a run leaves a crash, leak, timeout or out-of-memory artifact, naming it.
//!
//! Each run is bounded by libFuzzer itself (`-max_total_time`), and so is each input
//! (`-timeout`) and the process's memory (`-rss_limit_mb`). `cargo xtask test` runs the same with
//! a short time per target ([`smoke`]). Replaying a finding is `cargo +nightly fuzz run`, see
//! `mirror-agent/fuzz/README.md`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util::{sh, show, succeeds, target_dir, workspace_root};

/// Seconds per target of `cargo xtask fuzz` (overridden by `--secs` or `MIRROR_FUZZ_SECS`).
pub const DEFAULT_SECS: u64 = 600;
/// Seconds per target of the smoke run in `cargo xtask test`: five targets, about a minute and a half.
const SMOKE_SECS: u64 = 15;
/// One input taking longer than this is a finding (a `timeout-` artifact). The slowest inputs
/// (256 KiB captures through the pipeline, under ASan) take milliseconds.
const INPUT_TIMEOUT_SECS: u64 = 10;
/// libFuzzer's own default, made explicit: far above what the targets use (a few hundred MiB with
/// ASan's quarantine), low enough that a leak or a runaway allocation ends the run as a finding
/// (an `oom-` artifact) before it hurts the machine.
const RSS_LIMIT_MB: u64 = 2048;

/// What one target's run did, from libFuzzer's output.
#[derive(Default)]
struct Outcome {
    target: String,
    /// "Done N runs in S second(s)"; the wall clock of the run when it stopped early.
    secs: Option<u64>,
    /// `stat::number_of_executed_units`.
    execs: Option<u64>,
    /// `stat::average_exec_per_sec`.
    exec_per_sec: Option<u64>,
    /// `corp:` of the last status line: inputs in libFuzzer's corpus at the end.
    corpus: Option<u64>,
    /// `cov:` of the last status line: coverage points reached.
    cov: Option<u64>,
    /// `stat::peak_rss_mb`.
    peak_rss_mb: Option<u64>,
    /// Artifacts this run wrote (crash-, leak-, timeout-, oom-, slow-unit-).
    findings: Vec<PathBuf>,
    /// The run failed without an artifact (a build error, a killed process).
    failure: Option<String>,
    log: PathBuf,
}

/// `cargo xtask fuzz`: `secs` per target, every target unless some are named.
pub fn run(secs: u64, only: &[String]) -> anyhow::Result<()> {
    crate::setup::run(crate::setup::Scope::Fuzz)?;
    run_targets(secs, only)
}

/// The short run `cargo xtask test` does (after its own setup): every target builds and runs.
pub fn smoke() -> anyhow::Result<()> {
    run_targets(SMOKE_SECS, &[])
}

fn run_targets(secs: u64, only: &[String]) -> anyhow::Result<()> {
    let fuzz_dir = workspace_root().join("mirror-agent/fuzz");
    let all = list_targets(&fuzz_dir)?;
    let targets: Vec<String> = if only.is_empty() {
        all
    } else {
        if let Some(bad) = only.iter().find(|t| !all.contains(t)) {
            bail!("unknown fuzz target {bad:?} (known: {})", all.join(", "));
        }
        only.to_vec()
    };
    // All targets in one build, so none can drift from the API it fuzzes even when only some run.
    sh(&mut fuzz_cmd(&fuzz_dir, "build"))?;
    seed(&fuzz_dir)?;
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_one(&fuzz_dir, target, secs)?);
    }
    print_table(&outcomes);
    let findings: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.findings
                .iter()
                .map(|f| format!("{}: {}", o.target, f.display()))
        })
        .chain(outcomes.iter().filter_map(|o| {
            o.failure
                .as_ref()
                .map(|e| format!("{}: {e} (log: {})", o.target, o.log.display()))
        }))
        .collect();
    if !findings.is_empty() {
        bail!(
            "fuzzing found problems:\n  {}\nreplay one with: cd mirror-agent && \
             cargo +nightly fuzz run <target> <artifact>",
            findings.join("\n  ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz <sub> --fuzz-dir .. --target-dir ..`, without what the outer (stable)
/// cargo exports: cargo-fuzz sets its own flags (sanitizer, coverage) and needs nightly's rustc.
fn fuzz_cmd(fuzz_dir: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir.parent().expect("fuzz dir has a parent"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .args(["+nightly", "fuzz", sub, "--fuzz-dir"])
        .arg(fuzz_dir);
    if sub != "list" {
        // Its own directory: the sanitizer flags would otherwise rebuild the agent's test builds.
        cmd.arg("--target-dir").arg(target_dir().join("fuzz"));
    }
    cmd
}

fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut cmd = fuzz_cmd(fuzz_dir, "list");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", show(&cmd)))?;
    if !out.status.success() {
        bail!("{} failed with {}", show(&cmd), out.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!targets.is_empty(), "{} lists no targets", show(&cmd));
    Ok(targets)
}

/// Seeds `fuzz/corpus/` from `<repo>/../shared/pcaps` with `seed_corpus.py` (which needs tshark).
/// Without either, says why and leaves the corpus as it is (empty on a fresh clone): the runs
/// still go, from whatever libFuzzer makes up.
fn seed(fuzz_dir: &Path) -> anyhow::Result<()> {
    let pcaps = workspace_root()
        .parent()
        .map(|p| p.join("shared/pcaps"))
        .unwrap_or_default();
    let skip = if !pcaps.is_dir() {
        Some(format!("no capture corpus at {}", pcaps.display()))
    } else if !succeeds(Command::new("tshark").arg("--version")) {
        Some("tshark is not installed (cargo xtask setup installs it)".to_owned())
    } else if !succeeds(Command::new("python3").arg("--version")) {
        Some("python3 is not installed".to_owned())
    } else {
        None
    };
    if let Some(why) = skip {
        eprintln!(
            "xtask: not seeding the fuzz corpus: {why}; the targets start from {}",
            fuzz_dir.join("corpus").display()
        );
        return Ok(());
    }
    sh(Command::new("python3")
        .arg(fuzz_dir.join("seed_corpus.py"))
        .arg(&pcaps)
        .arg(fuzz_dir.join("corpus")))
}

fn run_one(fuzz_dir: &Path, target: &str, secs: u64) -> anyhow::Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = list_dir(&artifacts);
    let logs = target_dir().join("fuzz/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = fuzz_cmd(fuzz_dir, "run");
    cmd.arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: fuzzing {target} for {secs} s (full output in {})",
        log_path.display()
    );
    eprintln!("xtask: $ {}", show(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", show(&cmd)))?;
    let mut out = Outcome {
        target: target.to_owned(),
        log: log_path.clone(),
        ..Outcome::default()
    };
    let stderr = child.stderr.take().expect("stderr is piped");
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        writeln!(log, "{line}").with_context(|| format!("writing {}", log_path.display()))?;
        if worth_showing(&line) {
            eprintln!("{line}");
        }
        parse_line(&line, fuzz_dir.parent().unwrap_or(fuzz_dir), &mut out);
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    out.secs = out.secs.or(Some(start.elapsed().as_secs()));
    // Artifacts named in the output, and any the output did not name (a run killed mid-report).
    let named: BTreeSet<PathBuf> = out.findings.drain(..).collect();
    let new = list_dir(&artifacts).difference(&before).cloned().collect();
    out.findings = named.union(&new).cloned().collect();
    if !status.success() && out.findings.is_empty() {
        out.failure = Some(format!(
            "cargo fuzz run exited with {status} and left no artifact"
        ));
    }
    Ok(out)
}

/// The progress worth echoing live: the status pulses (powers of two), the summary and any report;
/// not every new input, new function or the recommended dictionary (those stay in the log).
fn worth_showing(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with("NEW_FUNC") || line.starts_with('"') || line.starts_with("######") {
        return false;
    }
    !line.starts_with('#') || ["pulse", "INITED", "DONE"].iter().any(|k| line.contains(k))
}

fn parse_line(line: &str, run_dir: &Path, out: &mut Outcome) {
    let num = |s: &str| s.trim().parse::<u64>().ok();
    if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
        out.execs = num(v);
    } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
        out.exec_per_sec = num(v);
    } else if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
        out.peak_rss_mb = num(v);
    } else if let Some(rest) = line.strip_prefix("Done ") {
        // "Done 8110 runs in 11 second(s)"
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let [runs, "runs", "in", secs, ..] = words[..] {
            out.execs = out.execs.or(num(runs));
            out.secs = num(secs);
        }
    } else if let Some((_, path)) = line.split_once("Test unit written to ") {
        // The path is relative to where cargo-fuzz runs the target (or absolute).
        out.findings.push(run_dir.join(path.trim()));
    } else if line.starts_with('#') {
        // "#8110	DONE   cov: 1073 ft: 5293 corp: 482/3108Kb lim: 65544 exec/s: 737 rss: 367Mb"
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "cov:" => out.cov = words.next().and_then(num),
                "corp:" => out.corpus = words.next().and_then(|c| num(c.split('/').next()?)),
                _ => {}
            }
        }
    }
}

fn list_dir(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn print_table(outcomes: &[Outcome]) {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    println!(
        "\nlibFuzzer via cargo-fuzz, one process per target, -timeout={INPUT_TIMEOUT_SECS} \
         -rss_limit_mb={RSS_LIMIT_MB}\n"
    );
    println!(
        "| target | seconds | executions | exec/s | corpus | coverage | peak RSS MB | findings |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let findings = if o.failure.is_some() {
            "run failed".to_owned()
        } else {
            o.findings.len().to_string()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {findings} |",
            o.target,
            show(o.secs),
            show(o.execs),
            show(o.exec_per_sec),
            show(o.corpus),
            show(o.cov),
            show(o.peak_rss_mb),
        );
    }
    println!();
}
