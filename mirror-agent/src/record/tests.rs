use std::os::unix::fs::PermissionsExt;

use super::*;

fn sample(raw: &'static [u8]) -> CapturedRequest {
    let (method, target) = Text::request_line(raw, "POST", "/a?b=c");
    CapturedRequest {
        src: "[2001:db8::1]:40000".parse().unwrap(),
        dst: "127.0.0.1:8080".parse().unwrap(),
        flow_id: 7,
        seq_in_flow: 3,
        request: Request {
            raw: Bytes::from_static(raw),
            head_len: raw.len() - 2,
            method,
            target,
            version: Version::Http11,
            framing: BodyFraming::ContentLength(2),
            body_len: 2,
            ts_ns: 1_700_000_000_123_456_789,
            end_ts_ns: 1_700_000_000_223_456_789,
            te_and_cl: false,
            keep_alive: true,
            upgrade: false,
            trace: None,
            body_omitted: false,
            h2_stream: None,
        },
    }
}

#[test]
fn round_trips_including_non_utf8_header_values() {
    let c = sample(
        b"POST /a?b=c HTTP/1.1\r\nHOST: h\r\nX-Bin: \xff\xfe\r\nContent-Length: 2\r\n\r\nhi",
    );
    let line = to_line(&c);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["src"], "[2001:db8::1]:40000");
    assert_eq!(v["host"], "h");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"][0], serde_json::json!(["HOST", "h"]));
    assert_eq!(v["headers"][1][2], "//4=");
    assert_eq!(read_line(&line).unwrap(), c);
}

#[test]
fn host_null_when_absent_and_minimal_lines_read() {
    let c = sample(b"POST /a?b=c HTTP/1.1\r\n\r\nhi");
    let line = to_line(&c);
    assert!(line.contains("\"host\":null"));
    let minimal = r#"{"ts_ns":5,"src":"1.2.3.4:5","dst":"[::1]:80","method":"GET","target":"/","version":"HTTP/1.0","host":null,"headers":[],"body_len":0,"raw":"R0VUIC8gSFRUUC8xLjANCg0K"}"#;
    let r = read_line(minimal).unwrap();
    assert_eq!(&r.request.raw[..], b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.request.head_len, 18);
    assert_eq!(r.request.framing, BodyFraming::None);
    assert_eq!(r.request.end_ts_ns, 5);
}

#[test]
fn bad_lines_are_one_line_errors() {
    for (text, want) in [
        ("", "not a request record"),
        ("{}", "not a request record"),
        (
            r#"{"ts_ns":5,"src":"nope","dst":"[::1]:80","method":"GET","target":"/","version":"HTTP/1.0","host":null,"headers":[],"body_len":0,"raw":""}"#,
            "field src",
        ),
        (
            r#"{"ts_ns":5,"src":"1.2.3.4:5","dst":"[::1]:80","method":"GET","target":"/","version":"HTTP/1.0","host":null,"headers":[],"body_len":0,"raw":"!!"}"#,
            "field raw",
        ),
        (
            r#"{"ts_ns":5,"src":"1.2.3.4:5","dst":"[::1]:80","method":"GET","target":"/","version":"HTTP/7","host":null,"headers":[],"body_len":0,"raw":""}"#,
            "field version",
        ),
    ] {
        let e = read_line(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn writer_and_reader_agree_and_file_is_0600() {
    let dir = std::env::temp_dir().join(format!("mirror-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.jsonl");
    let _ = std::fs::remove_file(&path);
    let a = sample(b"POST /a?b=c HTTP/1.1\r\n\r\nhi");
    let mut b = a.clone();
    b.seq_in_flow = 4;
    let mut w = RecordWriter::create(path.to_str().unwrap(), false).unwrap();
    w.write(&a).unwrap();
    w.write(&b).unwrap();
    w.flush().unwrap();
    drop(w);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let back: Vec<_> = RecordReader::new(f).map(|r| r.unwrap()).collect();
    assert_eq!(back, vec![a.clone(), b]);
    // Now it exists: refused, one line naming it and the flag; untouched.
    let Err(e) = RecordWriter::create(path.to_str().unwrap(), false) else {
        panic!("an existing file must be refused");
    };
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
    // Overwritten on request, keeping the mode the operator gave it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut w = RecordWriter::create(path.to_str().unwrap(), true).unwrap();
    w.write(&a).unwrap();
    w.flush().unwrap();
    drop(w);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    assert_eq!(RecordReader::new(f).count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_lines_are_skipped_and_counted_and_the_rest_is_read() {
    let a = to_line(&sample(b"POST /a?b=c HTTP/1.1\r\n\r\nhi"));
    // A good record, a line that is not UTF-8, an overlong line, two good records.
    let mut input = format!("{a}\n").into_bytes();
    input.extend_from_slice(b"{\"src\": \"\xff\xfe\"}\n");
    input.extend_from_slice(&vec![b'x'; 5000]);
    input.push(b'\n');
    input.extend_from_slice(format!("{a}\n{a}\n").as_bytes());
    let results: Vec<_> = RecordReader::with_max_line(std::io::Cursor::new(input), 4096).collect();
    let good = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(good, 3, "{results:?}");
    assert!(
        matches!(results[1], Err(RecordError::NotUtf8 { line: 2 })),
        "{results:?}"
    );
    assert!(
        matches!(
            results[2],
            Err(RecordError::LineTooLong { line: 3, max: 4096 })
        ),
        "{results:?}"
    );
}

#[test]
fn an_endless_line_ends_the_input_in_bounded_time_and_memory() {
    // Like `--from /dev/zero`: no newline, ever.
    let zeros = std::io::BufReader::new(std::io::repeat(0));
    let mut r = RecordReader::with_max_line(zeros, 4096);
    match r.next() {
        Some(Err(RecordError::Io { source, .. })) => {
            assert!(source.to_string().contains("without end"), "{source}")
        }
        other => panic!("expected the input to end: {other:?}"),
    }
    assert!(
        r.buf.capacity() <= 2 * 4096 + 64 * 1024,
        "{}",
        r.buf.capacity()
    );
}

/// A request captured as an HTTP/2 stream is recorded in its HTTP/2 form (version, pseudo-header
/// fields) with its HTTP/1.1 form as `raw`, and reads back as the same request.
#[test]
fn http2_streams_are_recorded_in_their_http2_form_and_read_back() {
    let raw =
        b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: api:8080\r\ncontent-type: application/grpc\r\n\
                te: trailers\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0";
    let limits = crate::http::request::HttpLimits::default();
    let mut request =
        crate::http2::convert::request_from_http1(raw.to_vec(), 11, &limits).expect("a request");
    request.h2_stream = Some(7);
    request.end_ts_ns = 12;
    let c = CapturedRequest {
        src: "10.0.0.1:5000".parse().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        flow_id: 3,
        seq_in_flow: 1,
        request,
    };
    let line = to_line(&c);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["version"], "HTTP/2");
    assert_eq!(v["h2_stream"], 7);
    assert_eq!(
        v["headers"],
        serde_json::json!([
            [":method", "POST"],
            [":scheme", "http"],
            [":authority", "api:8080"],
            [":path", "/pkg.Svc/Call"],
            ["content-type", "application/grpc"],
            ["te", "trailers"],
            ["content-length", "5"]
        ])
    );
    assert_eq!(read_line(&line).unwrap(), c);
    let no_stream = line.replace(r#""h2_stream":7,"#, "");
    let e = read_line(&no_stream).unwrap_err().to_string();
    assert!(e.contains("h2_stream"), "{e}");
}
