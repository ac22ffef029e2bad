//! Settings, shared state, the background broker link (audit consumer + outbox relay) and the
//! [`Application`] that owns the listener.

use std::time::Duration;

use anyhow::Context;
use axum::{extract::FromRef, Router};
use mfe_events::{service_link::ServiceLink, Subscription};
use mfe_kit::{
    config::{env_number, ConfigError, Service, ServiceConfig, ServiceUrls},
    health::Health,
    metrics::Metrics,
    JwtKeys,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

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
    pub fn from_env() -> Result<Self, ConfigError> {
        let queue = std::env::var("ADMIN_EVENTS_QUEUE").ok().filter(|q| !q.trim().is_empty());
        let exclusive = std::env::var("ADMIN_EVENTS_QUEUE_EXCLUSIVE").is_ok_and(|v| matches!(v.trim(), "1" | "true"));
        Ok(Self {
            service: ServiceConfig::from_env(Service::Admin)?,
            events_queue: queue.unwrap_or_else(|| DEFAULT_EVENTS_QUEUE.to_string()),
            events_queue_exclusive: exclusive,
            health_timeout: Duration::from_millis(env_number("ADMIN_HEALTH_TIMEOUT_MS")?.unwrap_or(2000).max(1)),
            db_pool_size: env_number("ADMIN_DB_POOL_SIZE")?.unwrap_or(8).clamp(1, 1000) as u32,
        })
    }
}

/// The broker side (hub, outbox relay, audit consumer), connected in the background: see
/// [`ServiceLink`].
pub type BrokerLink = ServiceLink;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    pub metrics: Metrics,
    pub health: Health,
    pub broker: BrokerLink,
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

pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects to admin_db (migrating it), starts the broker link and binds the listener (port 0: any).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let db = mfe_kit::server::connect_and_migrate(
            &cfg.database_url,
            settings.db_pool_size,
            &crate::MIGRATOR,
            "admin_db",
        )
        .await?;
        let metrics = Metrics::new(Service::Admin.name());
        let subscription = Subscription {
            consumer: CONSUMER.to_string(),
            queue: settings.events_queue.clone(),
            bindings: vec!["#".to_string()],
            exclusive: settings.events_queue_exclusive,
        };
        let wake = crate::audit::RelayWake::default();
        let handler = AuditHandler { db: db.clone(), metrics: metrics.clone(), wake: wake.clone() };
        let broker = ServiceLink::connect_consuming_in_background(
            cfg.hub.clone().with_connection_name("admin-service"),
            db.clone(),
            "admin",
            subscription,
            handler,
        );
        let _ = wake.set(broker.clone());
        let probe = broker.clone();
        let health = Health::new(Service::Admin.name()).database(db.clone()).broker(move || probe.is_connected());
        let http = reqwest::Client::builder()
            .connect_timeout(settings.health_timeout)
            .timeout(Duration::from_secs(10))
            .build()
            .context("admin service: building the http client")?;
        let state = AppState {
            db,
            jwt: JwtKeys::new(cfg.jwt_secret.expose()),
            metrics,
            health,
            broker,
            http,
            urls: cfg.urls.clone(),
            health_timeout: settings.health_timeout,
        };
        let listener = mfe_kit::server::listen(&cfg.bind, cfg.port).await?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM/Ctrl-C, then flushes the outbox and closes the broker connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let broker = self.state.broker.clone();
        mfe_kit::server::serve_until_signal("admin", self.listener, router(self.state)).await?;
        broker.shutdown().await;
        Ok(())
    }
}
