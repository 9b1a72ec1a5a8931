use super::*;

#[test]
fn summary_line_ends_with_the_chunk_counters_and_the_copy_path() {
    let summary = LiveSummary {
        kernel: Counters {
            load_error: 1,
            malformed_records: 3,
            captured: 9,
            chunked_records: 4,
            chunks_lost: 2,
            max_skb_payload: 196_000,
            ..Counters::default()
        },
        copy: Some(CopyPath::Reserve),
        ..LiveSummary::default()
    };
    // Scripts and tests split the line on spaces and `=`; new fields go at the end.
    assert!(
        summary.to_string().ends_with(
            " unparseable=0 load_errors=1 malformed_records=3 captured=9 chunked_records=4 \
             chunks_lost=2 max_skb_payload=196000 capture_copy=reserve"
        ),
        "{summary}"
    );
}
