//! `--cgroup PATH`: the `cgroup_skb` programs on cgroup v2 directories, so only the sockets of
//! the processes in them (a pod, a systemd service) are captured, whatever the interface or CNI.
//!
//! The links are BPF links (`bpf_link_create`): the kernel removes them when the agent's file
//! descriptors close, even on SIGKILL, and they run next to any other program on the cgroup
//! (systemd's, a CNI's). A socket belongs to the cgroup of the process that created it; an
//! accepted connection to that of its listening socket. The hooks apply to the cgroup's whole
//! subtree (a pod's containers are child cgroups of the pod's).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use mirror_common::programs;

use crate::capture::ebpf::CaptureError;

/// `statfs` magic of the cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The (ingress, egress) programs.
pub const PROGRAMS: (&str, &str) = (programs::CGROUP_INGRESS, programs::CGROUP_EGRESS);

/// Opens `path` and checks it is a directory of the cgroup v2 file system; a one-line error for
/// the operator otherwise (a cgroup v1 hierarchy, a plain directory, a missing path).
pub fn open(path: &Path) -> Result<File, CaptureError> {
    let fail = |reason: String| CaptureError::Cgroup {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(fail("not an absolute path".into()));
    }
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open fd and a valid out pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    if fs.f_type as i64 != CGROUP2_SUPER_MAGIC {
        let hint = match cgroup2_mount() {
            Some(m) => format!("cgroup v2 is mounted at {}", m.display()),
            None => "this system has no cgroup v2 mount".into(),
        };
        return Err(fail(format!("not a cgroup v2 directory ({hint})")));
    }
    Ok(file)
}

/// Where the cgroup v2 file system is mounted in this mount namespace (`/sys/fs/cgroup` on a
/// unified system, `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        // `id parent major:minor root mount-point options... - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Loads the cgroup programs (the egress one only when `egress` is set).
pub fn load(ebpf: &mut Ebpf, egress: bool) -> Result<(), CaptureError> {
    for name in wanted(egress) {
        program(ebpf, name)?
            .load()
            .map_err(|source| CaptureError::Program { name, source })?;
    }
    Ok(())
}

fn wanted(egress: bool) -> Vec<&'static str> {
    let mut wanted = vec![PROGRAMS.0];
    if egress {
        wanted.push(PROGRAMS.1);
    }
    wanted
}

/// Attaches the loaded programs to every directory of `dirs` (opened by [`open`]). The links are
/// owned by the programs inside `ebpf` and go with it.
pub fn attach(ebpf: &mut Ebpf, dirs: &[(PathBuf, File)], egress: bool) -> Result<(), CaptureError> {
    for (path, dir) in dirs {
        for name in wanted(egress) {
            let attach_type = if name == PROGRAMS.0 {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            // A BPF link always runs next to the cgroup's other programs; link_create refuses
            // the ALLOW_MULTI flag itself (EINVAL), so the mode is the default.
            program(ebpf, name)?
                .attach(dir, attach_type, CgroupAttachMode::Single)
                .map_err(|source| CaptureError::Cgroup {
                    path: path.clone(),
                    reason: format!("attaching {name}: {source}"),
                })?;
        }
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSkb, CaptureError> {
    ebpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(|source| CaptureError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_cgroup_v2_directory() {
        let e = open(Path::new("relative/dir")).unwrap_err().to_string();
        assert_eq!(e, "--cgroup relative/dir: not an absolute path");
        let e = open(Path::new("/nonexistent-cgroup-dir"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--cgroup /nonexistent-cgroup-dir: No such file"),
            "{e}"
        );
        let e = open(Path::new("/proc/self/exe")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = open(Path::new("/tmp")).unwrap_err().to_string();
        assert!(e.contains("not a cgroup v2 directory"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn accepts_the_cgroup2_mount_where_there_is_one() {
        match cgroup2_mount() {
            Some(m) => {
                open(&m).unwrap();
            }
            None => eprintln!("SKIPPED: no cgroup v2 mount on this machine"),
        }
    }
}
