//! `profile-service`: reads its configuration from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;
use mfe_kit::{config::Service, ServiceConfig};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("profile-service", async {
        let config = ServiceConfig::from_env(Service::Profile).context("profile service configuration")?;
        // PROFILE_EVENTS_QUEUE names a private queue (benchmarks, side-by-side instances); unset,
        // the service consumes the shared durable `profile.events.queue`.
        let mut subscription = profile_service::default_subscription();
        if let Some(queue) = std::env::var("PROFILE_EVENTS_QUEUE").ok().filter(|q| !q.trim().is_empty()) {
            subscription.queue = queue;
        }
        profile_service::Application::build_with_subscription(config, subscription).await?.run_until_stopped().await
    })
    .await
}
