//! mirror-agent command line entry point: parse flags, pick the mode, print the one error line
//! and exit with its status.

use clap::Parser;
use mirror_agent::app::AppError;
use mirror_agent::cli::{Cli, Command};
use mirror_agent::config::Settings;

/// mimalloc instead of glibc's malloc. The capture thread allocates each request and the mirror
/// workers free it; glibc's paths for that (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`)
/// took ~20% of the agent's CPU at 10000 client connections (issue 17; BENCHMARKS.md has the
/// A/B). Its memory settings are set by [`ALLOCATOR_SETTINGS`] before the first allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs as an ELF constructor: after mimalloc's own (priority 101, which reads `MIMALLOC_*`)
/// and before Rust's runtime makes the first allocation, so the first arena is reserved with
/// these settings. mimalloc's defaults commit whole arenas up front and purge freed pages
/// lazily with `MADV_FREE`, which keeps them in the RSS: measured +38 MiB of RSS at 32 client
/// connections over glibc. Not committing arenas eagerly and purging at once brings it back to
/// glibc's level (BENCHMARKS.md, issue 17). An operator's `MIMALLOC_*` variable still wins.
#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATOR_SETTINGS: extern "C" fn() = allocator_settings;

extern "C" fn allocator_settings() {
    // mimalloc.h's `mi_option_e` values (the same in mimalloc 2 and 3); the Rust bindings
    // name neither.
    const ARENA_EAGER_COMMIT: MiOption = 4;
    const PURGE_DELAY: MiOption = 15;
    type MiOption = libc::c_int;
    unsafe extern "C" {
        fn mi_option_set(option: MiOption, value: libc::c_long);
    }
    for (option, env, value) in [
        (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0),
        (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 0),
    ] {
        // SAFETY: getenv with a NUL-terminated name, before any thread exists; mi_option_set
        // only stores the value.
        unsafe {
            if libc::getenv(env.as_ptr()).is_null() {
                mi_option_set(option, value);
            }
        }
    }
}

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
