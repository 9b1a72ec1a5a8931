use clap::Parser;

use super::*;
use crate::cli::Cli;

fn check(args: &[&str]) -> Result<LiveOptions, LiveError> {
    let cli = Cli::try_parse_from(std::iter::once("mirror-agent").chain(args.iter().copied()))
        .expect("flags parse");
    options_from_args(&cli.run)
}

fn usage_message(args: &[&str]) -> String {
    match check(args) {
        Err(e @ LiveError::Usage(_)) => {
            assert_eq!(e.exit_code(), 2);
            let msg = e.to_string();
            assert_eq!(msg.lines().count(), 1, "one line: {msg}");
            msg
        }
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

#[test]
fn rejects_bad_flags_with_one_line() {
    assert!(usage_message(&["--port", "80"]).contains("--iface"));
    assert!(usage_message(&["--iface", "lo"]).contains("no ports"));
    assert!(usage_message(&["--iface", "lo", "--port", "0"]).contains("invalid port 0"));
    assert!(usage_message(&["--iface", "lo", "--port", "65536"]).contains("invalid port 65536"));
    assert!(
        usage_message(&[
            "--iface",
            "lo",
            "--port",
            "80",
            "--capture-percent",
            "100.5"
        ])
        .contains("--capture-percent")
    );
    assert!(
        usage_message(&[
            "--iface",
            "lo",
            "--port",
            "80",
            "--ring-buffer-size",
            "12288"
        ])
        .contains("power of two")
    );
    assert!(
        usage_message(&["--iface", "lo", "--port", "80", "--duration", "0"]).contains("--duration")
    );
}

#[test]
fn too_many_ports_rejected_and_duplicates_merged() {
    let many: Vec<String> = (1..=65).map(|p| p.to_string()).collect();
    let mut args = vec!["--iface", "lo", "--port"];
    let joined = many.join(",");
    args.push(&joined);
    assert!(usage_message(&args).contains("too many ports"));
}

#[test]
fn summary_line_ends_with_the_malformed_records() {
    let summary = LiveSummary {
        kernel: Counters {
            load_error: 1,
            malformed_records: 3,
            ..Counters::default()
        },
        ..LiveSummary::default()
    };
    // Scripts and tests split the line on spaces and `=`; new fields go at the end.
    assert!(
        summary
            .to_string()
            .ends_with(" unparseable=0 load_errors=1 malformed_records=3"),
        "{summary}"
    );
}
