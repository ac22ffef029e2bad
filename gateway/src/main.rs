//! The `mfe-gateway` binary: configuration from the environment, then [`mfe_gateway::Application`].
//!
//! `GATEWAY_WORKERS` sets the runtime's worker threads: unset or `0` is one per core (tokio's
//! default), `1` is a single-threaded runtime (one event loop, like one nginx worker: no
//! cross-thread wake-ups, the cheapest CPU per request), `N` is a multi-threaded runtime with N
//! workers.

use anyhow::Context;

fn main() {
    // The .env file first: it may set GATEWAY_WORKERS.
    let result = mfe_kit::env::load_dotenv(None)
        .map_err(anyhow::Error::msg)
        .and_then(|()| runtime())
        .and_then(|rt| rt.block_on(run()));
    // Send buffered spans (OTLP) and Sentry events before exiting.
    mfe_kit::telemetry::shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match std::env::var("GATEWAY_WORKERS") {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("GATEWAY_WORKERS must be a whole number of threads (got `{raw}`)"))?,
        _ => 0,
    };
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().build().context("cannot start the gateway's async runtime")
}

async fn run() -> anyhow::Result<()> {
    mfe_kit::telemetry::init_tracing("gateway");
    let cfg = mfe_gateway::GatewayConfig::from_env().context("gateway configuration")?;
    let app = mfe_gateway::Application::build(cfg).await?;
    tracing::info!(port = app.port(), "gateway listening");
    app.run_until_stopped().await
}
