//! The classic tc attachment (clsact qdisc + bpf filter): `--attach tc`, and the fallback where
//! TCX is refused (kernels before 6.6). Such a filter outlives the agent, so the agent removes its
//! own on a clean exit and the next agent removes those of a killed one. Nobody else's filter or
//! qdisc is ever touched. This module owns how an agent knows what is its own.
//!
//! - A filter is an agent's when it is a `bpf` filter named `mirror-agent:<program>` (the marker
//!   the agent sets when it adds the filter) whose program id and tag are the ones the agent
//!   recorded when it loaded the program. The kernel never gives a program the id of another that
//!   still exists, a filter holds its program, and ids are global rather than per namespace: while
//!   such a filter exists, its program id is the agent's own. A priority/handle pair or an
//!   interface name identify nothing: another filter can take the pair once ours is gone, and the
//!   same interface name exists in every network namespace.
//! - Records are files in [`RECORD_DIR`], one per agent and interface, written before the first
//!   filter is added. A record holds the network namespace (st_dev/st_ino of the namespace file,
//!   as `lsns` shows them), the ifindex, the programs, and whether the agent created the clsact
//!   qdisc.
//! - An agent holds an exclusive flock on its record while it runs. The kernel releases the lock
//!   when the process ends, even on SIGKILL, so a record that can be locked belongs to a dead
//!   agent. Unlike a PID, a lock cannot be mistaken for a reused PID or a process in another PID
//!   namespace.
//! - At start, an agent removes the filters recorded by dead agents in its own network namespace
//!   (an ifindex means something only there), then their records. A record from another
//!   namespace is left for an agent of that namespace, unless none of its programs exists any
//!   more: then its filters are gone everywhere and the record is dropped.
//! - A clean exit removes the agent's filters and, when the agent created the clsact qdisc and no
//!   filter of anyone is left on it, the qdisc. A killed agent's qdisc is removed the same way by
//!   the agent that removed the killed agent's filters from it: removing them proves the qdisc is
//!   still the one the killed agent created, since deleting a qdisc deletes its filters. When
//!   other filters keep that qdisc on the new agent's own interface, the new agent takes over
//!   removing it at its own exit.
//!
//! Not covered, each leaving something behind rather than removing something foreign: a live
//! agent that exits while another agent's filters are on the qdisc it created leaves the qdisc
//! (the other agent did not create it and will not remove it); an agent killed between adding
//! the qdisc and writing its record leaves an empty clsact qdisc; the PID-only files of earlier
//! versions (`/run/mirror-agent/tc-<iface>-...`) say too little to act on and are ignored.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::netlink::{Filter, Hook, Rtnl};
use crate::capture::ebpf::CaptureError;

/// Where agents record their tc filters (tmpfs: records vanish with the filters at reboot).
const RECORD_DIR: &str = "/run/mirror-agent/tc";
/// First line of a record, so a file of another format is never acted on.
const RECORD_HEADER: &str = "mirror-agent tc record 1";
/// Prefix of the name the agent gives its filters (`TCA_BPF_NAME`), shown by `tc filter show`.
const MARKER: &str = "mirror-agent:";

/// A network namespace: the device and inode of its nsfs file, which the kernel keeps unique
/// among namespaces that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetNsId {
    dev: u64,
    ino: u64,
}

impl NetNsId {
    /// The namespace of the calling thread, the one its netlink sockets talk to.
    pub fn current() -> io::Result<Self> {
        let m = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A loaded program the agent attaches as a filter, as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnProgram {
    pub hook: Hook,
    /// Kernel program id: unique among existing programs.
    pub id: u32,
    /// Kernel program tag: a hash of its instructions.
    pub tag: u64,
    /// The program's name in the object (`mirror_ingress`).
    pub name: String,
}

impl OwnProgram {
    fn filter_name(&self) -> String {
        format!("{MARKER}{}", self.name)
    }

    /// Whether `f` is this program's filter: kind, marker name, program id and tag all match.
    fn owns(&self, f: &Filter) -> bool {
        f.kind == "bpf"
            && f.name.as_deref() == Some(self.filter_name().as_str())
            && f.prog_id == Some(self.id)
            && f.prog_tag == Some(self.tag)
    }
}

/// What one agent recorded about its attachment to one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    pid: u32,
    netns: NetNsId,
    ifindex: u32,
    /// For the operator and the logs; the ifindex is what counts.
    iface: String,
    created_clsact: bool,
    programs: Vec<OwnProgram>,
}

impl Record {
    fn file_name(&self) -> String {
        let first = self.programs.first().map_or(0, |p| p.id);
        format!(
            "net{}-{}-if{}-prog{first}",
            self.netns.dev, self.netns.ino, self.ifindex
        )
    }

