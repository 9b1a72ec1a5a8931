//! `cargo xtask`: project tasks (setup, build-ebpf, test, image, demo, bench, fuzz).
//!
//! Each command lives in its own module; this file only dispatches.

mod bench_bulk;
mod bench_capture;
mod bench_classifier;
mod bench_mirror;
mod bench_pipeline;
mod demo;
mod ebpf;
mod fuzz;
mod image;
mod lab;
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
    /// Install what the build and tests need (Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz).
    Setup,
    /// Build the eBPF object (installs the toolchain first if missing).
    BuildEbpf,
    /// Run every test: unprivileged, pcap acceptance and privileged end-to-end.
    Test,
    /// Build the OCI image `mirror-agent:<version>` with podman, from scratch and offline; print
    /// its size.
    Image {
        /// Then run the image smoke test (tests/tests/image.rs), required to pass.
        #[arg(long)]
        test: bool,
    },
    /// Run the self-contained demo in network namespaces.
    Demo,
    /// Benchmarks: capture (with its bulk-upload section), bulk (that section alone),
    /// classifier (the ingress program's time per kind of packet, BPF_PROG_TEST_RUN), pipeline, mirror, connections (agent CPU as client connections and mirrors grow), h2
    /// (h2load against an h2c primary, mirrored over HTTP/2).
    Bench { which: String },
    /// Run each cargo-fuzz target of mirror-agent/fuzz for a fixed time; print a table; fail on
    /// any crash, leak, timeout or out-of-memory artifact.
    Fuzz {
        /// Seconds per target.
        #[arg(long, env = "MIRROR_FUZZ_SECS", default_value_t = fuzz::DEFAULT_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        secs: u64,
        /// Targets to run (default: every target `cargo fuzz list` names).
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(setup::Scope::All),
        Command::BuildEbpf => ebpf::build().map(|_| ()),
        Command::Test => test::run(),
        Command::Image { test } => image::run(test),
        Command::Demo => demo::run(),
        Command::Fuzz { secs, targets } => fuzz::run(secs, &targets),
        Command::Bench { which } => match which.as_str() {
            "capture" => bench_capture::run().and_then(|()| bench_bulk::run()),
            "bulk" => bench_bulk::run(),
            "classifier" => bench_classifier::run(),
            "pipeline" => bench_pipeline::run(),
            "mirror" => bench_mirror::run(),
            "connections" => bench_mirror::connections::run(),
            "h2" => bench_mirror::h2::run(),
            "tls" => bench_mirror::tls::run(),
            other => {
                anyhow::bail!(
                    "unknown benchmark {other:?} (known: capture, bulk, classifier, pipeline, mirror, connections, h2, tls)"
                )
            }
        },
    }
}
