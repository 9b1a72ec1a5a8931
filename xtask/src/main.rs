//! `cargo xtask`: project tasks (setup, build-ebpf, test, demo, bench).
//!
//! Each command lives in its own module; this file only dispatches.

mod bench_capture;
mod bench_mirror;
mod bench_pipeline;
mod demo;
mod ebpf;
mod netns;
mod setup;
mod test;
mod util;

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
        Command::Setup => setup::run(setup::Scope::All),
        Command::BuildEbpf => ebpf::build().map(|_| ()),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench { which } => match which.as_str() {
            "capture" => bench_capture::run(),
            "pipeline" => bench_pipeline::run(),
            "mirror" => bench_mirror::run(),
            other => {
                anyhow::bail!("unknown benchmark {other:?} (known: capture, pipeline, mirror)")
            }
        },
    }
}
