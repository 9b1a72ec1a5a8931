//! Attaching the programs and keeping track of what is attached: TC classifiers on interfaces
//! ([`Interfaces`]), or `cgroup_skb` programs on cgroup v2 directories ([`cgroup`]).
//!
//! On interfaces, TCX links first (kernel >= 6.6): they live as long as the agent's file descriptor, so the
//! kernel detaches them when the agent exits, even on SIGKILL, and several programs share the hook
//! (another agent on the same interface keeps running). Where TCX is refused (older kernels), or
//! with `--attach tc`, a clsact qdisc plus a netlink filter; such a filter outlives the process,
//! so the agent removes its own on exit and the next agent removes a killed one's, recognising
//! them with certainty and leaving every other filter alone ([`tc`]). [`netlink`] holds the
//! rtnetlink requests. Each interface's link-layer header length goes where the classifiers read
//! it ([`LinkLayerLengths`]) before anything is attached to it, and leaves after it is detached.

pub mod cgroup;
pub mod follow;
mod netlink;
mod tc;

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData};
use aya::programs::SchedClassifier;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions, TcAttachType};

use self::follow::{IfacePatterns, LinkEvent};
use self::netlink::Hook;
use self::tc::{OwnProgram, TcAttachment};
use super::CaptureError;

/// How the classifiers ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links, removed by the kernel when the agent exits.
    Tcx,
    /// clsact qdisc + netlink filter, removed by the agent on exit or by the next agent started
    /// in the same network namespace.
    Netlink,
    /// `cgroup_skb` links on cgroup directories, removed by the kernel when the agent exits.
    Cgroup,
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

/// Loads the classifiers named `programs` (ingress, egress) into the kernel: the egress one only
/// when `egress` is set. Every program is loaded before anything is attached: the tc record names
/// their ids and tags before the first filter exists, so no filter is ever unrecorded.
pub fn load(
    ebpf: &mut Ebpf,
    programs: (&'static str, &'static str),
    egress: bool,
) -> Result<(), CaptureError> {
    for (name, _) in wanted(programs, egress) {
        classifier(ebpf, name)?
            .load()
            .map_err(|source| CaptureError::Program { name, source })?;
    }
    Ok(())
}

fn wanted(programs: (&'static str, &'static str), egress: bool) -> Vec<(&'static str, Hook)> {
    let mut wanted = vec![(programs.0, Hook::Ingress)];
    if egress {
        wanted.push((programs.1, Hook::Egress));
    }
    wanted
}

/// The link-layer header length of each attached interface, where the classifiers read it:
/// an array slot for an ifindex below [`mirror_common::IFACE_SLOTS`] (the value is the length
/// plus one, 0 meaning none), a hash map entry above.
pub struct LinkLayerLengths {
    slots: Array<MapData, u32>,
    large: HashMap<MapData, u32, u32>,
}

impl LinkLayerLengths {
    pub fn new(slots: Array<MapData, u32>, large: HashMap<MapData, u32, u32>) -> Self {
        Self { slots, large }
    }

    fn set(&mut self, ifindex: u32, l2_len: u32) -> Result<(), CaptureError> {
        if ifindex < mirror_common::IFACE_SLOTS {
            self.slots
                .set(ifindex, l2_len + 1, 0)
                .map_err(|source| CaptureError::Map {
                    name: mirror_common::maps::IFACE_SLOTS,
                    source,
                })
        } else {
            self.large
                .insert(ifindex, l2_len, 0)
                .map_err(|source| CaptureError::Map {
                    name: mirror_common::maps::IFACES,
                    source,
                })
        }
    }

    fn clear(&mut self, ifindex: u32) {
        let _ = if ifindex < mirror_common::IFACE_SLOTS {
            self.slots.set(ifindex, 0, 0)
        } else {
            self.large.remove(&ifindex)
        };
    }
}

