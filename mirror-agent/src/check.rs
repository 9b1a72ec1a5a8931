//! `mirror-agent check`: a preflight table of what live capture needs from this node, and the
//! privilege probes the live runner uses to fail early with one clear line.

use std::fmt::Write as _;

/// Capability bits (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;
pub const CAP_PERFMON: u32 = 38;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// `None` when the process may load and attach TC programs, else the one-line reason.
pub fn missing_privileges() -> Option<String> {
    let caps = effective_caps();
    // CAP_SYS_ADMIN covers CAP_BPF on every kernel.
    let bpf = has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN);
    let net = has(caps, CAP_NET_ADMIN);
    match (bpf, net) {
        (true, true) => None,
        _ => {
            let mut missing = Vec::new();
            if !bpf {
                missing.push("CAP_BPF");
            }
            if !net {
                missing.push("CAP_NET_ADMIN");
            }
            Some(format!(
                "live capture needs root or {} (missing: {})",
                "CAP_BPF+CAP_NET_ADMIN",
                missing.join(", ")
            ))
        }
    }
}

/// `None` when the process may attach the TLS programs, else the one-line reason. The kernel's
/// uprobe events (perf_event_open on the `uprobe` PMU) need CAP_SYS_ADMIN: CAP_PERFMON is
/// refused with EACCES (measured on 6.18); so does mounting tracefs.
pub fn missing_tls_privileges() -> Option<String> {
    (!has(effective_caps(), CAP_SYS_ADMIN)).then(|| {
        "--tls needs CAP_SYS_ADMIN for its uprobes (the kernel refuses them with CAP_PERFMON \
         alone), and CAP_SYS_PTRACE to find other processes' libssl and open connections"
            .to_owned()
    })
}

