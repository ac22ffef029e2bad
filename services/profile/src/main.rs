//! `profile-service`: reads its settings from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("profile-service", mfe_kit::run::multi_thread, || async {
        let settings = profile_service::Settings::from_env().context("profile service: reading settings")?;
        profile_service::Application::build(settings).await?.run_until_stopped().await
    })
}
