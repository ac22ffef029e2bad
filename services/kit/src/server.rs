//! The parts of starting a service that are the same everywhere: a lazily connecting pool,
//! migrations that wait for the database, the common middleware stack and the serve loop with
//! graceful shutdown. Each service's `Application::build` strings these together.

use std::{future::Future, time::Duration};

use axum::{middleware, routing::get, Router};
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;

use crate::{
    health::{health_handler, Health},
    metrics::{metrics_handler, track_requests, Metrics},
    telemetry::correlation_id,
};

/// A pool that connects on first use, so a service starts (and reports 503 on `/health`) while
/// its database is down, and recovers by itself when the database returns.
pub fn lazy_pool(database_url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(16)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(database_url)
}

/// Runs `migrator` now; when the database cannot be reached, keeps retrying in the background
/// (every 2 s) instead of failing the start. Errors other than connectivity (a broken migration)
/// are returned at once.
pub async fn migrate_or_retry(
    pool: &PgPool,
    migrator: &'static Migrator,
    what: &'static str,
) -> Result<(), sqlx::migrate::MigrateError> {
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::Execute(e)) if is_connectivity(&e) => {
            tracing::error!(error = %e, "{what} unreachable at start-up; migrating in the background once it answers");
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    match migrator.run(&pool).await {
                        Ok(()) => {
                            tracing::info!("{what} migrated");
                            break;
                        }
                        Err(e) => tracing::debug!(error = %e, "{what} still not migrated"),
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn is_connectivity(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

/// Adds `/health`, `/metrics`, the request metrics and the correlation-id middleware to `api`.
pub fn with_common_routes(api: Router, health: Health, metrics: Metrics) -> Router {
    let ops = Router::new()
        .route("/health", get(health_handler).with_state(health))
        .route("/metrics", get(metrics_handler).with_state(metrics.clone()));
    api.merge(ops)
        .layer(middleware::from_fn_with_state(metrics, track_requests))
        .layer(middleware::from_fn(correlation_id))
}

/// Binds `bind:port` (port 0 picks a free port).
pub async fn bind(bind: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((bind, port)).await
}

/// Serves `router` until `shutdown` resolves: stops accepting, lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
