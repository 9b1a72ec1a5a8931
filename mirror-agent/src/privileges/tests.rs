use super::*;

#[test]
fn each_mode_keeps_only_what_it_needs() {
    assert_eq!(Needs::default().kept(), []);
    assert_eq!(Needs::default().describe(), "none");
    // TCX on a current kernel: nothing.
    assert_eq!(Needs::live(Some((6, 18)), false).kept(), []);
    // tc filters: NET_ADMIN to remove them at exit.
    assert_eq!(
        Needs::live(Some((6, 18)), true).kept(),
        [Capability::CAP_NET_ADMIN]
    );
    // Older kernels need a capability for every bpf(2) command on the maps.
    assert_eq!(
        Needs::live(Some((6, 1)), true).kept(),
        [Capability::CAP_NET_ADMIN, Capability::CAP_BPF]
    );
    assert_eq!(
        Needs::live(Some((5, 4)), false).kept(),
        [Capability::CAP_SYS_ADMIN]
    );
    let metrics = Needs {
        bind_low_port: true,
        ..Needs::default()
    };
    assert_eq!(metrics.describe(), "CAP_NET_BIND_SERVICE");
    // Following --iface globs: attaching later needs both, on any kernel.
    let follow = Needs {
        attach_later: true,
        ..Needs::live(Some((6, 18)), false)
    };
    assert_eq!(
        follow.kept(),
        [Capability::CAP_NET_ADMIN, Capability::CAP_BPF]
    );
    // --tls follow: reading other processes' procfs and making uprobe events later.
    let tls_follow = Needs {
        tls_attach_later: true,
        ..Needs::live(Some((6, 18)), false)
    };
    assert_eq!(
        tls_follow.kept(),
        [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE]
    );
    // On a kernel where SYS_ADMIN is already kept for the maps: once.
    let old = Needs {
        tls_attach_later: true,
        ..Needs::live(Some((5, 4)), false)
    };
    assert_eq!(
        old.kept(),
        [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE]
    );
}

#[test]
fn the_seccomp_program_compiles_for_this_machine() {
    let program = seccomp_program(false, false).expect("compiles");
    assert!(!program.is_empty());
    let following = seccomp_program(true, false).expect("compiles");
    assert!(
        following.len() < program.len(),
        "two bpf commands fewer refused"
    );
    let uprobes = seccomp_program(false, true).expect("compiles");
    assert!(
        uprobes.len() < following.len(),
        "and perf_event_open allowed too"
    );
}
