//! Settings, shared state and the [`Application`]: the kit's skeleton ([`mfe_kit::startup`])
//! wiring payments' use cases ([`crate::service`]) and routes; nothing else happens here.

use std::time::Duration;

use anyhow::Context;
use axum::{
    extract::{FromRef, State},
    http::{header::CONTENT_TYPE, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use mfe_core::{env, Service};
use mfe_kit::{
    accounts::Accounts,
    config::{ConfigError, ServiceConfig},
    health::{health_handler, Health},
    revocation::Revocations,
    server,
    startup::{Dependencies, Server},
    JwtKeys,
};

use crate::{
    list_cache::ListCache,
    metrics::BusinessMetrics,
    payment_cache::PaymentCache,
    psp::Psp,
    routes,
    service::{Caches, PaymentsService},
};

/// Everything the payments service reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, database, broker, Redis and JWT secret, as every service reads them.
    pub service: ServiceConfig,
    /// `PSP_AUTO_COMPLETE_MS`: when set (> 0), the stubbed payment provider moves each new
    /// payment to processing after this delay and to completed after the same delay again.
    pub psp_step: Option<Duration>,
    /// `PAYMENTS_LIST_CACHE_TTL_SECS` (default 60): how long a cached list page may live; writes
    /// invalidate pages at once, the TTL only bounds memory.
    pub list_cache_ttl: Duration,
    /// `PAYMENTS_DB_POOL_SIZE` (default 16): connections to payments_db.
    pub db_pool_size: u32,
}

impl Settings {
    /// Reads the whole configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_service(ServiceConfig::from_env(Service::Payments)?)
    }

    /// `service` plus the payments-only settings, read from the environment.
    pub fn for_service(service: ServiceConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            service,
            psp_step: env::parse_env_opt::<u64>("PSP_AUTO_COMPLETE_MS")?
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            list_cache_ttl: env::parse_env_secs("PAYMENTS_LIST_CACHE_TTL_SECS", Duration::from_secs(60))?
                .max(Duration::from_secs(1)),
            db_pool_size: env::parse_env("PAYMENTS_DB_POOL_SIZE", 16u32)?.clamp(1, 1000),
        })
    }
}

/// What every handler can reach: the use cases, and what the extractors and `/health` need.
#[derive(Clone)]
pub struct AppState {
    pub service: PaymentsService,
    pub jwt: JwtKeys,
    pub health: Health,
    /// Whether the caller's account exists, asked of auth before a payment is created.
    pub accounts: Accounts,
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

/// `GET /metrics`: the kit's HTTP/cache/event metrics followed by the business metrics.
async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let body = format!("{}{}", state.service.metrics.render(), state.service.business.render());
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// The service's router on `state`, with the kit's layers (request body limit, request
/// metrics, correlation id) and its own `/metrics` (with the business metrics).
pub fn router(state: AppState) -> Router {
    let metrics = state.service.metrics.clone();
    let app = Router::new()
        .merge(routes::router())
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state);
    server::with_common_layers(app, metrics)
}

/// A built service: bound, connected (or connecting), ready to serve.
pub struct Application {
    server: Server,
    state: AppState,
}

impl Application {
    /// Connects to the dependencies (see [`mfe_kit::startup`] for what may be down), migrates
    /// payments_db and binds the listener (port 0 picks a free port; see [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let deps = Dependencies::connect(cfg, settings.db_pool_size, &crate::MIGRATOR).await?.with_redis(cfg).await;
        // List pages are tagged with the database name, so apps on different databases (tests)
        // never share pages. Payments are keyed by id alone (`payment:{id}`, as the seed names
        // it): ids are UUIDs, unique across databases, and every replica shares the entries.
        let namespace = deps.db.connect_options().get_database().unwrap_or("payments").to_string();
        let cache = deps.redis.clone().map(|conn| Caches {
            pages: ListCache::new(conn.clone(), settings.list_cache_ttl, deps.metrics.clone(), namespace),
            payments: PaymentCache::new(conn, deps.metrics.clone()),
        });
        let broker = deps.broker(cfg);
        let jwt = JwtKeys::new(cfg.jwt_secret.expose())
            .with_revocations(Revocations::for_redis(deps.redis.clone(), deps.metrics.registry()));
        let state = AppState {
            service: PaymentsService {
                db: deps.db.clone(),
                cache,
                broker: broker.clone(),
                metrics: deps.metrics.clone(),
                business: BusinessMetrics::new(),
                psp: settings.psp_step.map(Psp::new),
            },
            jwt: jwt.clone(),
            accounts: Accounts::new("payments", cfg.urls.auth.clone(), jwt, deps.redis.clone(), &deps.metrics),
            health: deps.health(cfg, &broker),
        };
        let server = Server::bind(cfg, router(state.clone()), broker).await.context("payments service")?;
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
