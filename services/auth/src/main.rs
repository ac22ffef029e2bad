//! `auth-service`: reads its settings from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("auth-service", mfe_kit::run::multi_thread, || async {
        let settings = auth_service::Settings::from_env().context("auth service: reading settings")?;
        auth_service::Application::build(settings).await?.run_until_stopped().await
    })
}
