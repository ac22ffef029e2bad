//! `payments-service`: reads its settings from the environment (and `.env`) and serves until
//! SIGTERM or Ctrl-C.

use anyhow::Context;

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
    mfe_kit::env::load_dotenv(None).map_err(anyhow::Error::msg)?;
    mfe_kit::telemetry::init_tracing("payments");
    let settings = payments_service::Settings::from_env().context("payments service: reading settings")?;
    let app = payments_service::Application::build(settings).await?;
    app.run_until_stopped().await
}