/// Whether the kernel has the bpf(2) syscall: a call with an empty attribute fails with EINVAL
/// or EFAULT when it exists, ENOSYS when the kernel was built without it.
pub fn bpf_syscall_available() -> bool {
    // SAFETY: BPF_MAP_CREATE (0) with a null attribute of size 0: the kernel rejects it
    // without touching memory.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) };
    !(r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// Kernel release, e.g. "6.18.44".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of the running kernel.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

struct Row {
    item: &'static str,
    ok: bool,
    required: bool,
    detail: String,
}

/// Prints the preflight table; returns the process exit status (0 when live capture can run).
pub fn run() -> i32 {
    let caps = effective_caps();
    let version = kernel_version();
    let tcx = version.is_some_and(|v| v >= (6, 6));
    let cgroup2 = crate::capture::ebpf::cgroup2_mount();
    let rows = [
        Row {
            item: "kernel",
            ok: version.is_some_and(|v| v >= (5, 8)),
            required: true,
            detail: format!("{} (ring buffer needs >= 5.8)", kernel_release()),
        },
        Row {
            item: "bpf syscall",
            ok: bpf_syscall_available(),
            required: true,
            detail: "bpf(2)".into(),
        },
        Row {
            item: "BTF",
            ok: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            required: false,
            detail: "/sys/kernel/btf/vmlinux".into(),
        },
        Row {
            item: "TCX",
            ok: tcx,
            required: false,
            detail: if tcx {
                "links detached by the kernel on exit".into()
            } else {
                "kernel < 6.6: clsact + netlink fallback".into()
            },
        },
        Row {
            item: "cgroup v2",
            ok: cgroup2.is_some(),
            required: false,
            detail: match &cgroup2 {
                Some(m) => format!("--cgroup takes directories under {}", m.display()),
                None => "not mounted: --cgroup cannot be used".into(),
            },
        },
        Row {
            item: "CAP_BPF",
            ok: has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN),
            required: true,
            detail: "load programs and maps (or CAP_SYS_ADMIN)".into(),
        },
        Row {
            item: "CAP_NET_ADMIN",
            ok: has(caps, CAP_NET_ADMIN),
            required: true,
            detail: "attach to an interface or a cgroup".into(),
        },
        Row {
            item: "CAP_PERFMON",
            ok: has(caps, CAP_PERFMON) || has(caps, CAP_SYS_ADMIN),
            required: false,
            detail: "pointer arithmetic checks relaxed for the verifier".into(),
        },
        Row {
            item: "eBPF object",
            ok: crate::capture::ebpf::has_object(),
            required: true,
            detail: "embedded at build time (cargo xtask build-ebpf)".into(),
        },
    ];
    let seccomp = crate::privileges::seccomp_program(false, false);
    let (copy_ok, copy_detail) = capture_copy();
    let (tls_ok, tls_detail) = crate::capture::ebpf::tls::mechanisms();
    let rows = rows.into_iter().chain([
        Row {
            item: "capture copy",
            ok: copy_ok,
            required: false,
            detail: copy_detail,
        },
        Row {
            item: "TLS (--tls)",
            ok: tls_ok,
            required: false,
            detail: tls_detail,
        },
        Row {
            item: "seccomp",
            ok: seccomp.is_ok() && seccomp_available(),
            required: false,
            detail: match &seccomp {
                Ok(_) if seccomp_available() => {
                    "after setup: no exec, ptrace, BPF loading, modules, mounts, namespaces".into()
                }
                Ok(_) => "the kernel has no seccomp filter mode: runs without".into(),
                Err(e) => format!("filter does not build here: {e}"),
            },
        },
        Row {
            item: "keeps (live)",
            ok: true,
            required: false,
            detail: kept_line(crate::privileges::Needs::live(version, !tcx), tcx),
        },
        Row {
            item: "keeps (other)",
            ok: true,
            required: false,
            detail: "--pcap, --from: none, once the input is open".into(),
        },
    ]);
    let mut out = String::new();
    let _ = writeln!(out, "{:<14} {:<8} detail", "check", "status");
    let mut missing = Vec::new();
    for r in rows {
        let status = match (r.ok, r.required) {
            (true, _) => "ok",
            (false, true) => "MISSING",
            (false, false) => "no",
        };
        if !r.ok && r.required {
            missing.push(r.item);
        }
        let _ = writeln!(out, "{:<14} {:<8} {}", r.item, status, r.detail);
    }
    print!("{out}");
    if missing.is_empty() {
        println!("live capture: ready");
        0
    } else {
        println!("live capture: not possible, missing {}", missing.join(", "));
        1
    }
}

/// Which classifier variant live capture would run here: the kernel is asked by loading the
/// programs (not attaching them), which needs the BPF privileges and the embedded object.
fn capture_copy() -> (bool, String) {
    use crate::capture::ebpf::{CopyPolicy, has_object, probe_copy_path};
    if !has_object() || missing_privileges().is_some() {
        return (
            false,
            "not probed: loading the classifiers needs the object and CAP_BPF".into(),
        );
    }
    match probe_copy_path(CopyPolicy::Auto) {
        Ok(path) => (true, path.describe().into()),
        Err(e) => (
            false,
            format!(
                "neither classifier variant loads: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        ),
    }
}

/// What live capture keeps after attaching, for the check table.
fn kept_line(needs: crate::privileges::Needs, tcx: bool) -> String {
    let how = if tcx { "TCX" } else { "tc filters" };
    format!(
        "after attaching ({how}): {}; with --attach tc: {}; following --iface globs: {}; with \
         --tls follow: {} (and CAP_NET_BIND_SERVICE for a metrics port below 1024)",
        needs.describe(),
        crate::privileges::Needs {
            detach_tc_filters: true,
            ..needs
        }
        .describe(),
        crate::privileges::Needs {
            attach_later: true,
            ..needs
        }
        .describe(),
        crate::privileges::Needs {
            tls_attach_later: true,
            ..needs
        }
        .describe()
    )
}

/// Whether the kernel supports seccomp filters (`Seccomp:` in /proc/self/status, and
/// `PR_GET_SECCOMP` answering).
fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    r >= 0
}
