//! Least privilege: once the agent has done what needs privileges (loading and attaching the
//! classifiers, opening its input), it gives up everything its running mode does not need,
//! before it reads a single byte of untrusted input.
//!
//! Owns the decision (which capabilities each mode keeps, [`Needs::kept`]) and the
//! confinement itself ([`confine`]): the capability sets reduced to that (bounding, ambient
//! and inheritable emptied, so nothing can be regained through `execve`), `no_new_privs`, and
//! a seccomp filter that refuses what a compromised parser would need to escalate or escape.
//! Not owned here: when to call it (the run modes in `app`, on the main thread before any other
//! thread exists: capabilities are per thread, and threads inherit them when created).
//!
//! Why a deny-list and not an allow-list for seccomp: the agent's syscalls come from tokio,
//! hyper, glibc and the OpenTelemetry exporters, and differ between library and kernel
//! versions; an allow-list that misses one kills the agent in production. The deny-list
//! refuses (with `EPERM`, not a kill) exactly what the agent never does after setup and an
//! attacker would want: running programs, tracing other processes, loading BPF programs or
//! kernel modules, mounting, entering or making namespaces, keyrings, perf events.

use std::collections::{BTreeMap, HashSet};

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// What the running mode still needs once set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Live capture with classic tc filters (`--attach tc`, or the auto fallback on kernels
    /// without TCX): removing them (and the clsact qdisc) at exit is a netlink request that
    /// needs `CAP_NET_ADMIN`. TCX links go with their file descriptors.
    pub detach_tc_filters: bool,
    /// Live capture on a kernel before 6.5, where every bpf(2) command, including reading and
    /// updating the maps the agent already holds, needs `CAP_BPF` (`CAP_SYS_ADMIN` before
    /// 5.8) while unprivileged BPF is disabled. From 6.5 map commands on an open map need none.
    pub bpf_map_access: Option<BpfCap>,
    /// The metrics endpoint binds a port below 1024 (it binds after confinement).
    pub bind_low_port: bool,
    /// Live capture following `--iface` globs: the programs already loaded are attached to
    /// interfaces as they appear, which needs `CAP_NET_ADMIN` and `CAP_BPF`, and the bpf(2)
    /// commands that make links. Loading anything new stays refused.
    pub attach_later: bool,
    /// `--tls follow`: new listeners' libssl files are found through other processes' procfs
    /// (`CAP_SYS_PTRACE`) and probed as they appear: uprobe events need `CAP_SYS_ADMIN` and
    /// `perf_event_open`, linking the loaded programs to them the bpf(2) attach commands.
    pub tls_attach_later: bool,
}

/// Which capability grants BPF map access on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfCap {
    /// Linux 5.8 to 6.4.
    Bpf,
    /// Before 5.8 (no `CAP_BPF`).
    SysAdmin,
}

impl Needs {
    /// What live capture needs on kernel `version` (`None`: unknown, assumed old) with the
    /// classifiers attached as tc filters or not.
    pub fn live(version: Option<(u32, u32)>, tc_filters: bool) -> Self {
        let bpf_map_access = match version {
            Some(v) if v >= (6, 5) => None,
            Some(v) if v >= (5, 8) => Some(BpfCap::Bpf),
            _ => Some(BpfCap::SysAdmin),
        };
        Self {
            detach_tc_filters: tc_filters,
            bpf_map_access,
            bind_low_port: false,
            attach_later: false,
            tls_attach_later: false,
        }
    }

    /// The capabilities kept.
    pub fn kept(&self) -> Vec<Capability> {
        let mut kept = Vec::new();
        if self.detach_tc_filters || self.attach_later {
            kept.push(Capability::CAP_NET_ADMIN);
        }
        match self.bpf_map_access {
            Some(BpfCap::Bpf) => kept.push(Capability::CAP_BPF),
            Some(BpfCap::SysAdmin) => kept.push(Capability::CAP_SYS_ADMIN),
            None if self.attach_later => kept.push(Capability::CAP_BPF),
            None => {}
        }
        if self.bind_low_port {
            kept.push(Capability::CAP_NET_BIND_SERVICE);
        }
        if self.tls_attach_later {
            if !kept.contains(&Capability::CAP_SYS_ADMIN) {
                kept.push(Capability::CAP_SYS_ADMIN);
            }
            kept.push(Capability::CAP_SYS_PTRACE);
        }
        kept
    }

