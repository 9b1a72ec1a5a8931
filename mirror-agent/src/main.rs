//! mirror-agent command line entry point: parse flags, pick the mode, map errors to exit codes.

use clap::Parser;
use mirror_agent::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Check) => std::process::exit(mirror_agent::check::run()),
        None if cli.run.pcap.is_none() && cli.run.from.is_none() => {
            std::process::exit(mirror_agent::app::agent::main(&cli.run))
        }
        None if cli.run.from.is_some() => {
            std::process::exit(mirror_agent::app::from::main(&cli.run));
        }
        None if cli.run.pcap.is_some()
            && (!cli.run.mirrors.is_empty() || cli.run.config.is_some()) =>
        {
            std::process::exit(mirror_agent::app::from::pcap_main(&cli.run));
        }
        None if cli.run.pcap.is_some() => {
            std::process::exit(mirror_agent::app::offline::main(&cli.run));
        }
        None => {
            eprintln!("mirror-agent: not wired yet");
            std::process::exit(1);
        }
    }
}
