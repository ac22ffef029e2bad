//! The `main` every service binary and the gateway share, so each binary only says how it
//! builds its application.

use std::{future::Future, process::ExitCode};

use anyhow::Context as _;
use tokio::runtime::Builder;

/// Runs a binary: loads `.env`, builds the async runtime with `runtime` (called after `.env`
/// is loaded, so it may read its size from there), installs tracing as `name` (log format,
/// OTLP, Sentry), awaits `serve()` (which reads its configuration, builds the application and
/// runs it until SIGTERM or Ctrl-C), then flushes buffered spans and Sentry events. A failure
/// is printed once as `error: …` with its cause chain and the exit code is 1.
///
/// Nothing in `serve` runs before `.env` is loaded and tracing is set up.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     mfe_kit::run::run_service("example-service", mfe_kit::run::multi_thread, || async {
///         // let app = Application::build(Settings::from_env()?).await?;
///         // app.run_until_stopped().await
///         Ok(())
///     })
/// }
/// ```
pub fn run_service<F, Fut>(name: &str, runtime: fn() -> anyhow::Result<Builder>, serve: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let result = mfe_core::env::load_dotenv(None).map_err(anyhow::Error::msg).and_then(|()| {
        let runtime =
            runtime()?.enable_all().build().with_context(|| format!("{name}: cannot start the async runtime"))?;
        runtime.block_on(async {
            crate::telemetry::init_tracing(name);
            serve().await
        })
    });
    // Send buffered spans (OTLP) and Sentry events before exiting.
    crate::telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime of a service: tokio's multi-threaded runtime, one worker per core (what
/// `#[tokio::main]` builds).
pub fn multi_thread() -> anyhow::Result<Builder> {
    Ok(Builder::new_multi_thread())
}
