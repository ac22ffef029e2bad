//! Settings, shared state and the [`Application`] that owns the listener.

use std::time::Duration;

use axum::{
    extract::{FromRef, State},
    http::{header::CONTENT_TYPE, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use mfe_events::service_link::ServiceLink;
use mfe_kit::{
    config::{env_number, ConfigError, Service, ServiceConfig},
    health::{health_handler, Health},
    metrics::Metrics,
    JwtKeys,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{
    domain::PaymentStatus,
    list_cache::ListCache,
    metrics::BusinessMetrics,
    payment_cache::PaymentCache,
    psp::Psp,
    routes,
    store::{self, Payment, StatusChangeError},
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
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env(Service::Payments)?,
            psp_step: env_number("PSP_AUTO_COMPLETE_MS")?.filter(|ms| *ms > 0).map(Duration::from_millis),
            list_cache_ttl: Duration::from_secs(env_number("PAYMENTS_LIST_CACHE_TTL_SECS")?.unwrap_or(60).max(1)),
            db_pool_size: env_number("PAYMENTS_DB_POOL_SIZE")?.unwrap_or(16).clamp(1, 1000) as u32,
        })
    }
}

/// The broker side of the service (hub, outbox relay), connected in the background: see
/// [`ServiceLink`].
pub type BrokerLink = ServiceLink;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    /// `None` when Redis was unreachable at start: lists are then read from the database.
    pub cache: Option<ListCache>,
    /// `payment:{id}`; `None` like `cache`.
    pub payments_cache: Option<PaymentCache>,
    pub metrics: Metrics,
    pub business: BusinessMetrics,
    pub health: Health,
    pub broker: BrokerLink,
    pub psp: Option<Psp>,
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

impl AppState {
    /// After a committed write of `payment`: stale list pages out and the new record into
    /// `payment:{id}` (both at once), relay woken.
    pub async fn after_write(&self, payment: &Payment) {
        let pages = async {
            if let Some(cache) = &self.cache {
                cache.invalidate(payment).await;
            }
        };
        let record = async {
            if let Some(cache) = &self.payments_cache {
                cache.put(payment).await;
            }
        };
        tokio::join!(pages, record);
        self.broker.notify();
    }

    /// Moves a payment to `status` (see [`store::change_status`]) and does the after-write work.
    pub async fn change_status(
        &self,
        id: &str,
        status: PaymentStatus,
        message: Option<&str>,
        psp_transaction_id: Option<&str>,
        correlation_id: Option<String>,
    ) -> Result<Payment, StatusChangeError> {
        let (before, after) =
            store::change_status(&self.db, id, status, message, psp_transaction_id, correlation_id).await?;
        self.after_write(&after).await;
        self.business.status_changed(status.as_str());
        self.metrics.event_published(status.event_type());
        tracing::info!(payment_id = %id, from = %before.status, to = %after.status, "payment status changed");
        Ok(after)
    }
}

/// `GET /metrics`: the kit's HTTP/cache/event metrics followed by the business metrics.
async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let body = format!("{}{}", state.metrics.render(), state.business.render());
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// The service's router on `state`, with the kit's layers (request body limit, request
/// metrics, correlation id).
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let app = Router::new()
        .merge(routes::router())
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state);
    mfe_kit::server::with_common_layers(app, metrics)
}

/// A built service: bound, connected, ready to serve.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Connects to payments_db (migrating it) and Redis, starts the broker link and binds the listener
    /// (port 0 picks a free port; see [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let db = mfe_kit::server::connect_and_migrate(
            &cfg.database_url,
            settings.db_pool_size,
            &crate::MIGRATOR,
            "payments_db",
        )
        .await?;
        let metrics = Metrics::new(Service::Payments.name());
        let redis = match mfe_kit::cache::connect_redis(&cfg.redis_url).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, url = %cfg.redis_url, "redis unreachable; payment lists are served without a cache");
                None
            }
        };
        // Cache keys carry the database name, so apps on different databases (tests) never share pages.
        let namespace = db.connect_options().get_database().unwrap_or("payments").to_string();
        let cache = redis.clone().map(|conn| ListCache::new(conn, settings.list_cache_ttl, metrics.clone(), namespace));
        // Keyed by id alone (`payment:{id}`, as the seed names it): ids are UUIDs, unique across
        // databases, and every replica of the service shares the entries.
        let payments_cache = redis.clone().map(|conn| PaymentCache::new(conn, metrics.clone()));
        let broker = ServiceLink::connect_in_background(
            cfg.hub.clone().with_connection_name("payments-service"),
            db.clone(),
            "payments",
        );
        let mut health = Health::new(Service::Payments.name()).database(db.clone());
        let probe = broker.clone();
        health = health.broker(move || probe.is_connected());
        if let Some(conn) = redis {
            health = health.redis(conn);
        }
        let state = AppState {
            db,
            jwt: JwtKeys::new(cfg.jwt_secret.expose()),
            cache,
            payments_cache,
            metrics,
            business: BusinessMetrics::new(),
            health,
            broker,
            psp: settings.psp_step.map(Psp::new),
        };
        let listener = mfe_kit::server::listen(&cfg.bind, cfg.port).await?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the pool and the broker link through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM/Ctrl-C, then flushes the outbox and closes the broker connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let broker = self.state.broker.clone();
        mfe_kit::server::serve_until_signal("payments", self.listener, router(self.state)).await?;
        broker.shutdown().await;
        Ok(())
    }
}
