//! The `mfe` binary: parses the command line, runs it, and turns any error into one line and
//! an exit status (SPEC §3: 0 success, 1 failure, 2 usage error — clap's own).

use clap::Parser;

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
