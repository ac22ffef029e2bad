//! The `main` every service binary shares, so each binary only says how it builds its
//! application.

use std::{future::Future, process::ExitCode};

/// Runs a service binary: loads `.env`, installs tracing as `service` (log format, OTLP, Sentry),
/// awaits `serve` (which reads its configuration, builds the application and runs it until
/// SIGTERM or Ctrl-C), then flushes buffered spans and Sentry events. A failure is printed once
/// as `error: …` with its cause chain and the exit code is 1.
///
/// `serve` is an `async` block: nothing in it runs before `.env` is loaded and tracing is set up.
///
/// ```no_run
/// # async fn example() -> std::process::ExitCode {
/// mfe_kit::run::run_service("example", async {
///     // let app = Application::build(config).await?;
///     // app.run_until_stopped().await
///     Ok(())
/// })
/// .await
/// # }
/// ```
pub async fn run_service(service: &str, serve: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let result = match crate::env::load_dotenv(None) {
        Ok(()) => {
            crate::telemetry::init_tracing(service);
            serve.await
        }
        Err(e) => Err(anyhow::Error::msg(e)),
    };
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