/// How one interface is attached: TCX links (owned by the programs in `Ebpf`, detached by id) or
/// tc filters (owned by the [`TcAttachment`], removed on drop).
enum IfaceLinks {
    Tcx(Vec<(&'static str, SchedClassifierLinkId)>),
    Tc(TcAttachment),
}

/// An interface the classifiers are attached to.
struct AttachedIface {
    name: String,
    links: IfaceLinks,
}

/// What following `--iface` globs did, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    /// Interfaces attached to, at the start and later.
    pub attached: u64,
    /// Interfaces detached from because they went away or were renamed out of the patterns.
    pub detached: u64,
    /// Interfaces that matched but could not be attached to (logged with the reason).
    pub attach_errors: u64,
    /// Times link notifications were lost and the whole list was compared again.
    pub resyncs: u64,
}

/// The interfaces the classifiers are attached to, and how. Drop it before the `Ebpf`: tc
/// filters are removed on drop.
pub struct Interfaces {
    programs: (&'static str, &'static str),
    egress: bool,
    policy: AttachPolicy,
    /// Where the classifiers find each interface's link-layer header length.
    l2: LinkLayerLengths,
    attached: BTreeMap<u32, AttachedIface>,
    /// How the first interface attached; the rest follow it.
    mode: Option<AttachMode>,
    stats: IfaceStats,
}

impl Interfaces {
    pub fn new(
        l2: LinkLayerLengths,
        programs: (&'static str, &'static str),
        egress: bool,
        policy: AttachPolicy,
    ) -> Self {
        Self {
            programs,
            egress,
            policy,
            l2,
            attached: BTreeMap::new(),
            mode: None,
            stats: IfaceStats::default(),
        }
    }

    /// Interfaces attached now.
    pub fn len(&self) -> usize {
        self.attached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attached.is_empty()
    }

    pub fn stats(&self) -> IfaceStats {
        self.stats
    }

