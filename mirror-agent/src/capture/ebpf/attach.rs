//! Attaching the classifiers and keeping track of what is attached.
//!
//! TCX links first (kernel >= 6.6): they live as long as the agent's file descriptor, so the
//! kernel detaches them when the agent exits, even on SIGKILL, and several programs share the hook
//! (another agent on the same interface keeps running). Older kernels get a clsact qdisc plus a
//! netlink filter; such a filter outlives the process, so each one is recorded in a state file
//! with the agent's PID, removed on drop, and filters of dead agents are removed at the next start
//! (filters of live agents are left alone).

use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::programs::SchedClassifier;
use aya::programs::links::{Link, LinkOrder};
use aya::programs::tc::{
    NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle, qdisc_add_clsact,
};
use mirror_common::programs;

use super::CaptureError;

/// Where the netlink fallback records its filters.
const STATE_DIR: &str = "/run/mirror-agent";

/// How the classifiers ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links, removed by the kernel when the agent exits.
    Tcx,
    /// clsact qdisc + netlink filter, removed by the agent on exit or at its next start.
    Netlink,
}

/// Which attachment the operator allows (`--attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachPolicy {
    /// TCX, or clsact + netlink where TCX is refused (kernels before 6.6).
    #[default]
    Auto,
    /// TCX only: fail rather than leave filters that could outlive a killed agent.
    Tcx,
    /// clsact + netlink only: for hosts whose other TC users expect classic filters.
    Tc,
}

impl AttachPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "tcx" => Some(Self::Tcx),
            "tc" => Some(Self::Tc),
            _ => None,
        }
    }
}

/// What [`attach`] attached. TCX links are owned by the programs inside `Ebpf` and go with it;
/// netlink filters are owned here and detached on drop together with their state files.
pub struct Attached {
    mode: AttachMode,
    netlink: Vec<(SchedClassifierLink, PathBuf)>,
}

impl Attached {
    pub fn mode(&self) -> AttachMode {
        self.mode
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for (link, state) in self.netlink.drain(..) {
            if let Err(e) = link.detach() {
                tracing::warn!(error = %e, "detaching the tc filter failed");
            }
            let _ = std::fs::remove_file(state);
        }
    }
}

/// Index of `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32, CaptureError> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| CaptureError::UnknownInterface(iface.to_owned()))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(CaptureError::UnknownInterface(iface.to_owned()));
    }
    Ok(index)
}

/// Bytes of link-layer header the classifier sees before IP on `iface`: 14 on Ethernet-like
/// devices (lo and veth included), 0 on L3 devices (tun, wireguard, ipip).
pub fn l2_len(iface: &str) -> Result<u64, CaptureError> {
    ifindex(iface)?;
    let hw_type = hardware_type(iface).map_err(|source| CaptureError::Io {
        what: "reading the interface hardware type",
        source,
    })?;
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    Ok(if matches!(hw_type, ARPHRD_ETHER | ARPHRD_LOOPBACK) {
        14
    } else {
        0
    })
}

/// `SIOCGIFHWADDR`: the ARPHRD type, from the caller's network namespace (sysfs may show
/// another namespace's view).
fn hardware_type(iface: &str) -> std::io::Result<u16> {
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: fd is a socket and req a valid ifreq with the name set.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(err);
    }
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// Loads and attaches the ingress classifier, and the egress one when `egress` is set, as
/// `policy` allows.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    egress: bool,
    policy: AttachPolicy,
) -> Result<Attached, CaptureError> {
    let mut wanted = vec![(programs::INGRESS, TcAttachType::Ingress)];
    if egress {
        wanted.push((programs::EGRESS, TcAttachType::Egress));
    }
    let mut attached = Attached {
        mode: AttachMode::Tcx,
        netlink: Vec::new(),
    };
    if policy == AttachPolicy::Tc {
        attached.mode = AttachMode::Netlink;
        remove_stale_filters(iface);
        // Fails when clsact is already there, which is what we want.
        let _ = qdisc_add_clsact(iface);
    }
    for (name, hook) in wanted {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing(name))?
            .try_into()
            .map_err(|source| CaptureError::Program { name, source })?;
        program
            .load()
            .map_err(|source| CaptureError::Program { name, source })?;
        let tcx = if attached.mode == AttachMode::Tcx {
            program.attach_with_options(
                iface,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
        } else {
            Err(aya::programs::ProgramError::AlreadyAttached)
        };
        match tcx {
            Ok(_) => {}
            Err(source) if policy == AttachPolicy::Tcx => {
                return Err(CaptureError::Program { name, source });
            }
            Err(tcx_error) => {
                if attached.mode == AttachMode::Tcx {
                    tracing::info!(error = %tcx_error, "TCX attach failed, falling back to clsact + netlink");
                    attached.mode = AttachMode::Netlink;
                    remove_stale_filters(iface);
                    // Fails when clsact is already there, which is what we want.
                    let _ = qdisc_add_clsact(iface);
                }
                let id = program
                    .attach_with_options(
                        iface,
                        hook,
                        TcAttachOptions::Netlink(NlOptions::default()),
                    )
                    .map_err(|source| CaptureError::Program { name, source })?;
                let link = program
                    .take_link(id)
                    .map_err(|source| CaptureError::Program { name, source })?;
                let state = record_filter(iface, hook, &link);
                attached.netlink.push((link, state));
            }
        }
    }
    Ok(attached)
}

fn hook_name(hook: TcAttachType) -> &'static str {
    if matches!(hook, TcAttachType::Egress) {
        "egress"
    } else {
        "ingress"
    }
}

/// Writes `/run/mirror-agent/tc-<iface>-<hook>-<prio>-<handle>` holding our PID.
fn record_filter(iface: &str, hook: TcAttachType, link: &SchedClassifierLink) -> PathBuf {
    let prio = link.priority().unwrap_or(0);
    let handle: u32 = link.handle().map(u32::from).unwrap_or(0);
    let path = Path::new(STATE_DIR).join(format!("tc-{iface}-{}-{prio}-{handle}", hook_name(hook)));
    let written = std::fs::create_dir_all(STATE_DIR)
        .and_then(|()| std::fs::write(&path, std::process::id().to_string()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the tc filter; a crash would leave it attached");
    }
    path
}

/// Detaches filters recorded by agents that are no longer running.
fn remove_stale_filters(iface: &str) {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    let prefix = format!("tc-{iface}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid: i32 = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: signal 0 only checks for existence.
        if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 {
            continue; // another agent, alive: leave its filter alone
        }
        let parts: Vec<&str> = rest.split('-').collect();
        if let [hook, prio, handle] = parts[..] {
            let hook = if hook == "egress" {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            if let (Ok(prio), Ok(handle)) = (prio.parse::<u16>(), handle.parse::<u32>()) {
                match SchedClassifierLink::attached(iface, hook, prio, TcHandle::from(handle), None)
                    .map_err(aya::programs::ProgramError::from)
                    .and_then(|l| l.detach())
                {
                    Ok(()) => {
                        tracing::info!(file = %name, "removed a tc filter left by a killed agent")
                    }
                    Err(e) => {
                        tracing::debug!(file = %name, error = %e, "stale tc filter already gone")
                    }
                }
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
}
