//! `profile-service`: reads its configuration from the environment (and `.env`) and serves.

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
    telemetry::init_tracing("profile-service");
    let config = ServiceConfig::from_env(Service::Profile).context("profile service configuration")?;
    // PROFILE_EVENTS_QUEUE names a private queue (benchmarks, side-by-side instances); unset,
    // the service consumes the shared durable `profile.events.queue`.
    let mut subscription = profile_service::default_subscription();
    if let Some(queue) = std::env::var("PROFILE_EVENTS_QUEUE").ok().filter(|q| !q.trim().is_empty()) {
        subscription.queue = queue;
    }
    let app = profile_service::Application::build_with_subscription(config, subscription).await?;
    app.run_until_stopped().await
}
