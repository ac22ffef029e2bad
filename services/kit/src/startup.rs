//! How every service starts: the same dependencies with the same availability policy, and the
//! same [`Server`] around the router. A service's `startup.rs` reads its `Settings`, calls
//! [`Dependencies::connect`] (and [`Dependencies::with_redis`] if it caches), starts its broker link, builds its state and router, and hands
//! them to [`Server::bind`]; its `Application` is that server plus the state.
//!
//! # Availability policy (one per dependency, the same in every service)
//! A service starts and stays up while it can still serve; `/health` says what is missing.
//! - **Database**: required to answer, not to start. The pool connects lazily, and migrations
//!   run at start or, while the database is unreachable, every 2 s in the background until they
//!   succeed. Until then `/health` reports the database down and requests that need it answer
//!   503; the service recovers by itself, with no supervisor restart and no start-up order
//!   between a service and its database (`mfe up`, replicas, a database restarted under a
//!   running service all behave the same). A migration that fails for any other reason (a
//!   broken migration) fails the start.
//! - **Redis**: optional, a cache only. Unreachable at start, the service runs without its
//!   cache (reads go to the database) until it is restarted; once connected, the connection
//!   manager reconnects by itself and every Redis failure counts as a miss.
//! - **Broker**: connected in the background ([`ServiceLink`]): requests are served while
//!   RabbitMQ is down, their events wait in the outbox and the relay sends them once the link is
//!   up; a consumer starts when the link does.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::Router;
use mfe_events::{service_link::ServiceLink, Handler, Subscription};
use redis::aio::ConnectionManager;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;

use crate::{config::ServiceConfig, health::Health, metrics::Metrics, server};

/// How long a pooled connection may sit idle before the pool checks it with a ping before
/// handing it out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How often migrations are retried while the database is unreachable.
const MIGRATE_RETRY: Duration = Duration::from_secs(2);

/// The connections every service starts with, each under the policy of the module docs.
pub struct Dependencies {
    /// The service's own database (lazily connected).
    pub db: PgPool,
    /// Whether the migrations are applied (set once, by the start or the background retry).
    pub migrated: Arc<AtomicBool>,
    /// Set by [`Dependencies::with_redis`]; `None` when Redis was unreachable at start (the
    /// service then runs without its cache) or the service has no cache (admin).
    pub redis: Option<ConnectionManager>,
    /// The service's request, cache and event metrics.
    pub metrics: Metrics,
}

impl Dependencies {
    /// Opens the pool of up to `pool_size` connections to the service's database and applies
    /// `migrator` (now, or in the background while the database is unreachable).
    pub async fn connect(cfg: &ServiceConfig, pool_size: u32, migrator: &'static Migrator) -> anyhow::Result<Self> {
        let what = format!("{}_db", cfg.service.name());
        let db = lazy_pool(&cfg.database_url, pool_size)
            .with_context(|| format!("invalid {}", cfg.service.database_var()))?;
        let migrated =
            migrate_or_retry(&db, migrator, what.clone()).await.with_context(|| format!("cannot migrate {what}"))?;
        Ok(Self { db, migrated, redis: None, metrics: Metrics::new(cfg.service.name()) })
    }

    /// Connects to Redis, for a service with a cache; when it does not answer, the service
    /// runs without it.
    pub async fn with_redis(mut self, cfg: &ServiceConfig) -> Self {
        match crate::cache::connect_redis(&cfg.redis_url).await {
            Ok(conn) => self.redis = Some(conn),
            Err(e) => {
                let url = mfe_core::redact_url_password(&cfg.redis_url);
                tracing::warn!(error = %e, %url, "redis unreachable; serving without the cache (reads go to the database)");
            }
        }
        self
    }

    /// The broker link of a service that only publishes (its outbox relay).
    pub fn broker(&self, cfg: &ServiceConfig) -> ServiceLink {
        ServiceLink::connect_in_background(hub_config(cfg), self.db.clone(), cfg.service.name())
    }

    /// The broker link of a service that also consumes `subscription` with `handler`.
    pub fn broker_consuming<H: Handler + Clone>(
        &self,
        cfg: &ServiceConfig,
        subscription: Subscription,
        handler: H,
    ) -> ServiceLink {
        ServiceLink::connect_consuming_in_background(
            hub_config(cfg),
            self.db.clone(),
            cfg.service.name(),
            subscription,
            handler,
        )
    }

