//! [`GatewayConfig`]: where the gateway listens, where each upstream service lives, and the
//! timing knobs of the proxy and the WebSocket heartbeat. Read from the environment with the
//! SPEC §2 defaults of [`mfe_kit::env`]; the gateway-only knobs have their defaults here.

use std::time::Duration;

use mfe_kit::config::Secret;

/// One upstream service and the path prefix routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Short name used in metrics labels and error messages (`auth`, `payments`, ...).
    pub name: String,
    /// Requests whose path is this prefix or starts with `prefix/` go to `upstream`.
    pub prefix: String,
    /// Base URL of the service, e.g. `http://127.0.0.1:3001`; the path is forwarded unchanged.
    pub upstream: String,
}

/// Everything the gateway needs to know.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address to bind; `0` as port picks a free one (tests).
    pub host: String,
    pub port: u16,
    /// The routes of SPEC §8, in match order.
    pub routes: Vec<Route>,
    /// Signing secret of access tokens, checked before a WebSocket upgrade.
    pub jwt_secret: Secret,
    /// The broker of the event bridge (`RABBITMQ_URL`); `None` runs the gateway without events.
    pub events: Option<mfe_events::HubConfig>,
    /// Time an upstream has to answer with response headers before the client gets 504.
    pub upstream_timeout: Duration,
    /// Time allowed to open a TCP connection to an upstream before the client gets 502.
    pub connect_timeout: Duration,
    /// How often each upstream's `/health` is polled; a failed check answers 503 until a
    /// later check passes.
    pub health_interval: Duration,
    /// Server ping period and how long a pong may take before the socket is closed.
    pub ws_ping_interval: Duration,
    pub ws_pong_timeout: Duration,
    /// Messages queued per socket before the client counts as slow and is dropped.
    pub ws_send_queue: usize,
}

impl GatewayConfig {
    /// Reads `PORT`, `GATEWAY_HOST`, the four `*_SERVICE_URL`, `JWT_SECRET`, `RABBITMQ_URL`,
    /// `GATEWAY_UPSTREAM_TIMEOUT_MS`, `GATEWAY_CONNECT_TIMEOUT_MS`, `GATEWAY_HEALTH_INTERVAL_MS`,
    /// `WS_PING_INTERVAL_MS`, `WS_PONG_TIMEOUT_MS` and `WS_SEND_QUEUE`.
    pub fn from_env() -> anyhow::Result<Self> {
        use mfe_kit::env;
        let routes = [
            ("auth", "AUTH_SERVICE_URL"),
            ("payments", "PAYMENTS_SERVICE_URL"),
            ("admin", "ADMIN_SERVICE_URL"),
            ("profile", "PROFILE_SERVICE_URL"),
        ]
        .into_iter()
        .map(|(name, var)| Route {
            name: name.to_string(),
            prefix: format!("/api/{name}"),
            upstream: env::get(var).trim_end_matches('/').to_string(),
        })
        .collect();
        Ok(Self {
            host: std::env::var("GATEWAY_HOST").unwrap_or_else(|_| "0.0.0.0".into()),
            port: number_var("PORT", 3000)?,
            routes,
            jwt_secret: Secret::new(env::get("JWT_SECRET")),
            events: Some(
                mfe_events::HubConfig {
                    urls: mfe_events::config::parse_urls(&env::get("RABBITMQ_URL")),
                    ..mfe_events::HubConfig::from_env()
                }
                .with_connection_name("mfe-gateway"),
            ),
            upstream_timeout: Duration::from_millis(number_var("GATEWAY_UPSTREAM_TIMEOUT_MS", 30_000)?),
            connect_timeout: Duration::from_millis(number_var("GATEWAY_CONNECT_TIMEOUT_MS", 2_000)?),
            health_interval: Duration::from_millis(number_var("GATEWAY_HEALTH_INTERVAL_MS", 5_000)?),
            ws_ping_interval: Duration::from_millis(number_var("WS_PING_INTERVAL_MS", 30_000)?),
            ws_pong_timeout: Duration::from_millis(number_var("WS_PONG_TIMEOUT_MS", 10_000)?),
            ws_send_queue: number_var("WS_SEND_QUEUE", 256)?,
        })
    }
}

/// A numeric variable, or `default` when unset or empty; garbage is an error naming the variable.
fn number_var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => {
            raw.trim().parse().map_err(|_| anyhow::anyhow!("{name} must be a non-negative whole number (got `{raw}`)"))
        }
        _ => Ok(default),
    }
}
