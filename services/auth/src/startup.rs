//! Settings, shared state and the [`Application`]: the kit's skeleton ([`mfe_kit::startup`])
//! with auth's state and routes.

use std::time::Duration;

use anyhow::Context;
use axum::{extract::FromRef, Router};
use mfe_core::Service;
use mfe_events::{outbox, service_link::ServiceLink, Envelope};
use mfe_kit::{
    cache::Cache,
    config::ConfigError,
    metrics::Metrics,
    revocation::Revocations,
    server,
    startup::{Dependencies, Server},
    ApiError, CorrelationId, JwtKeys, ServiceConfig,
};
use sqlx::{PgConnection, PgPool};

use crate::{devices, sessions, throttle, users, DEFAULT_REFRESH_GRACE, SOURCE, USER_CACHE, USER_CACHE_TTL};

/// Everything the auth service reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, database, broker, Redis and JWT secret, as every service reads them.
    pub service: ServiceConfig,
    /// `AUTH_REFRESH_GRACE_SECONDS` (default 5, 0 turns it off): for this long after a refresh
    /// token was rotated, presenting it again answers with the same successor instead of
    /// counting as reuse (two tabs refreshing at once; see [`sessions`]).
    pub refresh_grace: Duration,
    /// Connections to auth_db (16).
    pub db_pool_size: u32,
    /// Sign-in throttling (`AUTH_SIGNIN_*`, see [`throttle`]).
    pub signin_limits: throttle::Limits,
}

impl Settings {
    /// Reads the whole configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_service(ServiceConfig::from_env(Service::Auth)?)
    }

    /// `service` plus the auth-only settings, read from the environment.
    pub fn for_service(service: ServiceConfig) -> Result<Self, ConfigError> {
        let refresh_grace = refresh_grace(mfe_core::env::parse_env_opt("AUTH_REFRESH_GRACE_SECONDS")?)?;
        Ok(Self { service, refresh_grace, db_pool_size: 16, signin_limits: throttle::Limits::from_env()? })
    }
}

/// The grace window of `AUTH_REFRESH_GRACE_SECONDS=secs`: unset is the default, 0 turns it off,
/// more than 5 minutes is refused (a rotated token would stay usable that long).
fn refresh_grace(secs: Option<u64>) -> Result<Duration, ConfigError> {
    match secs {
        None => Ok(DEFAULT_REFRESH_GRACE),
        Some(secs) if secs <= 300 => Ok(Duration::from_secs(secs)),
        Some(secs) => Err(ConfigError(format!(
            "AUTH_REFRESH_GRACE_SECONDS={secs} is too long: a rotated refresh token stays usable that long; \
             use 0 to 300 (default 5)"
        ))),
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    /// User lookups by id (`user:{id}`), invalidated whenever the user row changes; `None`
    /// when Redis was unreachable at start (lookups then read the database).
    pub users_cache: Option<Cache>,
    pub metrics: Metrics,
    /// The outbox relay and the broker connection; woken after each commit that enqueued
    /// events, so they leave at once.
    pub broker: ServiceLink,
    /// How refresh tokens rotate: the grace window and the key that derives successors.
    pub rotation: sessions::Rotation,
    /// Failed sign-ins per email and per client address (see [`throttle`]).
    pub throttle: throttle::Throttle,
    /// The prefix of the `sid` of every access token (see [`sessions::session_id`]): 8 hex
    /// digits of the SHA-256 of the database name, the same for every replica of one auth_db.
    pub session_scope: String,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

impl AppState {
    /// Writes `data` as an event of `event_type` into the outbox, inside the caller's transaction.
    pub async fn enqueue_event(
        &self,
        conn: &mut PgConnection,
        event_type: &str,
        data: serde_json::Value,
        correlation: &CorrelationId,
    ) -> Result<(), ApiError> {
        let env = Envelope::new(event_type, SOURCE, data).with_correlation_id(Some(correlation.0.clone()));
        outbox::enqueue(conn, &env).await?;
        self.metrics.event_published(event_type);
        Ok(())
    }
}

/// All `/api/auth` routes.
pub fn router() -> Router<AppState> {
    Router::new().merge(users::router()).merge(sessions::router()).merge(devices::router())
}

/// A built service: bound, connected (or connecting), ready to serve.
pub struct Application {
    server: Server,
    state: AppState,
}

impl Application {
    /// Connects to the dependencies (see [`mfe_kit::startup`] for what may be down), migrates
    /// auth_db and binds the listener (port 0 picks a free port; see [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let deps = Dependencies::connect(cfg, settings.db_pool_size, &crate::MIGRATOR).await?.with_redis(cfg).await;
        let broker = deps.broker(cfg);
        let database = deps.db.connect_options().get_database().unwrap_or("auth").to_string();
        let state = AppState {
            session_scope: hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(database.as_bytes())[..4]),
            db: deps.db.clone(),
            jwt: JwtKeys::new(cfg.jwt_secret.expose())
                .with_revocations(Revocations::for_redis(deps.redis.clone(), deps.metrics.registry())),
            users_cache: deps
                .redis
                .clone()
                .map(|conn| Cache::new(USER_CACHE, conn, USER_CACHE_TTL, deps.metrics.clone())),
            metrics: deps.metrics.clone(),
            broker: broker.clone(),
            rotation: sessions::Rotation::new(&cfg.jwt_secret, settings.refresh_grace),
            throttle: throttle::Throttle::new(settings.signin_limits, deps.redis.clone(), &database),
        };
        let router =
            server::with_common_routes(router().with_state(state.clone()), deps.health(cfg, &broker), deps.metrics);
        let server = Server::bind(cfg, router, broker).await.context("auth service")?;
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

    /// Serves until SIGTERM/SIGINT, then drains requests and flushes the outbox.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.run_until_stopped().await
    }

    /// Serves until `stop` resolves, then drains requests and flushes the outbox.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.server.run_until(stop).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_grace_defaults_to_5_s_can_be_off_and_is_at_most_5_min() {
        assert_eq!(refresh_grace(None).unwrap(), Duration::from_secs(5));
        assert_eq!(refresh_grace(Some(0)).unwrap(), Duration::ZERO);
        assert_eq!(refresh_grace(Some(300)).unwrap(), Duration::from_secs(300));
        let err = refresh_grace(Some(301)).unwrap_err().to_string();
        assert!(err.contains("AUTH_REFRESH_GRACE_SECONDS=301") && err.contains("0 to 300"), "{err}");
    }
}
