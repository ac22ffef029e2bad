//! Settings, shared state and the [`Application`]: the kit's skeleton ([`mfe_kit::startup`])
//! with admin's state, routes and audit consumer.

use std::time::Duration;

use anyhow::Context;
use axum::{extract::FromRef, Router};
use mfe_core::{env, Service};
use mfe_events::{service_link::ServiceLink, Subscription};
use mfe_kit::{
    config::{ConfigError, ServiceConfig, ServiceUrls},
    health::Health,
    metrics::Metrics,
    revocation::Revocations,
    startup::{Dependencies, Server},
    JwtKeys,
};
use sqlx::PgPool;

use crate::{
    audit::{AuditHandler, CONSUMER},
    routes,
};

/// The default queue of the audit consumer (SPEC §7: `<service>.events.queue`).
pub const DEFAULT_EVENTS_QUEUE: &str = "admin.events.queue";

/// Everything the admin service reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, database, broker, Redis, JWT secret and the other services' URLs.
    pub service: ServiceConfig,
    /// `ADMIN_EVENTS_QUEUE`: the queue the audit consumer reads, bound to every event (`#`).
    pub events_queue: String,
    /// `ADMIN_EVENTS_QUEUE_EXCLUSIVE=1`: declare the queue exclusive to this process (deleted
    /// with its connection), for tests and throw-away replicas that must not leave a durable
    /// queue collecting every event behind.
    pub events_queue_exclusive: bool,
    /// `ADMIN_HEALTH_TIMEOUT_MS` (default 2000): how long system health waits for each service.
    pub health_timeout: Duration,
    /// `ADMIN_DB_POOL_SIZE` (default 8).
    pub db_pool_size: u32,
}

impl Settings {
    /// Reads the whole configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_service(ServiceConfig::from_env(Service::Admin)?)
    }

    /// `service` plus the admin-only settings, read from the environment.
    pub fn for_service(service: ServiceConfig) -> Result<Self, ConfigError> {
        let queue = env::lookup("ADMIN_EVENTS_QUEUE");
        let exclusive = env::parse_env_bool("ADMIN_EVENTS_QUEUE_EXCLUSIVE", false)?;
        Ok(Self {
            service,
            events_queue: queue.unwrap_or_else(|| DEFAULT_EVENTS_QUEUE.to_string()),
            events_queue_exclusive: exclusive,
            health_timeout: env::parse_env_ms("ADMIN_HEALTH_TIMEOUT_MS", Duration::from_millis(2000))?
                .max(Duration::from_millis(1)),
            db_pool_size: env::parse_env("ADMIN_DB_POOL_SIZE", 8u32)?.clamp(1, 1000),
        })
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    pub metrics: Metrics,
    pub health: Health,
    /// The outbox relay, the audit consumer and the broker connection.
    pub broker: ServiceLink,
    /// For calls to the other services (users, system health).
    pub http: reqwest::Client,
    pub urls: ServiceUrls,
    pub health_timeout: Duration,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl FromRef<AppState> for Health {
    fn from_ref(state: &AppState) -> Self {
        state.health.clone()
    }
}

impl FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// The service's router on `state`, with the kit's `/health`, `/metrics` and layers (request
/// body limit, request metrics, correlation id).
pub fn router(state: AppState) -> Router {
    let (health, metrics) = (state.health.clone(), state.metrics.clone());
    mfe_kit::server::with_common_routes(routes::router().with_state(state), health, metrics)
}

/// A built service: bound, connected (or connecting), ready to serve.
pub struct Application {
    server: Server,
    state: AppState,
}

impl Application {
    /// Connects to the dependencies (see [`mfe_kit::startup`] for what may be down), migrates
    /// admin_db, starts the audit consumer in the background and binds the listener (port 0:
    /// any).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let deps = Dependencies::connect(cfg, settings.db_pool_size, &crate::MIGRATOR).await?;
        let subscription = Subscription {
            consumer: CONSUMER.to_string(),
            queue: settings.events_queue.clone(),
            bindings: vec!["#".to_string()],
            exclusive: settings.events_queue_exclusive,
        };
        let wake = crate::audit::RelayWake::default();
        let handler = AuditHandler { db: deps.db.clone(), metrics: deps.metrics.clone(), wake: wake.clone() };
        let broker = deps.broker_consuming(cfg, subscription, handler);
        let _ = wake.set(broker.clone());
        let http = reqwest::Client::builder()
            .connect_timeout(settings.health_timeout)
            .timeout(Duration::from_secs(10))
            .build()
            .context("admin service: building the http client")?;
        let state = AppState {
            db: deps.db.clone(),
            jwt: JwtKeys::new(cfg.jwt_secret.expose()).with_revocations(Revocations::for_redis(
                mfe_kit::cache::connect_redis(&cfg.redis_url).await.ok(),
                deps.metrics.registry(),
            )),
            metrics: deps.metrics.clone(),
            health: deps.health(cfg, &broker),
            broker: broker.clone(),
            http,
            urls: cfg.urls.clone(),
            health_timeout: settings.health_timeout,
        };
        let server = Server::bind(cfg, router(state.clone()), broker).await.context("admin service")?;
        Ok(Self { server, state })
    }

    /// The bound port (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The shared state (tests reach the pool and the broker link through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM/Ctrl-C, then flushes the outbox and closes the broker connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.run_until_stopped().await
    }

    /// Serves until `stop` resolves, then as [`Application::run_until_stopped`].
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.server.run_until(stop).await
    }
}
