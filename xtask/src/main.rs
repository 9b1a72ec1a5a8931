//! `cargo xtask`: project tasks (setup, build-ebpf, test, demo, bench).

mod bench_pipeline;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object (installs the toolchain first if missing).
    BuildEbpf,
    /// Run every test: unprivileged, pcap acceptance and privileged end-to-end.
    Test,
    /// Run the self-contained demo in network namespaces.
    Demo,
    /// Benchmarks: capture, pipeline, mirror.
    Bench { which: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { which } if which == "pipeline" => bench_pipeline::run(),
        Command::Setup
        | Command::BuildEbpf
        | Command::Test
        | Command::Demo
        | Command::Bench { .. } => {
            anyhow::bail!("not wired yet")
        }
    }
}
