//! [`GatewayConfig`]: where the gateway listens, where each upstream service lives, and the
//! timing knobs of the proxy and the WebSocket heartbeat. Read from the environment through
//! [`mfe_core::env`] (every variable, its default and its doc line are in its table); the routes
//! come from the service table [`mfe_core::SERVICES`].

use std::time::Duration;

use mfe_core::env::{self, parse_env, parse_env_ms};
use mfe_core::{Secret, SERVICES};
use mfe_kit::client_ip::TrustedProxies;
use mfe_kit::replicas::parse_urls;

/// One upstream service and the path prefix routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Short name used in metrics labels and error messages (`auth`, `payments`, ...).
    pub name: String,
    /// Requests whose path is this prefix or starts with `prefix/` go to `upstreams`.
    pub prefix: String,
    /// Base URL of each replica of the service, e.g. `http://127.0.0.1:3001`; the path is
    /// forwarded unchanged.
    pub upstreams: Vec<String>,
}

impl Route {
    /// A route to one replica at `upstream`.
    pub fn new(name: &str, prefix: &str, upstream: &str) -> Self {
        Self { name: name.into(), prefix: prefix.into(), upstreams: vec![upstream.trim_end_matches('/').into()] }
    }
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
    /// How the gateway treats its clients: trusted proxies, header limits, the WebSocket cap.
    pub front: FrontDoor,
    /// Runtime threads of the binary (`GATEWAY_WORKERS`): 0 one per core, 1 a single-threaded
    /// runtime, N that many workers. `main` reads it first ([`GatewayConfig::workers_from_env`]):
    /// the runtime exists before the rest of the configuration is read.
    pub workers: usize,
}

impl GatewayConfig {
    /// Reads `PORT`, `GATEWAY_HOST`, the four `*_SERVICE_URL` (each one URL, or the URLs of the
    /// service's replicas, comma-separated), `JWT_SECRET`, `RABBITMQ_URL`,
    /// `GATEWAY_UPSTREAM_TIMEOUT_MS`, `GATEWAY_CONNECT_TIMEOUT_MS`, `GATEWAY_HEALTH_INTERVAL_MS`,
    /// `WS_PING_INTERVAL_MS`, `WS_PONG_TIMEOUT_MS`, `WS_SEND_QUEUE`, `GATEWAY_WORKERS` and those
    /// of [`FrontDoor::from_env`].
    pub fn from_env() -> anyhow::Result<Self> {
        let routes = SERVICES
            .iter()
            .map(|s| Route {
                name: s.name.to_string(),
                prefix: s.route_prefix.to_string(),
                upstreams: parse_urls(&env::get(s.service_url_var)),
            })
            .collect();
        Ok(Self {
            host: env::get("GATEWAY_HOST"),
            port: parse_env("PORT", 3000)?,
            routes,
            jwt_secret: Secret::new(env::get("JWT_SECRET")),
            events: Some(
                mfe_events::HubConfig {
                    urls: mfe_events::config::parse_urls(&env::get("RABBITMQ_URL")),
                    ..mfe_events::HubConfig::from_env()?
                }
                .with_connection_name("mfe-gateway"),
            ),
            upstream_timeout: parse_env_ms("GATEWAY_UPSTREAM_TIMEOUT_MS", Duration::from_secs(30))?,
            connect_timeout: parse_env_ms("GATEWAY_CONNECT_TIMEOUT_MS", Duration::from_secs(2))?,
            health_interval: parse_env_ms("GATEWAY_HEALTH_INTERVAL_MS", Duration::from_secs(5))?,
            ws_ping_interval: parse_env_ms("WS_PING_INTERVAL_MS", Duration::from_secs(30))?,
            ws_pong_timeout: parse_env_ms("WS_PONG_TIMEOUT_MS", Duration::from_secs(10))?,
            ws_send_queue: parse_env("WS_SEND_QUEUE", 256)?,
            front: FrontDoor::from_env()?,
            workers: Self::workers_from_env()?,
        })
    }

    /// `GATEWAY_WORKERS` alone, for `main`, which sizes the runtime before the rest is read.
    pub fn workers_from_env() -> anyhow::Result<usize> {
        Ok(parse_env("GATEWAY_WORKERS", 0)?)
    }
}

/// The gateway's defences towards its clients.
#[derive(Debug, Clone)]
pub struct FrontDoor {
    /// Peers whose `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// are passed on (`TRUSTED_PROXIES`, default loopback: nginx); from any other peer they are
    /// replaced.
    pub trusted_proxies: TrustedProxies,
    /// Time a client has to send a request's line and headers (idle keep-alive time included)
    /// before its connection is closed: a slowloris socket does not stay open.
    pub header_read_timeout: Duration,
    /// The largest request line plus headers; a larger one is answered 431.
    pub max_header_bytes: usize,
    /// WebSockets one user may hold open; 0 is no cap.
    pub ws_max_per_user: usize,
    /// The Redis holding the session denylist (`REDIS_URL`): an upgrade with the token of an
    /// ended session is refused as the services refuse it. `None` (tests): no denylist.
    pub redis_url: Option<String>,
}

impl Default for FrontDoor {
    /// The defaults of the environment contract.
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::default(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            ws_max_per_user: 16,
            redis_url: None,
        }
    }
}

impl FrontDoor {
    /// The smallest head limit accepted: below it ordinary browser requests (cookies, a token)
    /// would be refused.
    pub const MIN_HEADER_BYTES: usize = 8192;

    /// Reads `TRUSTED_PROXIES`, `GATEWAY_HEADER_READ_TIMEOUT_MS`, `GATEWAY_MAX_HEADER_BYTES`,
    /// `WS_MAX_CONNECTIONS_PER_USER` and `REDIS_URL`.
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Self::default();
        let max_header_bytes = parse_env("GATEWAY_MAX_HEADER_BYTES", d.max_header_bytes)?;
        if max_header_bytes < Self::MIN_HEADER_BYTES {
            anyhow::bail!(
                "GATEWAY_MAX_HEADER_BYTES={max_header_bytes} is below the minimum of {} bytes",
                Self::MIN_HEADER_BYTES
            );
        }
        let header_read_timeout = parse_env_ms("GATEWAY_HEADER_READ_TIMEOUT_MS", d.header_read_timeout)?;
        if header_read_timeout.is_zero() {
            anyhow::bail!("GATEWAY_HEADER_READ_TIMEOUT_MS=0: a header read timeout is required (e.g. 10000)");
        }
        Ok(Self {
            trusted_proxies: TrustedProxies::from_env()?,
            header_read_timeout,
            max_header_bytes,
            ws_max_per_user: parse_env("WS_MAX_CONNECTIONS_PER_USER", d.ws_max_per_user)?,
            redis_url: Some(env::get("REDIS_URL")),
        })
    }
}