    /// The kept set as a list for logs and `check` (`none` when empty).
    pub fn describe(&self) -> String {
        let kept = self.kept();
        if kept.is_empty() {
            "none".into()
        } else {
            kept.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// What [`confine`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Capabilities left in the effective and permitted sets.
    pub kept: String,
    /// The seccomp filter is installed (on every thread); `Err` says why not.
    pub seccomp: Result<(), String>,
    /// Threads of the process when confined (1 is the design: see the module docs).
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("cannot drop capabilities ({what}): {source}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Reduces this process to `needs`: capability sets, `no_new_privs`, seccomp. Call it on the
/// main thread before other threads exist (it says how many there were). Dropping capabilities
/// the process does not have is not an error (an unprivileged `--pcap` run keeps none anyway).
pub fn confine(needs: Needs) -> Result<Confinement, ConfineError> {
    let threads = thread_count();
    if threads > 1 {
        // Capabilities are per thread: the others keep theirs. A bug in the caller, said
        // loudly rather than hidden.
        tracing::warn!(
            threads,
            "confining with other threads running: they keep their capabilities"
        );
    }
    drop_capabilities(&needs)?;
    set_no_new_privs()?;
    let seccomp = install_seccomp(needs.attach_later, needs.tls_attach_later);
    if let Err(e) = &seccomp {
        tracing::warn!(error = %e, "seccomp filter not installed");
    }
    let done = Confinement {
        kept: needs.describe(),
        seccomp,
        threads,
    };
    tracing::info!(
        capabilities = %done.kept,
        seccomp = done.seccomp.is_ok(),
        "privileges dropped"
    );
    Ok(done)
}

fn drop_capabilities(needs: &Needs) -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Caps { what, source };
    let kept: HashSet<Capability> = needs.kept().into_iter().collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("reading permitted"))?;
    // The bounding set limits what an execve could grant; emptying it needs CAP_SETPCAP, which
    // an unprivileged process does not have (and then has nothing to drop).
    if permitted.contains(&Capability::CAP_SETPCAP) {
        caps::clear(None, CapSet::Bounding).map_err(err("clearing the bounding set"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing the inheritable set"))?;
    // Only what is held can be kept.
    let kept: HashSet<Capability> = kept.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(err("setting the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err("setting the permitted set"))?;
    Ok(())
}

fn set_no_new_privs() -> Result<(), ConfineError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Threads of this process now (`/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// bpf(2) commands refused after setup: making maps, programs or BTF. Reading and updating the
/// maps already held, and detaching, stay allowed.
const BPF_REFUSED: &[u64] = &[
    0,  // BPF_MAP_CREATE
    5,  // BPF_PROG_LOAD
    18, // BPF_BTF_LOAD
];

/// bpf(2) commands that attach programs: refused after setup too, unless the agent attaches
/// its loaded programs to interfaces as they appear ([`Needs::attach_later`]).
const BPF_ATTACH: &[u64] = &[
    8,  // BPF_PROG_ATTACH
    28, // BPF_LINK_CREATE
];

/// Syscalls refused outright after setup.
fn refused_syscalls() -> Vec<i64> {
    vec![
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_open_by_handle_at,
        libc::SYS_userfaultfd,
        libc::SYS_perf_event_open,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
    ]
}

/// The seccomp program: everything allowed but the refused syscalls and bpf commands, which
/// fail with `EPERM`. `allow_attach`: the attaching commands stay allowed; `allow_uprobes`:
/// those and `perf_event_open` (`--tls follow`).
pub fn seccomp_program(allow_attach: bool, allow_uprobes: bool) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = refused_syscalls()
        .into_iter()
        .filter(|&nr| !(allow_uprobes && nr == libc::SYS_perf_event_open))
        .map(|nr| (nr, Vec::new()))
        .collect();
    let attach: &[u64] = if allow_attach || allow_uprobes {
        &[]
    } else {
        BPF_ATTACH
    };
    let bpf_rules = BPF_REFUSED
        .iter()
        .chain(attach)
        .map(|&cmd| {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd)
                .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_bpf, bpf_rules);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs [`seccomp_program`] on every thread (TSYNC). Needs `no_new_privs` (set before).
fn install_seccomp(allow_attach: bool, allow_uprobes: bool) -> Result<(), String> {
    let program = seccomp_program(allow_attach, allow_uprobes)?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