    fn render(&self) -> String {
        let mut s = format!(
            "{RECORD_HEADER}\npid {}\nnetns {} {}\nifindex {}\niface {}\nclsact {}\n",
            self.pid,
            self.netns.dev,
            self.netns.ino,
            self.ifindex,
            self.iface,
            if self.created_clsact {
                "created"
            } else {
                "found"
            },
        );
        for p in &self.programs {
            s.push_str(&format!(
                "program {} {} {:016x} {}\n",
                p.hook.name(),
                p.id,
                p.tag,
                p.name
            ));
        }
        s
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_HEADER {
            return None;
        }
        let (mut pid, mut netns, mut ifindex, mut iface, mut clsact) =
            (None, None, None, None, None);
        let mut programs = Vec::new();
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["pid", p] => pid = p.parse().ok(),
                ["netns", dev, ino] => {
                    netns = Some(NetNsId {
                        dev: dev.parse().ok()?,
                        ino: ino.parse().ok()?,
                    })
                }
                ["ifindex", i] => ifindex = i.parse().ok(),
                ["iface", name] => iface = Some(name.to_owned()),
                ["clsact", how] => clsact = Some(how == "created"),
                ["program", hook, id, tag, name] => programs.push(OwnProgram {
                    hook: Hook::parse(hook)?,
                    id: id.parse().ok()?,
                    tag: u64::from_str_radix(tag, 16).ok()?,
                    name: name.to_owned(),
                }),
                _ => {}
            }
        }
        Some(Self {
            pid: pid?,
            netns: netns?,
            ifindex: ifindex?,
            iface: iface?,
            created_clsact: clsact?,
            programs,
        })
    }
}

/// The agent's classic tc attachment on one interface: its filters, its record, and whether it
/// removes the clsact qdisc. Dropping it removes the filters, then the qdisc when the agent
/// created it and nothing else is on it, then the record.
pub struct TcAttachment {
    rtnl: Rtnl,
    record: Record,
    /// The record's path and the open file that holds its lock; `None` when it could not be
    /// written (then a crash leaves the filters for the operator).
    record_file: Option<(PathBuf, File)>,
}

impl TcAttachment {
    /// Removes what dead agents left in this namespace, adds the clsact qdisc when `ifindex` has
    /// none, and records the attachment of `programs`. No filter is added yet: see
    /// [`attach`](Self::attach).
    pub fn prepare(
        iface: &str,
        ifindex: u32,
        programs: Vec<OwnProgram>,
    ) -> Result<Self, CaptureError> {
        let io = |what| move |source| CaptureError::Io { what, source };
        let netns = NetNsId::current().map_err(io("identifying the network namespace"))?;
        let mut rtnl = Rtnl::open().map_err(io("opening an rtnetlink socket"))?;
        let inherited = remove_dead_agents(&mut rtnl, netns, ifindex);
        let created = rtnl
            .add_clsact(ifindex)
            .map_err(io("adding the clsact qdisc"))?;
        let record = Record {
            pid: std::process::id(),
            netns,
            ifindex,
            iface: iface.to_owned(),
            created_clsact: created || inherited,
            programs,
        };
        let record_file = match write_record(&record) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(dir = RECORD_DIR, error = %e, "cannot record the tc filters; if the agent is killed they stay attached");
                None
            }
        };
        Ok(Self {
            rtnl,
            record,
            record_file,
        })
    }

    /// Adds `program`'s filter, named with the agent's marker.
    pub fn attach(
        &mut self,
        prog_fd: BorrowedFd<'_>,
        program: &OwnProgram,
    ) -> Result<(), CaptureError> {
        let filter = self
            .rtnl
            .add_bpf_filter(
                self.record.ifindex,
                program.hook,
                prog_fd,
                &program.filter_name(),
            )
            .map_err(|source| CaptureError::Io {
                what: "adding the tc filter",
                source,
            })?;
        tracing::debug!(
            hook = program.hook.name(),
            priority = filter.priority,
            handle = filter.handle,
            prog_id = program.id,
            "tc filter added"
        );
        Ok(())
    }
}

