//! `payments-service`: reads its settings from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("payments-service", mfe_kit::run::multi_thread, || async {
        let settings = payments_service::Settings::from_env().context("payments service: reading settings")?;
        payments_service::Application::build(settings).await?.run_until_stopped().await
    })
}
