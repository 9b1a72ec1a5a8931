//! Which classifier variant moves the payload into the ring buffer (see the top doc of
//! `mirror-ebpf`): one copy into ring reservations, or the scratch-copy fallback for a kernel
//! whose verifier refuses the first. Chosen once, when the object is loaded.

use mirror_common::programs;

/// What the operator allows (`MIRROR_CAPTURE_COPY`, hidden flag `--capture-copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyPolicy {
    /// The one-copy programs, else the scratch-copy ones with a warning.
    #[default]
    Auto,
    /// The one-copy programs or fail (tests, benchmarks).
    Reserve,
    /// The scratch-copy programs (tests, benchmarks).
    Scratch,
}

impl CopyPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "reserve" => Some(Self::Reserve),
            "scratch" => Some(Self::Scratch),
            _ => None,
        }
    }
}

/// The variant in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPath {
    /// `bpf_ringbuf_reserve` in size classes, skb bytes loaded straight into the ring.
    Reserve,
    /// Per-CPU scratch buffer, then `bpf_ringbuf_output`: two copies per byte.
    Scratch,
}

impl CopyPath {
    /// The (ingress, egress) programs of this variant.
    pub fn programs(self) -> (&'static str, &'static str) {
        match self {
            Self::Reserve => (programs::INGRESS, programs::EGRESS),
            Self::Scratch => (programs::INGRESS_COPY, programs::EGRESS_COPY),
        }
    }

    /// Short name, as `MIRROR_CAPTURE_COPY` spells it (logs, summary).
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Scratch => "scratch",
        }
    }

    /// For people (`mirror-agent check`).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Reserve => "one-copy (ring reserve)",
            Self::Scratch => "scratch copy (bpf_ringbuf_output), fallback",
        }
    }
}

impl std::fmt::Display for CopyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_paths_name_their_programs() {
        assert_eq!(CopyPolicy::parse("auto"), Some(CopyPolicy::Auto));
        assert_eq!(CopyPolicy::parse("reserve"), Some(CopyPolicy::Reserve));
        assert_eq!(CopyPolicy::parse("scratch"), Some(CopyPolicy::Scratch));
        assert_eq!(CopyPolicy::parse("Reserve"), None);
        assert_eq!(CopyPath::Reserve.programs().0, "mirror_ingress");
        assert_eq!(CopyPath::Scratch.programs().1, "mirror_egress_copy");
        assert_eq!(CopyPath::Scratch.to_string(), "scratch");
    }
}