    /// `/health` over the database (and its migrations), the broker link and Redis (when
    /// connected at start).
    pub fn health(&self, cfg: &ServiceConfig, broker: &ServiceLink) -> Health {
        let migrated = self.migrated.clone();
        let probe = broker.clone();
        let health = Health::new(cfg.service.name())
            .database(self.db.clone())
            .migrations(move || migrated.load(Ordering::Relaxed))
            .broker(move || probe.is_connected());
        match &self.redis {
            Some(conn) => health.redis(conn.clone()),
            None => health,
        }
    }
}

/// The hub configuration of `cfg`, named `<service>-service` on the broker.
fn hub_config(cfg: &ServiceConfig) -> mfe_events::HubConfig {
    cfg.hub.clone().with_connection_name(format!("{}-service", cfg.service.name()))
}

/// A pool that connects on first use, so a service starts (and reports 503 on `/health`) while
/// its database is down, and recovers by itself when the database returns. Connections idle for
/// [`PING_AFTER_IDLE`] or longer are pinged before use (a dead one is replaced); busy ones are
/// used without the extra round trip.
fn lazy_pool(database_url: &str, size: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out: a round trip (and a wake-up of the
        // database backend) before every query. Under load a connection was in use a moment
        // ago; only one that sat idle is checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy(database_url)
}

/// Runs `migrator` now; when the database cannot be reached, keeps retrying in the background
/// (every [`MIGRATE_RETRY`]) instead of failing the start. Errors other than connectivity (a
/// broken migration) are returned at once. The service owns its schema: applying pending
/// migrations is a no-op when current, and sqlx takes an advisory lock, so replicas starting
/// together do not race. Returns the flag that says when they are applied.
async fn migrate_or_retry(
    pool: &PgPool,
    migrator: &'static Migrator,
    what: String,
) -> Result<Arc<AtomicBool>, sqlx::migrate::MigrateError> {
    let migrated = Arc::new(AtomicBool::new(false));
    match migrator.run(pool).await {
        Ok(()) => migrated.store(true, Ordering::Relaxed),
        Err(sqlx::migrate::MigrateError::Execute(e)) if is_connectivity(&e) => {
            tracing::error!(error = %e, "{what} unreachable at start-up; migrating in the background once it answers");
            let (pool, done) = (pool.clone(), migrated.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MIGRATE_RETRY).await;
                    match migrator.run(&pool).await {
                        Ok(()) => {
                            done.store(true, Ordering::Relaxed);
                            tracing::info!("{what} migrated");
                            break;
                        }
                        Err(e) => tracing::debug!(error = %e, "{what} still not migrated"),
                    }
                }
            });
        }
        Err(e) => return Err(e),
    }
    Ok(migrated)
}

fn is_connectivity(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

/// A service's listener and router, and the broker link it closes on the way out.
pub struct Server {
    service: &'static str,
    listener: TcpListener,
    port: u16,
    router: Router,
    broker: ServiceLink,
}

impl Server {
    /// Binds `cfg.bind:cfg.port` (port 0 picks a free port; see [`Server::port`]) for `router`.
    pub async fn bind(cfg: &ServiceConfig, router: Router, broker: ServiceLink) -> anyhow::Result<Self> {
        let listener = server::bind(&cfg.bind, cfg.port).await?;
        let port = listener.local_addr()?.port();
        Ok(Self { service: cfg.service.name(), listener, port, router, broker })
    }

    /// The bound port (useful when the configuration asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/Ctrl-C (see [`crate::shutdown`]); then as [`Server::run_until`].
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(crate::shutdown::shutdown_signal()).await
    }

    /// Serves until `stop` resolves, letting in-flight requests finish, then flushes the outbox
    /// (bounded) and closes the broker connection (which stops the consumer).
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let service = self.service;
        tracing::info!(port = self.port, "{service} service listening");
        let served = server::serve(self.listener, self.router, stop).await;
        self.broker.shutdown().await;
        served.with_context(|| format!("{service} service: the http server failed"))
    }
}
