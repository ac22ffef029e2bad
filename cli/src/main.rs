//! The `mfe` binary: parses the command line, runs it, and turns any error into one line and
//! an exit status (SPEC §3: 0 success, 1 failure, 2 usage error — clap's own).

use clap::Parser;

/// mimalloc rather than glibc's malloc: every thread that allocates (tokio's workers, and the
/// blocking pool behind every file read of the export and import) gets a glibc arena of its own
/// that keeps what it freed. Peak RSS of `mfe migrate run` / `run --online` on the 4.4 M-row
/// benchmark: glibc 99.5 / 107.3 MB, mimalloc 92.3 / 94.5 MB. (glibc capped at two arenas with
/// `MALLOC_ARENA_MAX=2` measured 75.9 / 77.7 MB, but that can only be set before the process
/// starts, and `mallopt` needs the `unsafe` this workspace forbids.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = mfe::Cli::parse();
    mfe::init_logging(cli.global.verbose);
    // Before anything is spawned: every child (gateway, services, nginx, probes) inherits it.
    mfe::limits::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mfe::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", mfe::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
