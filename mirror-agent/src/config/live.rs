//! The capture flags into [`LiveSettings`]: what live capture attaches, validated before
//! anything touches the kernel. The interface is resolved, and privileges and BPF support are
//! checked, when the app starts the capture.

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use crate::capture::ebpf::tls::TlsSetting;
use crate::capture::ebpf::{AttachPolicy, CopyPolicy, IfacePatterns, LiveConfig, Target};
use crate::cli::CaptureArgs;

/// Live capture's settings: all but the target and ports are validated here; those are
/// required only when capturing live ([`LiveSettings::capture`]).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub iface: Option<String>,
    /// `--cgroup`: capture these cgroups' sockets instead of an interface.
    pub cgroups: Vec<PathBuf>,
    pub ports: Vec<u16>,
    /// Share of flows the kernel captures, in basis points.
    pub capture_basis_points: u32,
    pub ring_size: u32,
    pub attach: AttachPolicy,
    /// Which classifier variant copies payload (`MIRROR_CAPTURE_COPY`).
    pub copy: CopyPolicy,
    /// The egress classifier runs too (`--compare`: the primary's responses).
    pub attach_egress: bool,
    /// Stop after this long (`--duration`).
    pub duration: Option<Duration>,
    /// `--write-pcap FILE`.
    pub write_pcap: Option<PathBuf>,
    /// `--overwrite`: `--write-pcap` may replace an existing regular file.
    pub overwrite: bool,
    /// The pipeline omits some bodies and no output needs the raw packets: capture may skip
    /// them too (set by `Settings`).
    pub skip_bodies: bool,
    /// An output shows the capture stamps: the kernel reads the precise clock (set by
    /// `Settings`).
    pub precise_clock: bool,
    /// `--tls` and `--tls-binary`.
    pub tls: TlsSetting,
    /// `--tls follow`: libssl files of listeners that appear later are probed too.
    pub tls_follow: bool,
    /// `--tls-open-wait-secs`: how long connections open at start are waited for (`None`: as
    /// long as they stay open).
    pub tls_open_wait: Option<Duration>,
}

impl LiveSettings {
    /// What the kernel side needs; live mode requires an interface or cgroups (not both) and
    /// at least one port.
    pub fn capture(&self) -> Result<LiveConfig, ConfigError> {
        let flag = |flag, msg: &str| ConfigError::Flag {
            flag,
            msg: msg.into(),
        };
        let target = match (&self.iface, self.cgroups.is_empty()) {
            (Some(_), false) => {
                return Err(flag(
                    "--cgroup",
                    "chooses traffic by process, --iface by interface: give one of them",
                ));
            }
            (Some(iface), true) => {
                let entries: Vec<String> = iface
                    .split(',')
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect();
                IfacePatterns::parse(&entries).map_err(|msg| ConfigError::Flag {
                    flag: "--iface",
                    msg,
                })?;
                Target::Interfaces(entries)
            }
            (None, false) => Target::Cgroups(self.cgroups.clone()),
            (None, true) => return Err(flag("--iface", "live mode needs --iface or --cgroup")),
        };
        if self.ports.is_empty() {
            return Err(flag(
                "--port",
                "no ports to capture: give at least one --port",
            ));
        }
        Ok(LiveConfig {
            target,
            ports: self.ports.clone(),
            capture_basis_points: self.capture_basis_points,
            ring_size: self.ring_size,
            attach_egress: self.attach_egress,
            attach: self.attach,
            copy: self.copy,
            skip_bodies: self.skip_bodies,
            precise_clock: self.precise_clock,
            tls: self.tls.clone(),
            tls_follow: self.tls_follow,
            tls_open_wait: self.tls_open_wait,
        })
    }
}

