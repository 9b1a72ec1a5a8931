//! Privileged: `https://` mirrors.
//!
//! Real TLS peers: `socat` (OpenSSL) terminates TLS in front of a recording mirror and forwards
//! the plaintext byte for byte, so the mirror records exactly what the agent sent inside TLS.
//! Certificates are made by `openssl` for the test: a CA, a server certificate for
//! `shadow.test` and 127.0.0.1, a second CA that signed nothing of ours, and a client
//! certificate for the mutual-TLS listener. Runs:
//! - `ca=` + `sni=`: every curl request reaches the mirror byte for byte through TLS;
//! - the wrong CA: no copy goes out, the handshakes fail as `certificate` (counted, in the
//!   exit table); `insecure=true` with the same wrong CA gets through;
//! - a listener that requires a client certificate: refused without `cert=`/`key=`
//!   (`alert`), served with them;
//! - an unreadable CA file: one line, exit status 2, before anything is attached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mirror_tests::agent::{Agent, run_to_exit};
use mirror_tests::mirror::{Behavior, MirrorTable, RecordingServer, assert_same_requests};
use mirror_tests::scenario::{
    Family, curl_ok, curl_request_shapes, start_agent, start_mirror, start_primary, stop_agent, url,
};
use mirror_tests::{ChildGuard, NetNs, TempDir, Topology, privileged_or_skip, wait_for_port};

const MIRROR_PORT: u16 = 9001;
const TLS_PORT: u16 = 9443;
const MTLS_PORT: u16 = 9444;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate `NAME.pem`/`NAME.key` signed by CA `by`, with `ext` (subjectAltName, usage).
fn leaf(dir: &Path, name: &str, by: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{by}.pem"),
            "-CAkey",
            &format!("{by}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// socat terminating TLS on `port` in `ns` and forwarding to the recording mirror; `verify`:
/// require a client certificate signed by this CA file.
fn tls_front(ns: &NetNs, dir: &Path, port: u16, verify: Option<&Path>) -> ChildGuard {
    let mut listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={}",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    );
    match verify {
        Some(ca) => listen.push_str(&format!(",verify=1,cafile={}", ca.display())),
        None => listen.push_str(",verify=0"),
    }
    let guard = ChildGuard::spawn(
        "socat",
        ns.command("socat")
            .arg(listen)
            .arg(format!("TCP:127.0.0.1:{MIRROR_PORT}")),
    );
    wait_for_port(ns, port, Duration::from_secs(5));
    guard
}

/// One request to the primary while `agent` runs with two mirrors of which one must refuse the
/// copy: exactly one copy reaches the recording mirror. Stops the agent; returns its exit table
/// and log.
fn one_copy(
    topo: &Topology,
    agent: &mut Agent,
    mirror: &RecordingServer,
    url: &str,
) -> (MirrorTable, String) {
    let before = mirror.count();
    curl_ok(topo, &[url]);
    let got = mirror.wait_for(
        before + 1,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let (_, table) = stop_agent(agent);
    let log = agent.log();
    assert_eq!(
        got.len(),
        before + 1,
        "exactly one mirror got the copy: {log}"
    );
    (table, log)
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn https_mirrors_verify_send_and_count_refusals() {
    let test = "https_mirrors_verify_send_and_count_refusals";
    if !privileged_or_skip(test) {
        return;
    }
    let dir = TempDir::new("tls");
    let certs: PathBuf = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    ca(&certs, "ca");
    ca(&certs, "other-ca");
    leaf(
        &certs,
        "server",
        "ca",
        "subjectAltName=DNS:shadow.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    leaf(&certs, "client", "ca", "extendedKeyUsage=clientAuth\n");

    let topo = Topology::new();
    let primary = start_primary(&topo, Family::V4);
    let mirror = start_mirror(&topo, Family::V4, MIRROR_PORT, Behavior::Ok);
    let _tls = tls_front(&topo.server, &certs, TLS_PORT, None);
    let _mtls = tls_front(&topo.server, &certs, MTLS_PORT, Some(&certs.join("ca.pem")));
    let base = url(primary.addr);

    // 1. The right CA and SNI: every request byte for byte.
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!(
                "https://127.0.0.1:{TLS_PORT},ca={},sni=shadow.test,name=tls",
                path(&certs, "ca.pem")
            ),
        ],
    );
    curl_request_shapes(&topo, dir.path(), &base, 100_000, 50_000);
    let sent = primary.wait_for(3, Duration::from_millis(200), Duration::from_secs(10));
    let got = mirror.wait_for(3, Duration::from_millis(500), Duration::from_secs(20));
    assert_same_requests("https mirror", &sent, &got);
    let (_, table) = stop_agent(&mut agent);
    let row = table.row("tls");
    assert_eq!((row.sent, row.status[0]), (3, 3), "{row:?}");
    assert!(row.balanced(), "{row:?}");

    // 2. A CA that did not sign the mirror's certificate: refused, counted; insecure passes.
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!(
                "https://127.0.0.1:{TLS_PORT},ca={},name=wrong-ca",
                path(&certs, "other-ca.pem")
            ),
            "--mirror".into(),
            format!(
                "https://127.0.0.1:{TLS_PORT},ca={},insecure=true,name=insecure",
                path(&certs, "other-ca.pem")
            ),
        ],
    );
    let (table, log) = one_copy(&topo, &mut agent, &mirror, &format!("{base}/one"));
    assert_eq!(table.row("insecure").status[0], 1, "{log}");
    let wrong = table.row("wrong-ca");
    assert_eq!((wrong.sent, wrong.errors), (0, 1), "{wrong:?}");
    assert!(
        log.lines().any(|l| l.contains("wrong-ca:")
            && l.contains("TLS handshakes failed: certificate 1,")),
        "{log}"
    );

    // 3. A mirror that requires a client certificate.
    let mut agent = start_agent(
        &topo,
        dir.path(),
        &[
            "--mirror".into(),
            format!(
                "https://127.0.0.1:{MTLS_PORT},ca={},name=no-cert",
                path(&certs, "ca.pem")
            ),
            "--mirror".into(),
            format!(
                "https://127.0.0.1:{MTLS_PORT},ca={},cert={},key={},name=with-cert",
                path(&certs, "ca.pem"),
                path(&certs, "client.pem"),
                path(&certs, "client.key")
            ),
        ],
    );
    let (table, log) = one_copy(&topo, &mut agent, &mirror, &format!("{base}/two"));
    assert_eq!(table.row("with-cert").status[0], 1, "{log}");
    // TLS 1.3: the client's side of the handshake completes before the server checks the
    // certificate, so the refusal (an alert) comes on the first read: the copy fails.
    let no_cert = table.row("no-cert");
    assert_eq!((no_cert.status[0], no_cert.errors), (0, 1), "{log}");
    assert!(
        log.lines().any(|l| l.contains("no-cert:")
            && l.contains("TLS handshakes failed: certificate 0, alert 1,")),
        "{log}"
    );

    // 4. An unreadable CA file: one line, exit 2, nothing attached.
    let (code, err) = run_to_exit(
        &[
            "--iface",
            "lo",
            "--port",
            "8080",
            "--mirror",
            "https://127.0.0.1:9443,ca=/nonexistent/ca.pem,name=x",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.contains("mirror `x`: ca /nonexistent/ca.pem:"),
        "{err}"
    );
    eprintln!(
        "{test}: byte-identical copies over TLS; wrong CA and missing client certificate refused and counted"
    );
}
