//! mirror-agent command line entry point: parse flags, pick the mode, print the one error line
//! and exit with its status.

use clap::Parser;
use mirror_agent::app::AppError;
use mirror_agent::cli::{Cli, Command};
use mirror_agent::config::Settings;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        Some(Command::Check) => mirror_agent::check::run(),
        None if cli.run.check_config => match Settings::load(&cli.run).and_then(|s| s.check()) {
            Ok(summary) => {
                println!("{summary}\nmirror-agent: configuration ok");
                0
            }
            Err(e) => {
                let e = AppError::from(e);
                eprintln!("mirror-agent: {e}");
                e.exit_code()
            }
        },
        None => match Settings::load(&cli.run)
            .map_err(AppError::from)
            .and_then(mirror_agent::app::run)
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mirror-agent: {e}");
                e.exit_code()
            }
        },
    };
    std::process::exit(code);
}
