//! The auth service (SPEC §4): users, access/refresh tokens and device sessions, on its own
//! database `auth_db`.
//!
//! # Layout
//! - [`Settings`]: what the service reads at start-up (the common [`ServiceConfig`] plus
//!   `AUTH_REFRESH_GRACE_SECONDS`).
//! - [`Application`]: builds the state (pool, Redis, event hub, outbox relay), binds the
//!   listener and serves; `port()` / `run_until_stopped()` so tests bind port 0.
//! - [`users`]: signup, signin, me, user lookup for other services, admin listing.
//! - [`sessions`]: refresh tokens (rotation, the two-tab grace window, reuse detection,
//!   migrated POC-2 tokens), logout.
//! - [`devices`]: device sessions (register, list, revoke, logout-others).
//! - [`password`]: input rules, argon2id hashing, verification of POC-2 hashes (bcrypt, argon2).
//!
//! Every state change that others care about is written to the transactional outbox in the
//! same transaction as the change; the relay publishes it (`auth.user.*`, `auth.session.revoked`).

pub mod devices;
pub mod password;
pub mod sessions;
pub mod users;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::request::Parts,
    Router,
};
use mfe_events::{outbox, Envelope, Hub, OutboxRelay, RelayHandle};
use mfe_kit::{
    cache::{connect_redis, Cache},
    config::{env_number, ConfigError, Service},
    health::Health,
    metrics::Metrics,
    server, shutdown, ApiError, CorrelationId, JwtKeys, ServiceConfig,
};
use sqlx::{PgConnection, PgPool};
use tokio::net::TcpListener;

/// The auth_db schema, embedded; run at start-up and by the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

/// The name events carry as `source`.
pub const SOURCE: &str = "auth-service";

/// Lifetime of an access token: short, since a revoked session keeps it until it expires.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime).
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a user lookup stays in Redis, under `user:{id}` (the seed's key and lifetime, 5 min).
/// No write changes what the cache holds of a user (the password hash is not in it), so the
/// lifetime only bounds how long a user deleted straight from the database is still seen.
pub const USER_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// The name of the user cache: its keys are `user:{id}`, its hit/miss counters `cache="user"`.
pub const USER_CACHE: &str = "user";

/// `AUTH_REFRESH_GRACE_SECONDS` when unset: long enough for the tabs of one browser that woke
/// up together (each refreshes the moment its access token expires), short enough that a
/// thief replaying a rotated token a little later is still caught.
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(5);

/// Everything the auth service reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, database, broker, Redis and JWT secret, as every service reads them.
    pub service: ServiceConfig,
    /// `AUTH_REFRESH_GRACE_SECONDS` (default 5, 0 turns it off): for this long after a refresh
    /// token was rotated, presenting it again answers with the same successor instead of
    /// counting as reuse (two tabs refreshing at once; see [`sessions`]).
    pub refresh_grace: Duration,
}

impl Settings {
    /// Reads the whole configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_service(ServiceConfig::from_env(Service::Auth)?)
    }

    /// `service` plus the auth-only settings, read from the environment.
    pub fn for_service(service: ServiceConfig) -> Result<Self, ConfigError> {
        let refresh_grace = refresh_grace(env_number("AUTH_REFRESH_GRACE_SECONDS")?)?;
        Ok(Self { service, refresh_grace })
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
    /// User lookups by id (`users:<id>`), invalidated whenever the user row changes.
    pub users_cache: Cache,
    pub metrics: Metrics,
    /// Woken after each commit that enqueued events, so they leave at once.
    pub relay: RelayHandle,
    /// How refresh tokens rotate: the grace window and the key that derives successors.
    pub rotation: sessions::Rotation,
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

/// The client's address and user agent, recorded on device sessions. The address is the
/// first `X-Forwarded-For` hop (set by nginx/the gateway), else the peer address.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let ip = header("x-forwarded-for")
            .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .or_else(|| header("x-real-ip"))
            .or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()));
        Ok(ClientMeta { ip, user_agent: header("user-agent").map(|ua| ua.chars().take(512).collect()) })
    }
}

/// All `/api/auth` routes.
pub fn api_router(state: AppState) -> Router {
    Router::new().merge(users::router()).merge(sessions::router()).merge(devices::router()).with_state(state)
}

/// The running service: a bound listener and everything needed to serve it.
pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
    relay: RelayHandle,
    hub: Hub,
}

impl Application {
    /// [`Application::build_with`] the settings of `config` and of the environment.
    pub async fn build(config: ServiceConfig) -> anyhow::Result<Self> {
        Self::build_with(Settings::for_service(config).context("auth service configuration")?).await
    }

    /// Connects to the dependencies, migrates auth_db and binds the listener.
    pub async fn build_with(settings: Settings) -> anyhow::Result<Self> {
        let config = settings.service;
        let db = server::lazy_pool(&config.database_url).context("invalid AUTH_DATABASE_URL")?;
        server::migrate_or_retry(&db, &MIGRATOR, "auth_db").await.context("cannot migrate auth_db")?;
        let redis = connect_redis(&config.redis_url).await.with_context(|| {
            format!(
                "cannot connect to redis at {} — is the infrastructure running? try `mfe infra start`",
                config.redis_url
            )
        })?;
        let hub = Hub::connect(config.hub.clone().with_connection_name(SOURCE))
            .await
            .context("cannot connect to rabbitmq — is the infrastructure running? try `mfe infra start`")?;
        let relay = OutboxRelay::spawn(db.clone(), hub.clone());
        let metrics = Metrics::new("auth");
        let state = AppState {
            db: db.clone(),
            jwt: JwtKeys::new(config.jwt_secret.expose()),
            users_cache: Cache::new(USER_CACHE, redis.clone(), USER_CACHE_TTL, metrics.clone()),
            metrics: metrics.clone(),
            relay: relay.clone(),
            rotation: sessions::Rotation::new(&config.jwt_secret, settings.refresh_grace),
        };
        let probe_hub = hub.clone();
        let health = Health::new("auth").database(db).broker(move || probe_hub.is_connected()).redis(redis);
        let router = server::with_common_routes(api_router(state), health, metrics);
        let listener = server::bind(&config.bind, config.port)
            .await
            .with_context(|| format!("cannot bind {}:{} — is the port in use? set PORT", config.bind, config.port))?;
        let port = listener.local_addr()?.port();
        Ok(Self { port, listener, router, relay, hub })
    }

    /// The bound port (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then drains requests and flushes the outbox.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown::shutdown_signal()).await
    }

    /// Serves until `stop` resolves, then drains requests and flushes the outbox.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port, "auth service listening");
        let served = server::serve(self.listener, self.router, stop).await;
        self.relay.shutdown().await;
        self.hub.close().await;
        served.context("auth service stopped with an error")
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