    /// Attaches to every interface of `patterns` that exists and is not attached yet, and
    /// detaches from those gone or no longer matching: at the start, and after lost
    /// notifications. A failure is logged and counted; the others go on.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, patterns: &IfacePatterns) {
        let now = match follow::interfaces_now() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the interfaces");
                return;
            }
        };
        let stale: Vec<u32> = self
            .attached
            .iter()
            .filter(|(index, a)| !now.iter().any(|(i, n)| i == *index && *n == a.name))
            .map(|(index, _)| *index)
            .collect();
        for index in stale {
            self.gone(ebpf, index, "gone or renamed");
        }
        for (index, name) in now {
            self.present(ebpf, patterns, index, &name);
        }
    }

    /// Acts on one link notification.
    pub fn follow(&mut self, ebpf: &mut Ebpf, patterns: &IfacePatterns, event: LinkEvent) {
        match event {
            LinkEvent::Present { index, name } => {
                if self.attached.get(&index).is_some_and(|a| a.name != name) {
                    self.gone(ebpf, index, "renamed");
                }
                self.present(ebpf, patterns, index, &name);
            }
            LinkEvent::Gone { index } => self.gone(ebpf, index, "gone"),
            LinkEvent::Resync => {
                self.stats.resyncs += 1;
                tracing::warn!("link notifications were lost; comparing every interface");
                self.reconcile(ebpf, patterns);
            }
        }
    }

    fn present(&mut self, ebpf: &mut Ebpf, patterns: &IfacePatterns, index: u32, name: &str) {
        if self.attached.contains_key(&index) || !patterns.matches(name) {
            return;
        }
        match self.attach(ebpf, name) {
            Ok(_) => {
                self.stats.attached += 1;
                tracing::info!(iface = name, ifindex = index, mode = ?self.mode(), "attached to a new interface");
            }
            // Gone again before it could be attached: its removal follows.
            Err(CaptureError::UnknownInterface(_)) => {}
            Err(e) => {
                self.stats.attach_errors += 1;
                tracing::warn!(iface = name, ifindex = index, error = %e, "cannot attach to the interface");
            }
        }
    }

    fn gone(&mut self, ebpf: &mut Ebpf, index: u32, why: &str) {
        if let Some(name) = self.detach(ebpf, index) {
            self.stats.detached += 1;
            tracing::info!(iface = %name, ifindex = index, why, "detached from an interface");
        }
    }

    /// How the classifiers are attached (TCX until the first interface says otherwise).
    pub fn mode(&self) -> AttachMode {
        self.mode.unwrap_or(AttachMode::Tcx)
    }

    /// Attaches the classifiers [`load`] loaded to `iface`, as the policy allows; returns its
    /// index. Once one interface is attached, the others use the same mode.
    pub fn attach(&mut self, ebpf: &mut Ebpf, iface: &str) -> Result<u32, CaptureError> {
        let index = ifindex(iface)?;
        if self.attached.contains_key(&index) {
            return Ok(index);
        }
        self.l2.set(index, l2_len(iface)? as u32)?;
        let result = self.attach_links(ebpf, iface, index);
        match result {
            Ok(links) => {
                self.attached.insert(
                    index,
                    AttachedIface {
                        name: iface.to_owned(),
                        links,
                    },
                );
                Ok(index)
            }
            Err(e) => {
                self.l2.clear(index);
                Err(e)
            }
        }
    }

    fn attach_links(
        &mut self,
        ebpf: &mut Ebpf,
        iface: &str,
        index: u32,
    ) -> Result<IfaceLinks, CaptureError> {
        let wanted = wanted(self.programs, self.egress);
        let try_tcx = match self.mode {
            Some(AttachMode::Tcx) => true,
            Some(_) => false,
            None => self.policy != AttachPolicy::Tc,
        };
        if try_tcx {
            match attach_tcx(ebpf, iface, &wanted) {
                Ok(links) => {
                    self.mode = Some(AttachMode::Tcx);
                    return Ok(IfaceLinks::Tcx(links));
                }
                Err(e) if self.policy == AttachPolicy::Tcx || self.mode.is_some() => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::info!(error = %e, "TCX attach failed, falling back to clsact + netlink")
                }
            }
        }
        let mut own = Vec::new();
        for &(name, hook) in &wanted {
            let info = classifier(ebpf, name)?
                .info()
                .map_err(|source| CaptureError::Program { name, source })?;
            own.push(OwnProgram {
                hook,
                id: info.id(),
                tag: info.tag(),
                name: name.to_owned(),
            });
        }
        let mut tc = TcAttachment::prepare(iface, index, own.clone())?;
        for (&(name, _), program) in wanted.iter().zip(&own) {
            let classifier = classifier(ebpf, name)?;
            let fd = classifier
                .fd()
                .map_err(|source| CaptureError::Program { name, source })?;
            tc.attach(fd.as_fd(), program)?;
        }
        self.mode = Some(AttachMode::Netlink);
        Ok(IfaceLinks::Tc(tc))
    }

    /// Detaches the classifiers from the interface with this index (gone or no longer wanted);
    /// returns its name. Nothing happens for an interface not attached.
    pub fn detach(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Option<String> {
        let iface = self.attached.remove(&ifindex)?;
        match iface.links {
            IfaceLinks::Tcx(links) => {
                for (name, id) in links {
                    if let Ok(program) = classifier(ebpf, name)
                        && let Err(e) = program.detach(id)
                    {
                        tracing::debug!(iface = %iface.name, error = %e, "TCX detach");
                    }
                }
            }
            // Removes its filters (none when the interface is gone) and its record.
            IfaceLinks::Tc(tc) => drop(tc),
        }
        self.l2.clear(ifindex);
        Some(iface.name)
    }
}

/// Attaches every program as a TCX link, or none: on a failure the links already made are
/// detached, so the tc fallback does not run a program twice on one hook.
fn attach_tcx(
    ebpf: &mut Ebpf,
    iface: &str,
    wanted: &[(&'static str, Hook)],
) -> Result<Vec<(&'static str, SchedClassifierLinkId)>, CaptureError> {
    let mut done = Vec::new();
    for &(name, hook) in wanted {
        let attach_type = match hook {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        };
        let result = classifier(ebpf, name)?.attach_with_options(
            iface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        match result {
            Ok(id) => done.push((name, id)),
            Err(source) => {
                for (name, id) in done {
                    if let Ok(program) = classifier(ebpf, name) {
                        let _ = program.detach(id);
                    }
                }
                return Err(CaptureError::Program { name, source });
            }
        }
    }
    Ok(done)
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })
}
