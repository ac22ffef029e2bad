//! The `mfe-gateway` binary: configuration from the environment, then [`mfe_gateway::Application`].

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
    mfe_kit::telemetry::init_tracing("gateway");
    let cfg = mfe_gateway::GatewayConfig::from_env().context("gateway configuration")?;
    let app = mfe_gateway::Application::build(cfg).await?;
    tracing::info!(port = app.port(), "gateway listening");
    app.run_until_stopped().await
}
