//! `auth-service`: reads its configuration from the environment (and `.env`) and serves.

use anyhow::Context;
use mfe_kit::{config::Service, env, telemetry, ServiceConfig};

#[tokio::main]
async fn main() {
    let result = run().await;
    // Send buffered spans (OTLP) and Sentry events before exiting.
    mfe_kit::telemetry::shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    env::load_dotenv(None).map_err(anyhow::Error::msg)?;
    telemetry::init_tracing("auth-service");
    let config = ServiceConfig::from_env(Service::Auth).context("auth service configuration")?;
    let app = auth_service::Application::build(config).await?;
    app.run_until_stopped().await
}
