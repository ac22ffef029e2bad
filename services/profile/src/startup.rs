//! Settings, shared state and the [`Application`]: the kit's skeleton ([`mfe_kit::startup`])
//! with profile's state, routes and consumer.

use anyhow::Context;
use axum::extract::FromRef;
use mfe_core::Service;
use mfe_events::{types, Subscription};
use mfe_kit::{
    accounts::Accounts,
    cache::Cache,
    config::ConfigError,
    metrics::Metrics,
    revocation::Revocations,
    server,
    startup::{Dependencies, Server},
    JwtKeys, ServiceConfig,
};
use sqlx::PgPool;

use crate::{consumer, profiles, CONSUMER, PROFILE_CACHE_TTL};

/// Everything the profile service reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port, database, broker, Redis and JWT secret, as every service reads them.
    pub service: ServiceConfig,
    /// What the `auth.user.registered` consumer reads: [`default_subscription`], or the queue
    /// named by `PROFILE_EVENTS_QUEUE` (benchmarks, side-by-side instances); tests pass a
    /// private exclusive one.
    pub subscription: Subscription,
    /// Connections to profile_db (16).
    pub db_pool_size: u32,
}

impl Settings {
    /// Reads the whole configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_service(ServiceConfig::from_env(Service::Profile)?)
    }

    /// `service` plus the profile-only settings, read from the environment.
    pub fn for_service(service: ServiceConfig) -> Result<Self, ConfigError> {
        let mut subscription = default_subscription();
        if let Some(queue) = mfe_core::env::lookup("PROFILE_EVENTS_QUEUE") {
            subscription.queue = queue;
        }
        Ok(Self { service, subscription, db_pool_size: 16 })
    }
}

/// The subscription the service consumes in production: the durable `profile.events.queue`.
pub fn default_subscription() -> Subscription {
    Subscription::durable(CONSUMER, &[types::AUTH_USER_REGISTERED])
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    /// Profiles by user id (`profile:{userId}`), deleted on every write; `None` when Redis was
    /// unreachable at start.
    pub profiles_cache: Option<Cache>,
    pub metrics: Metrics,
    /// The outbox relay (the service publishes nothing yet, but its outbox table exists and the
    /// skeleton is the same as everywhere) and the consumer.
    pub broker: mfe_events::service_link::ServiceLink,
    /// Whether the caller's account exists, asked of auth before a profile is written.
    pub accounts: Accounts,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

/// A built service: bound, connected (or connecting), ready to serve.
pub struct Application {
    server: Server,
    state: AppState,
}

impl Application {
    /// Connects to the dependencies (see [`mfe_kit::startup`] for what may be down), migrates
    /// profile_db, starts consuming in the background and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let cfg = &settings.service;
        let deps = Dependencies::connect(cfg, settings.db_pool_size, &crate::MIGRATOR).await?.with_redis(cfg).await;
        let profiles_cache =
            deps.redis.clone().map(|conn| Cache::new("profile", conn, PROFILE_CACHE_TTL, deps.metrics.clone()));
        let handler = consumer::UserRegistered {
            db: deps.db.clone(),
            cache: profiles_cache.clone(),
            metrics: deps.metrics.clone(),
        };
        let broker = deps.broker_consuming(cfg, settings.subscription.clone(), handler);
        let jwt = JwtKeys::new(cfg.jwt_secret.expose())
            .with_revocations(Revocations::for_redis(deps.redis.clone(), deps.metrics.registry()));
        let state = AppState {
            db: deps.db.clone(),
            jwt: jwt.clone(),
            accounts: Accounts::new("profile", cfg.urls.auth.clone(), jwt, deps.redis.clone(), &deps.metrics),
            profiles_cache,
            metrics: deps.metrics.clone(),
            broker: broker.clone(),
        };
        let router = server::with_common_routes(
            profiles::router().with_state(state.clone()),
            deps.health(cfg, &broker),
            deps.metrics,
        );
        let server = Server::bind(cfg, router, broker).await.context("profile service")?;
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

    /// Serves until SIGTERM/SIGINT, then drains requests, stops consuming, flushes the outbox.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.run_until_stopped().await
    }

    /// Serves until `stop` resolves, then as [`Application::run_until_stopped`].
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        self.server.run_until(stop).await
    }
}
