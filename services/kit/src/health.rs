//! `GET /health`: checks each dependency of the service (PostgreSQL with `SELECT 1` and its
//! migrations applied, the broker connection, Redis with `PING`), one entry per dependency.
//!
//! The availability policy (ARCHITECTURE.md): a service stays ready while it can still serve.
//! Without the broker the outbox keeps the events, without Redis the database answers, so either
//! down is `degraded` and still 200; only the database (down or not migrated yet) makes it
//! `down` and 503, which is what the gateway's health checks take a service out for.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;

/// How long one dependency check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The same for Redis, which the service can do without: shorter, so a stalled Redis never
/// holds `/health` past the gateway's own check timeout (at most 2 s, less with a short
/// `GATEWAY_HEALTH_INTERVAL_MS`) and gets a degraded service taken out as if it were down.
const REDIS_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The dependencies `/health` checks. Build with the methods, then route [`health_handler`].
#[derive(Clone, Default)]
pub struct Health {
    service: &'static str,
    db: Option<PgPool>,
    migrated: Option<Probe>,
    broker: Option<Probe>,
    redis: Option<ConnectionManager>,
}

#[derive(Debug, Serialize)]
pub struct DependencyStatus {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "latencyMs")]
    pub latency_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub service: &'static str,
    pub status: &'static str,
    pub dependencies: BTreeMap<&'static str, DependencyStatus>,
}

impl Health {
    pub fn new(service: &'static str) -> Self {
        Self { service, ..Default::default() }
    }

    pub fn database(mut self, pool: PgPool) -> Self {
        self.db = Some(pool);
        self
    }

    /// `probe` says whether the database's migrations are applied: until then the database
    /// counts as down, even when it answers (the service cannot use it yet).
    pub fn migrations(mut self, probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.migrated = Some(Arc::new(probe));
        self
    }

    /// `probe` says whether the broker connection is up (e.g. `move || hub.is_connected()`).
    pub fn broker(mut self, probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.broker = Some(Arc::new(probe));
        self
    }

    pub fn redis(mut self, conn: ConnectionManager) -> Self {
        self.redis = Some(conn);
        self
    }

    /// Runs every check concurrently.
    pub async fn check(&self) -> HealthReport {
        let db = async {
            let pool = self.db.as_ref()?;
            Some(
                timed(async { sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|e| e.to_string()) })
                    .await,
            )
        };
        let redis = async {
            let conn = self.redis.as_ref()?;
            let mut conn = conn.clone();
            Some(
                timed_within(REDIS_CHECK_TIMEOUT, async move {
                    redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
                })
                .await,
            )
        };
        let (db, redis) = tokio::join!(db, redis);
        let mut dependencies = BTreeMap::new();
        if let Some(mut s) = db {
            if s.status == "up" && self.migrated.as_ref().is_some_and(|migrated| !migrated()) {
                s = DependencyStatus {
                    status: "down",
                    error: Some("migrations not applied yet (retried in the background)".into()),
                    ..s
                };
            }
            dependencies.insert("database", s);
        }
        if let Some(probe) = &self.broker {
            let up = probe();
            dependencies.insert(
                "broker",
                DependencyStatus {
                    status: if up { "up" } else { "down" },
                    error: (!up).then(|| "not connected to RabbitMQ".to_string()),
                    latency_ms: 0.0,
                },
            );
        }
        if let Some(s) = redis {
            dependencies.insert("redis", s);
        }
        HealthReport { service: self.service, status: verdict(&dependencies), dependencies }
    }
}

/// `ok` when every dependency is up, `down` when the database is, else `degraded`.
fn verdict(dependencies: &BTreeMap<&'static str, DependencyStatus>) -> &'static str {
    if dependencies.values().all(|d| d.status == "up") {
        "ok"
    } else if dependencies.get("database").is_some_and(|d| d.status != "up") {
        "down"
    } else {
        "degraded"
    }
}

async fn timed(check: impl std::future::Future<Output = Result<(), String>>) -> DependencyStatus {
    timed_within(CHECK_TIMEOUT, check).await
}

async fn timed_within(
    timeout: Duration,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> DependencyStatus {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(timeout, check).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(()) => DependencyStatus { status: "up", error: None, latency_ms },
        Err(e) => DependencyStatus { status: "down", error: Some(e), latency_ms },
    }
}

/// `GET /health` for a router whose state is (or contains, via `FromRef`) a [`Health`].
pub async fn health_handler(State(health): State<Health>) -> impl IntoResponse {
    let report = health.check().await;
    let status = if report.status == "down" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(states: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, DependencyStatus> {
        states.iter().map(|&(name, status)| (name, DependencyStatus { status, error: None, latency_ms: 0.0 })).collect()
    }

    #[test]
    fn a_service_without_broker_or_redis_is_degraded_but_without_its_database_down() {
        assert_eq!(verdict(&deps(&[("database", "up"), ("broker", "up"), ("redis", "up")])), "ok");
        assert_eq!(verdict(&deps(&[("database", "up"), ("broker", "down"), ("redis", "up")])), "degraded");
        assert_eq!(verdict(&deps(&[("database", "up"), ("broker", "up"), ("redis", "down")])), "degraded");
        assert_eq!(verdict(&deps(&[("database", "down"), ("broker", "up"), ("redis", "up")])), "down");
        assert_eq!(verdict(&deps(&[])), "ok");
    }
}
