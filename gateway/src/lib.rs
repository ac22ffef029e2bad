//! `mfe-gateway`: the platform's single front door behind nginx (SPEC §8).
//!
//! - `/api/auth|payments|admin|profile/*` → the service, streamed both ways ([`proxy`]);
//! - `/ws` → WebSocket with JWT check before the upgrade, rooms and heartbeat ([`ws`]), fed by
//!   RabbitMQ events through a per-replica queue ([`bridge`], routing in [`routing`]);
//! - `/health` (the gateway and its upstreams) and `/metrics` (Prometheus, [`metrics`]).
//!
//! # Layout
//! - [`config`]: [`GatewayConfig`] from the environment.
//! - [`Application`]: binds the listener, owns background tasks, `port()` / `run_until_stopped()`.
//!
//! Invariant: only the gateway speaks WebSocket; services publish events and never hold sockets.

pub mod bridge;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod ws;

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::header::CONTENT_TYPE,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use mfe_kit::{revocation::Revocations, JwtKeys};

pub use config::{GatewayConfig, Route};
use metrics::GatewayMetrics;
use proxy::Proxy;
use ws::{limit::UserSockets, rooms::Rooms, socket::Heartbeat};

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub proxy: Proxy,
    pub rooms: Rooms,
    pub jwt: JwtKeys,
    pub heartbeat: Heartbeat,
    pub metrics: GatewayMetrics,
    /// Open sockets per user and their cap.
    pub ws_slots: UserSockets,
}

/// The gateway's routes; everything that is not `/ws`, `/health` or `/metrics` is proxied.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .route("/ws", get(ws::ws_handler))
        .fallback(proxy_handler)
        .with_state(state)
}

async fn proxy_handler(State(state): State<AppState>, req: Request) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    state.proxy.forward(req, peer).await
}

async fn health(State(state): State<AppState>) -> Response {
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .proxy
        .upstream_states()
        .into_iter()
        .map(|(name, up)| (name, serde_json::Value::from(state_word(up))))
        .collect();
    let replicas: serde_json::Map<String, serde_json::Value> = state
        .proxy
        .replica_states()
        .into_iter()
        .map(|(name, replicas)| {
            let urls: serde_json::Map<String, serde_json::Value> =
                replicas.into_iter().map(|(url, up)| (url, state_word(up).into())).collect();
            (name, urls.into())
        })
        .collect();
    axum::Json(serde_json::json!({
        "status": "ok",
        "service": "gateway",
        "websocketConnections": state.metrics.ws_open_now(),
        "upstreams": upstreams,
        "replicas": replicas,
    }))
    .into_response()
}

/// `/health`'s word for whether a route or replica takes requests.
fn state_word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

/// A built gateway: listener bound, background tasks started.
pub struct Application {
    listener: tokio::net::TcpListener,
    port: u16,
    state: AppState,
    health_tasks: Vec<tokio::task::JoinHandle<()>>,
    bridge: Option<bridge::BridgeHandle>,
    limits: server::Limits,
}

/// The session denylist of the services, on `front.redis_url`; `None` without one, or (with
/// the warning of [`Revocations::for_redis`]) when Redis is unreachable at start.
async fn revocations(front: &config::FrontDoor, metrics: &GatewayMetrics) -> Option<Revocations> {
    let url = front.redis_url.as_deref()?;
    let conn = match mfe_kit::cache::connect_redis(url).await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(error = %e, url = %mfe_core::redact_url_password(url), "redis unreachable");
            None
        }
    };
    Revocations::for_redis(conn, metrics.registry())
}

impl Application {
    /// Binds `host:port` (port 0 picks a free one), starts the upstream health checks and the
    /// event bridge.
    pub async fn build(cfg: GatewayConfig) -> anyhow::Result<Self> {
        let metrics = GatewayMetrics::new();
        let proxy = Proxy::new(&cfg.routes, cfg.upstream_timeout, cfg.connect_timeout, metrics.clone())?
            .with_trusted_proxies(cfg.front.trusted_proxies.clone());
        let rooms = Rooms::new(cfg.ws_send_queue, metrics.clone());
        let state = AppState {
            proxy: proxy.clone(),
            rooms: rooms.clone(),
            jwt: JwtKeys::new(cfg.jwt_secret.expose()).with_revocations(revocations(&cfg.front, &metrics).await),
            heartbeat: Heartbeat { ping_interval: cfg.ws_ping_interval, pong_timeout: cfg.ws_pong_timeout },
            metrics: metrics.clone(),
            ws_slots: UserSockets::new(cfg.front.ws_max_per_user),
        };
        let listener = mfe_kit::server::bind(&cfg.host, cfg.port).await.map_err(|e| e.context("gateway"))?;
        let port = listener.local_addr()?.port();
        let health_tasks = proxy.spawn_health_checks(cfg.health_interval);
        let bridge = cfg.events.map(|hub_cfg| bridge::start(hub_cfg, bridge::Bridge { rooms, metrics }));
        let limits = server::Limits {
            header_read_timeout: cfg.front.header_read_timeout,
            max_header_bytes: cfg.front.max_header_bytes,
        };
        Ok(Self { listener, port, state, health_tasks, bridge, limits })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until the event bridge consumes (tests publish only after this), up to `max`.
    pub async fn wait_for_events(&mut self, max: Duration) -> bool {
        match self.bridge.as_mut() {
            Some(b) => b.wait_connected(max).await,
            None => false,
        }
    }

    /// Serves until `shutdown` resolves, then stops the background tasks.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let proxy = self.state.proxy.clone();
        server::serve(self.listener, router(self.state), proxy, self.limits, shutdown).await;
        for task in self.health_tasks {
            task.abort();
        }
        if let Some(bridge) = self.bridge {
            bridge.stop().await;
        }
        Ok(())
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(mfe_kit::shutdown::shutdown_signal()).await
    }
}
