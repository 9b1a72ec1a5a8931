//! `--tls follow`: the libssl files of processes that start listening on the captured ports
//! after the agent (a new image of the service rolls out with its own file), found so the
//! TLS probes can be attached to them too.
//!
//! Owns the looking (a thread scanning procfs, off the capture thread: on a busy node a scan
//! takes milliseconds) and what was already seen; attaching is the capture's
//! ([`super::LiveCapture::follow_tls`], with [`super::tls::attach_target`]). The thread runs
//! after the agent gave up its other privileges: it keeps `CAP_SYS_PTRACE` to read other
//! processes' maps and fds (`privileges::Needs::tls_attach_later`).

use std::path::PathBuf;

/// How often `--tls follow` looks for new libssl files.
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `--tls follow`: a thread that looks every [`FOLLOW_EVERY`] for libssl files mapped by the
/// processes listening on the captured ports that are not probed yet (a new image of the
/// service with its own file, started after the agent), and hands them over; the capture
/// attaches to them ([`super::LiveCapture::follow_tls`]). It scans procfs off the capture
/// thread: on a busy node that takes milliseconds. Stopped when dropped.
pub struct TlsFollower {
    found: std::sync::mpsc::Receiver<PathBuf>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFollower {
    /// Starts looking; `known`: the files already probed.
    pub fn start(ports: Vec<u16>, known: &[PathBuf]) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let mut known: std::collections::BTreeSet<super::tls_procfs::FileId> = known
            .iter()
            .filter_map(|p| super::tls_procfs::file_id(p))
            .collect();
        let (tx, found) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tls-follow".into())
            .spawn(move || {
                'scan: loop {
                    // Wait in short steps so a stop is quick.
                    let step = std::time::Duration::from_millis(100);
                    for _ in 0..FOLLOW_EVERY.as_millis() / step.as_millis() {
                        if stopped.load(Ordering::Relaxed) {
                            break 'scan;
                        }
                        std::thread::sleep(step);
                    }
                    for (path, id) in super::tls_procfs::listeners_libssl(&ports).libs {
                        if known.insert(id) && tx.send(path).is_err() {
                            break 'scan;
                        }
                    }
                }
            })?;
        Ok(Self {
            found,
            stop,
            thread: Some(thread),
        })
    }

    /// Files found since the last call.
    pub fn found(&self) -> Vec<PathBuf> {
        self.found.try_iter().collect()
    }
}

impl Drop for TlsFollower {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
