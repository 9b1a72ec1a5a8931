//! The agent binary's mimalloc (its `#[global_allocator]`) gets the memory settings `main.rs`
//! gives it before the first allocation (arenas not committed up front, freed pages purged at
//! once: without them the RSS grew by 38 MiB, see BENCHMARKS.md), and an operator's
//! `MIMALLOC_*` variable still wins. Read from mimalloc's own verbose report of its options, so
//! a wrong option number in `main.rs` (mimalloc's enum is not in the Rust bindings) shows here.

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

/// Asserts mimalloc reports `name` set to `value`.
fn assert_option(report: &str, name: &str, value: &str) {
    let prefix = format!("option '{name}':");
    let line = report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in mimalloc's report:\n{report}"));
    assert_eq!(line.trim_end(), format!("{prefix} {value}"), "{report}");
}

#[test]
fn the_agents_mimalloc_settings_are_applied() {
    let report = options_report(&[]);
    assert_option(&report, "arena_eager_commit", "0");
    assert_option(&report, "purge_delay", "0");
    // Options the agent leaves alone keep mimalloc's defaults.
    assert_option(&report, "purge_decommits", "1");
}

#[test]
fn an_operators_mimalloc_variable_wins() {
    let report = options_report(&[
        ("MIMALLOC_PURGE_DELAY", "7"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "1"),
    ]);
    assert_option(&report, "purge_delay", "7");
    assert_option(&report, "arena_eager_commit", "1");
}
