//! `auth-service`: reads its configuration from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("auth-service", async {
        let settings = auth_service::Settings::from_env().context("auth service configuration")?;
        auth_service::Application::build_with(settings).await?.run_until_stopped().await
    })
    .await
}
