//! The agent binary runs on mimalloc with the memory settings `main.rs` gives it before the
//! first allocation (arenas not committed up front, freed pages purged at once: without them
//! the RSS grew by 38 MiB, see BENCHMARKS.md), and an operator's `MIMALLOC_*` variable still
//! wins. Read from mimalloc's own verbose report of its options, so a wrong option number in
//! `main.rs` (mimalloc's enum is not in the Rust bindings) shows up here.

use std::process::Command;

/// mimalloc's report of its options when `--help` runs with `MIMALLOC_VERBOSE=1`.
fn options_report(extra_env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .arg("--help")
        .env("MIMALLOC_VERBOSE", "1")
        .envs(extra_env.iter().copied())
        .output()
        .expect("run mirror-agent --help");
    assert!(out.status.success(), "mirror-agent --help failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn option_line<'a>(report: &'a str, name: &str) -> &'a str {
    let prefix = format!("option '{name}':");
    report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in mimalloc's report:\n{report}"))
        .trim_end()
}

#[test]
fn the_agent_allocates_with_mimalloc_and_its_memory_settings() {
    let report = options_report(&[]);
    assert!(
        report.contains("mimalloc: process init"),
        "the binary does not run on mimalloc:\n{report}"
    );
    assert_eq!(
        option_line(&report, "arena_eager_commit"),
        "option 'arena_eager_commit': 0"
    );
    assert_eq!(
        option_line(&report, "purge_delay"),
        "option 'purge_delay': 0"
    );
    // Options the agent leaves alone keep mimalloc's defaults.
    assert_eq!(
        option_line(&report, "purge_decommits"),
        "option 'purge_decommits': 1"
    );
}

#[test]
fn an_operators_mimalloc_variable_wins() {
    let report = options_report(&[
        ("MIMALLOC_PURGE_DELAY", "7"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "1"),
    ]);
    assert_eq!(
        option_line(&report, "purge_delay"),
        "option 'purge_delay': 7"
    );
    assert_eq!(
        option_line(&report, "arena_eager_commit"),
        "option 'arena_eager_commit': 1"
    );
}
