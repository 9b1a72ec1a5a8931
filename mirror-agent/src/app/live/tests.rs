use super::*;

#[test]
fn summary_line_ends_with_the_chunk_counters_the_copy_path_and_the_interfaces() {
    let summary = LiveSummary {
        kernel: Counters {
            load_error: 1,
            malformed_records: 3,
            captured: 9,
            chunked_records: 4,
            chunks_lost: 2,
            max_skb_payload: 196_000,
            interfaces: 2,
            iface: crate::capture::ebpf::IfaceStats {
                attached: 3,
                detached: 1,
                attach_errors: 0,
                resyncs: 0,
            },
            ..Counters::default()
        },
        copy: Some(CopyPath::Reserve),
        ..LiveSummary::default()
    };
    // Scripts and tests split the line on spaces and `=`; new fields go at the end.
    assert!(
        summary.to_string().ends_with(
            " unparseable=0 load_errors=1 malformed_records=3 captured=9 chunked_records=4 \
             chunks_lost=2 max_skb_payload=196000 capture_copy=reserve interfaces=2 \
             iface_attached=3 iface_detached=1 iface_attach_errors=0 iface_resyncs=0 skipped=0 \
             skipped_bytes=0 skip_requests=0 skip_failed=0 tls_ciphertext=0"
        ),
        "{summary}"
    );
}
