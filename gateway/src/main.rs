//! The `mfe-gateway` binary: configuration from the environment, then [`mfe_gateway::Application`],
//! inside the `main` every service shares ([`mfe_kit::run::run_service`]).
//!
//! `GATEWAY_WORKERS` sets the runtime's worker threads: unset or `0` is one per core (tokio's
//! default), `1` is a single-threaded runtime (one event loop, like one nginx worker: no
//! cross-thread wake-ups, the cheapest CPU per request), `N` is a multi-threaded runtime with N
//! workers.

use anyhow::Context;

fn main() -> std::process::ExitCode {
    mfe_kit::run::run_service("gateway", runtime, || async {
        let cfg = mfe_gateway::GatewayConfig::from_env().context("gateway configuration")?;
        let app = mfe_gateway::Application::build(cfg).await?;
        tracing::info!(port = app.port(), "gateway listening");
        app.run_until_stopped().await
    })
}

/// The runtime `GATEWAY_WORKERS` asks for (read after `.env` is loaded: it may set it).
fn runtime() -> anyhow::Result<tokio::runtime::Builder> {
    Ok(match mfe_gateway::GatewayConfig::workers_from_env()? {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    })
}