impl Drop for TcAttachment {
    fn drop(&mut self) {
        let ifindex = self.record.ifindex;
        match remove_filters(&mut self.rtnl, ifindex, &self.record.programs) {
            Ok(removed) => tracing::debug!(filters = removed.len(), "tc filters removed"),
            Err(e) => tracing::warn!(error = %e, "removing the tc filters failed"),
        }
        if self.record.created_clsact {
            match remove_clsact_if_empty(&mut self.rtnl, ifindex) {
                Ok(None) => {
                    tracing::info!(iface = %self.record.iface, "removed the clsact qdisc the agent created")
                }
                Ok(Some(others)) => {
                    tracing::info!(iface = %self.record.iface, filters = others, "left the clsact qdisc the agent created: other filters are on it")
                }
                Err(e) => tracing::warn!(error = %e, "removing the clsact qdisc failed"),
            }
        }
        // Unlinked while still locked: a starting agent sees the record locked or not at all.
        if let Some((path, file)) = self.record_file.take() {
            let _ = std::fs::remove_file(path);
            drop(file);
        }
    }
}

/// Removes every filter of `programs` on `ifindex`; returns them. An interface that no longer
/// exists has none (its filters went with it).
fn remove_filters(
    rtnl: &mut Rtnl,
    ifindex: u32,
    programs: &[OwnProgram],
) -> io::Result<Vec<(Hook, Filter)>> {
    let mut removed = Vec::new();
    for p in programs {
        let filters = match rtnl.filters(ifindex, p.hook) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(removed),
            Err(e) => return Err(e),
        };
        for f in filters.into_iter().filter(|f| p.owns(f)) {
            rtnl.delete_filter(ifindex, p.hook, f.priority, f.handle)?;
            removed.push((p.hook, f));
        }
    }
    Ok(removed)
}

