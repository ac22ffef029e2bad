//! `profile-service`: reads its configuration from the environment (and `.env`) and serves.

use anyhow::Context;
use mfe_kit::{config::Service, env, telemetry, ServiceConfig};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    env::load_dotenv(None).map_err(anyhow::Error::msg)?;
    telemetry::init_tracing("profile-service");
    let config = ServiceConfig::from_env(Service::Profile).context("profile service configuration")?;
    let app = profile_service::Application::build(config).await?;
    app.run_until_stopped().await
}
