use super::*;

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
