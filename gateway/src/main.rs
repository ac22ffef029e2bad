//! The `mfe-gateway` binary: configuration from the environment, then [`mfe_gateway::Application`].

use anyhow::Context;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("gateway", async {
        let cfg = mfe_gateway::GatewayConfig::from_env().context("gateway configuration")?;
        let app = mfe_gateway::Application::build(cfg).await?;
        tracing::info!(port = app.port(), "gateway listening");
        app.run_until_stopped().await
    })
    .await
}
