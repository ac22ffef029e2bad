//! `admin-service`: reads its settings from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("admin-service", mfe_kit::run::multi_thread, || async {
        let settings = admin_service::Settings::from_env().context("admin service: reading settings")?;
        admin_service::Application::build(settings).await?.run_until_stopped().await
    })
}
