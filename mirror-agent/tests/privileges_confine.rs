//! `privileges::confine` on a real process: the test runs itself again as a child (confining
//! the test harness itself would leak into other tests), the child confines itself and tries
//! what the seccomp filter refuses and what it must still allow.

use std::process::Command;

use mirror_agent::privileges::{self, Needs};

const CHILD_ENV: &str = "MIRROR_CONFINE_CHILD";

/// The child's side: confine, then probe. Prints one line per probe; exits non-zero on the
/// first surprise.
fn child() {
    let done = privileges::confine(Needs::default()).expect("confine");
    assert_eq!(done.seccomp, Ok(()), "seccomp installed");
    assert_eq!(done.kept, "none");
    let errno = || std::io::Error::last_os_error().raw_os_error();
    // Running a program: refused.
    let exec = Command::new("/bin/true").status();
    let refused = exec
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    assert!(refused, "execve must be refused: {exec:?}");
    println!("execve refused");
    // Loading a BPF program or making a map: refused with EPERM before the kernel looks at the
    // (null) attributes, which would otherwise be EFAULT or EINVAL.
    for cmd in [0, 5, 18] {
        // SAFETY: bpf(2) with a null attribute of size 0: nothing is read or written.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::null::<u8>(), 0) };
        assert_eq!((r, errno()), (-1, Some(libc::EPERM)), "bpf cmd {cmd}");
    }
    println!("bpf load refused");
    // Map lookups stay allowed (the agent reads its counters): the kernel answers, not the
    // filter.
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 1, std::ptr::null::<u8>(), 0) };
    assert_eq!(r, -1);
    assert_ne!(errno(), Some(libc::EPERM), "map lookups are not filtered");
    println!("bpf lookup allowed");
    // New namespaces: refused.
    // SAFETY: unshare takes flags only.
    let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    assert_eq!((r, errno()), (-1, Some(libc::EPERM)), "unshare");
    println!("unshare refused");
    // Files and sockets still work.
    std::fs::read_to_string("/proc/self/status").expect("read a file");
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a socket");
    println!("io allowed");
    // What the thread holds now.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for l in status.lines() {
        if l.starts_with("CapEff") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp:") {
            println!("{l}");
        }
    }
}

#[test]
fn confined_process_cannot_exec_load_bpf_or_unshare() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "confined_process_cannot_exec_load_bpf_or_unshare",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "execve refused",
        "bpf load refused",
        "bpf lookup allowed",
        "unshare refused",
        "io allowed",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(stdout.contains(line), "missing {line:?}: {stdout}");
    }
}
