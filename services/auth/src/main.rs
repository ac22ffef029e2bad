//! `auth-service`: reads its configuration from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;
use mfe_kit::{config::Service, ServiceConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("auth-service", async {
        let config = ServiceConfig::from_env(Service::Auth).context("auth service configuration")?;
        auth_service::Application::build(config).await?.run_until_stopped().await
    })
    .await
}