/// `ports` and `capture_percent` are the settled values (flags, else the config file).
pub fn build(
    a: &CaptureArgs,
    iface: Option<String>,
    cgroups: Vec<PathBuf>,
    ports: &[u16],
    capture_percent: f64,
    attach_egress: bool,
) -> Result<LiveSettings, ConfigError> {
    let ring = a.ring_buffer_size;
    if !ring.is_power_of_two() || !(4096..=1 << 31).contains(&ring) {
        return Err(ConfigError::Flag {
            flag: "--ring-buffer-size",
            msg: format!("{ring} is not a power of two between 4096 and 2^31"),
        });
    }
    let duration = match a.duration {
        None => None,
        Some(d) if d.is_finite() && d > 0.0 => Some(Duration::from_secs_f64(d)),
        Some(d) => {
            return Err(ConfigError::Flag {
                flag: "--duration",
                msg: format!("{d} must be > 0 seconds"),
            });
        }
    };
    let Some(attach) = AttachPolicy::parse(&a.attach) else {
        return Err(ConfigError::Flag {
            flag: "--attach",
            msg: format!("invalid --attach `{}`: expected auto, tcx or tc", a.attach),
        });
    };
    let Some(copy) = CopyPolicy::parse(&a.capture_copy) else {
        return Err(ConfigError::Flag {
            flag: "MIRROR_CAPTURE_COPY (--capture-copy)",
            msg: format!("`{}` is not auto, reserve or scratch", a.capture_copy),
        });
    };
    let tls = tls_setting(&a.tls, &a.tls_binaries)?;
    let mut unique = Vec::with_capacity(ports.len());
    for &p in ports {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    Ok(LiveSettings {
        iface,
        cgroups,
        ports: unique,
        capture_basis_points: (capture_percent * 100.0).round() as u32,
        ring_size: ring as u32,
        attach,
        copy,
        attach_egress,
        duration,
        write_pcap: None,
        overwrite: false,
        skip_bodies: false,
        precise_clock: false,
        tls,
        tls_follow: a.tls.trim() == "follow",
        tls_open_wait: match a.tls_open_wait_secs {
            0 => None,
            s @ 1..=86_400 => Some(Duration::from_secs(s)),
            s => {
                return Err(ConfigError::Flag {
                    flag: "--tls-open-wait-secs",
                    msg: format!("{s} is not in 0..=86400 (0: as long as they stay open)"),
                });
            }
        },
    })
}

/// `--tls off|auto|PATH[,PATH]` and `--tls-binary PATH`: every named file must exist (a
/// uprobe on a missing file fails at attach, after the environment checks).
fn tls_setting(tls: &str, binaries: &[PathBuf]) -> Result<TlsSetting, ConfigError> {
    let missing = |flag, p: &std::path::Path| ConfigError::Flag {
        flag,
        msg: format!("{}: no such file", p.display()),
    };
    for b in binaries {
        if !b.is_file() {
            return Err(missing("--tls-binary", b));
        }
    }
    let setting = match tls.trim() {
        "" | "off" => TlsSetting::Off,
        "auto" | "follow" => TlsSetting::Auto,
        list => {
            let files: Vec<PathBuf> = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            if let Some(f) = files.iter().find(|f| !f.is_file()) {
                return Err(ConfigError::Flag {
                    flag: "--tls",
                    msg: format!(
                        "`{}` is not off, auto, follow or an existing libssl file",
                        f.display()
                    ),
                });
            }
            TlsSetting::Files(files)
        }
    };
    Ok(match (setting, binaries.is_empty()) {
        (s, true) => s,
        (TlsSetting::Off, false) => TlsSetting::Files(binaries.to_vec()),
        (TlsSetting::Files(mut f), false) => {
            f.extend_from_slice(binaries);
            TlsSetting::Files(f)
        }
        // Auto plus binaries: the binaries join what discovery finds.
        (TlsSetting::Auto | TlsSetting::AutoAnd(_), false) => {
            TlsSetting::AutoAnd(binaries.to_vec())
        }
    })
}