/// Deletes the clsact qdisc of `ifindex` when no filter is on either hook; otherwise returns how
/// many are (and a filter added between the check and the deletion goes with the qdisc: netlink
/// has no conditional delete).
fn remove_clsact_if_empty(rtnl: &mut Rtnl, ifindex: u32) -> io::Result<Option<usize>> {
    let mut others = 0;
    for hook in [Hook::Ingress, Hook::Egress] {
        match rtnl.filters(ifindex, hook) {
            Ok(f) => others += f.len(),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    if others > 0 {
        return Ok(Some(others));
    }
    match rtnl.delete_clsact(ifindex) {
        // Already gone (interface deleted, or removed by the operator): nothing to do.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => Ok(None),
        r => r.map(|()| None),
    }
}

/// Writes `record` under a temporary name, locks it and renames it into place, so a scanning
/// agent never sees a record unlocked or half written.
fn write_record(record: &Record) -> io::Result<(PathBuf, File)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(RECORD_DIR)?;
    let dir = Path::new(RECORD_DIR);
    let name = record.file_name();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.try_lock().map_err(io::Error::from)?;
    file.write_all(record.render().as_bytes())?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok((path, file))
}

/// Removes the filters (and, when they created it and it is now empty, the clsact qdisc) that
/// dead agents recorded in namespace `netns`, and their records. Returns whether the qdisc on
/// `ifindex` was a dead agent's and stays because of other filters: the caller then removes it at
/// its own exit.
fn remove_dead_agents(rtnl: &mut Rtnl, netns: NetNsId, ifindex: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(RECORD_DIR) else {
        return false;
    };
    let mut inherited = false;
    let mut existing: Option<Option<HashSet<u32>>> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue; // being written
        }
        let Ok(mut file) = File::open(&path) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue, // its agent is running
            Err(TryLockError::Error(e)) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot lock a tc record");
                continue;
            }
        }
        let mut text = String::new();
        let record = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| Record::parse(&text));
        let Some(record) = record else {
            tracing::warn!(path = %path.display(), "unreadable tc record left as it is");
            continue;
        };
        if record.netns != netns {
            // Another namespace's filters: only an agent there can see and remove them. The
            // record goes only when none of its programs exists, since a filter holds its
            // program (and the namespace may well be gone).
            let existing = existing.get_or_insert_with(existing_program_ids);
            let gone = existing
                .as_ref()
                .is_some_and(|ids| record.programs.iter().all(|p| !ids.contains(&p.id)));
            if gone {
                let _ = std::fs::remove_file(&path);
                tracing::debug!(path = %path.display(), "removed the record of a dead agent in another network namespace: its filters are gone");
            } else {
                tracing::debug!(path = %path.display(), "left the tc record of a dead agent in another network namespace to an agent there");
            }
            continue;
        }
        let removed = match remove_filters(rtnl, record.ifindex, &record.programs) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a killed agent's tc filters; its record is kept for the next start");
                continue;
            }
        };
        for (hook, f) in &removed {
            tracing::info!(
                iface = %record.iface,
                hook = hook.name(),
                priority = f.priority,
                handle = f.handle,
                prog_id = f.prog_id,
                pid = record.pid,
                "removed a tc filter left by a killed agent"
            );
        }
        if record.created_clsact && !removed.is_empty() {
            match remove_clsact_if_empty(rtnl, record.ifindex) {
                Ok(None) => {
                    tracing::info!(iface = %record.iface, "removed the clsact qdisc a killed agent created")
                }
                Ok(Some(_)) if record.ifindex == ifindex => inherited = true,
                Ok(Some(others)) => {
                    tracing::info!(iface = %record.iface, filters = others, "left the clsact qdisc a killed agent created: other filters are on it")
                }
                Err(e) => {
                    tracing::warn!(iface = %record.iface, error = %e, "removing a killed agent's clsact qdisc failed")
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    inherited
}

/// Ids of the programs that exist, or `None` when they cannot be listed (listing needs
/// CAP_SYS_ADMIN).
fn existing_program_ids() -> Option<HashSet<u32>> {
    aya::programs::loaded_programs()
        .map(|p| p.map(|p| p.id()))
        .collect::<Result<_, _>>()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            pid: 42,
            netns: NetNsId {
                dev: 4,
                ino: 4026532000,
            },
            ifindex: 7,
            iface: "veth0".into(),
            created_clsact: true,
            programs: vec![
                OwnProgram {
                    hook: Hook::Ingress,
                    id: 345,
                    tag: 0x0123_4567_89ab_cdef,
                    name: "mirror_ingress".into(),
                },
                OwnProgram {
                    hook: Hook::Egress,
                    id: 346,
                    tag: 0xfedc_ba98_7654_3210,
                    name: "mirror_egress".into(),
                },
            ],
        }
    }

    #[test]
    fn record_round_trips() {
        let r = record();
        assert_eq!(Record::parse(&r.render()), Some(r.clone()));
        assert_eq!(r.file_name(), "net4-4026532000-if7-prog345");
    }

    #[test]
    fn other_formats_are_not_records() {
        // The PID-only files of earlier versions, and a record cut short.
        assert_eq!(Record::parse("1234"), None);
        let text = record().render();
        assert_eq!(Record::parse(&text[..text.find("ifindex").unwrap()]), None);
    }

    #[test]
    fn a_filter_is_ours_only_when_name_id_and_tag_all_match() {
        let p = &record().programs[0];
        let ours = Filter {
            priority: 49152,
            handle: 1,
            kind: "bpf".into(),
            name: Some("mirror-agent:mirror_ingress".into()),
            prog_id: Some(345),
            prog_tag: Some(0x0123_4567_89ab_cdef),
        };
        assert!(p.owns(&ours));
        let differs = [
            Filter {
                prog_id: Some(999),
                ..ours.clone()
            },
            Filter {
                prog_tag: Some(1),
                ..ours.clone()
            },
            Filter {
                name: Some("mirror_ingress".into()),
                ..ours.clone()
            },
            Filter {
                kind: "u32".into(),
                ..ours.clone()
            },
            // Same priority and handle, nothing else known (an undecodable foreign filter).
            Filter {
                priority: 49152,
                handle: 1,
                ..Filter::default()
            },
        ];
        for f in differs {
            assert!(!p.owns(&f), "{f:?}");
        }
    }
}
