//! The profile service (SPEC §4): `GET/PUT /api/profile/me` on its own database `profile_db`,
//! and the consumer that creates an empty profile when `auth.user.registered` arrives.
//!
//! # Layout
//! - [`Application`]: state (pool, Redis, event hub, outbox relay, consumer), listener, serve.
//! - [`profiles`]: the HTTP routes, validation and the Redis cache of profiles.
//! - [`consumer`]: the `auth.user.registered` handler (idempotent via `processed_events`).

pub mod consumer;
pub mod profiles;

use std::time::Duration;

use anyhow::Context;
use axum::{extract::FromRef, Router};
use mfe_events::{types, Hub, OutboxRelay, RelayHandle, Subscription, SubscriptionHandle};
use mfe_kit::{
    cache::{connect_redis, Cache},
    health::Health,
    metrics::Metrics,
    server, shutdown, JwtKeys, ServiceConfig,
};
use sqlx::PgPool;
use tokio::net::TcpListener;

/// The profile_db schema, embedded; run at start-up and by the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/profile");

/// The consumer name recorded in `processed_events` and on dead-lettered messages.
pub const CONSUMER: &str = "profile";

/// How long a profile stays in Redis, under `profile:{userId}` (the seed's key and lifetime).
pub const PROFILE_CACHE_TTL: Duration = Duration::from_secs(300);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub jwt: JwtKeys,
    /// Profiles by user id (`profiles:<userId>`), deleted on every write.
    pub profiles_cache: Cache,
    pub metrics: Metrics,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> Self {
        state.jwt.clone()
    }
}

/// The subscription the service consumes in production: the durable `profile.events.queue`.
pub fn default_subscription() -> Subscription {
    Subscription::durable(CONSUMER, &[types::AUTH_USER_REGISTERED])
}

/// The running service.
pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
    relay: RelayHandle,
    consumer: SubscriptionHandle,
    hub: Hub,
}

impl Application {
    /// Builds the service consuming [`default_subscription`].
    pub async fn build(config: ServiceConfig) -> anyhow::Result<Self> {
        Self::build_with_subscription(config, default_subscription()).await
    }

    /// Builds the service consuming `subscription` (tests pass a private queue).
    pub async fn build_with_subscription(config: ServiceConfig, subscription: Subscription) -> anyhow::Result<Self> {
        let db = server::lazy_pool(&config.database_url).context("invalid PROFILE_DATABASE_URL")?;
        server::migrate_or_retry(&db, &MIGRATOR, "profile_db").await.context("cannot migrate profile_db")?;
        let redis = connect_redis(&config.redis_url).await.with_context(|| {
            format!(
                "cannot connect to redis at {} — is the infrastructure running? try `mfe infra start`",
                config.redis_url
            )
        })?;
        let hub = Hub::connect(config.hub.clone().with_connection_name("profile-service"))
            .await
            .context("cannot connect to rabbitmq — is the infrastructure running? try `mfe infra start`")?;
        // The profile service publishes nothing yet, but its outbox table exists and the relay
        // keeps the pattern uniform should it start to.
        let relay = OutboxRelay::spawn(db.clone(), hub.clone());
        let metrics = Metrics::new("profile");
        let profiles_cache = Cache::new("profile", redis.clone(), PROFILE_CACHE_TTL, metrics.clone());
        let handler =
            consumer::UserRegistered { db: db.clone(), cache: profiles_cache.clone(), metrics: metrics.clone() };
        let consumer =
            hub.subscribe(subscription, handler).await.context("cannot subscribe to auth.user.registered")?;
        let state = AppState {
            db: db.clone(),
            jwt: JwtKeys::new(config.jwt_secret.expose()),
            profiles_cache,
            metrics: metrics.clone(),
        };
        let probe_hub = hub.clone();
        let health = Health::new("profile").database(db).broker(move || probe_hub.is_connected()).redis(redis);
        let router = server::with_common_routes(profiles::router().with_state(state), health, metrics);
        let listener = server::bind(&config.bind, config.port)
            .await
            .with_context(|| format!("cannot bind {}:{} — is the port in use? set PORT", config.bind, config.port))?;
        let port = listener.local_addr()?.port();
        Ok(Self { port, listener, router, relay, consumer, hub })
    }

    /// The bound port (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The queue the consumer reads.
    pub fn queue(&self) -> &str {
        self.consumer.queue()
    }

    /// Serves until SIGTERM/SIGINT, then drains requests, stops consuming, flushes the outbox.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown::shutdown_signal()).await
    }

    /// Serves until `stop` resolves.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port, queue = self.consumer.queue(), "profile service listening");
        let served = server::serve(self.listener, self.router, stop).await;
        self.consumer.cancel().await;
        self.relay.shutdown().await;
        self.hub.close().await;
        served.context("profile service stopped with an error")
    }
}
