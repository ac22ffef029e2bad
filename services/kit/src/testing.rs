//! Helpers for the services' integration tests: a fresh, empty database per test on the
//! server a service's URL points at, and a configuration that binds port 0. Tests read the
//! connection URLs from the environment (`test.env`), with the SPEC defaults otherwise.

use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection};

use crate::config::ServiceConfig;
use mfe_core::Service;

/// What to run when the test stack is not reachable.
pub const START_HINT: &str =
    "start the test stack: `set -a; source test.env; set +a; cargo build -p mfe && target/debug/mfe infra start`";

/// Creates a database named `test_<uuid>` on the server of `server_url` and returns its URL.
///
/// # Panics
/// When the server cannot be reached, with a message saying how to start it.
pub async fn fresh_database(server_url: &str) -> String {
    let options: PgConnectOptions =
        server_url.parse().unwrap_or_else(|e| panic!("invalid database url {server_url}: {e}"));
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server_url}: {e} — {START_HINT}"));
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    admin.close().await.ok();
    let mut url = url::Url::parse(server_url).unwrap_or_else(|e| panic!("invalid database url {server_url}: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// The configuration of `service` from the environment, on port 0 with a fresh database.
pub async fn test_config(service: Service) -> ServiceConfig {
    let mut config = ServiceConfig::from_env(service).expect("test configuration");
    config.port = 0;
    config.bind = "127.0.0.1".into();
    config.database_url = fresh_database(&config.database_url).await;
    config
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A fresh database (see [`fresh_database`]) on the server of the environment variable
/// `var` (`PAYMENTS_DATABASE_URL`), migrated with `migrator`; returns its URL and its name.
pub async fn fresh_migrated_database(var: &str, migrator: &sqlx::migrate::Migrator) -> (String, String) {
    let url = fresh_database(&mfe_core::env::get(var)).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    migrator.run(&pool).await.unwrap_or_else(|e| panic!("cannot migrate {url}: {e}"));
    pool.close().await;
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    (url, name)
}

/// Drops database `name` on the server of the environment variable `var` (best effort: the
/// server keeps running for other tests).
pub async fn drop_database(var: &str, name: &str) {
    let Ok(options) = mfe_core::env::get(var).parse::<PgConnectOptions>() else { return };
    if let Ok(mut admin) = options.database("postgres").connect().await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).execute(&mut admin).await;
        admin.close().await.ok();
    }
}

/// Every event published on the shared exchange under `patterns`, collected from a private
/// exclusive queue (gone when the hub closes), so a test never reads a shared queue. Other tests
/// publish to the same exchange: callers filter by their own ids.
pub struct EventRecorder {
    pub hub: mfe_events::Hub,
    events: std::sync::Arc<std::sync::Mutex<Vec<mfe_events::Envelope>>>,
    _subscription: mfe_events::SubscriptionHandle,
}

impl EventRecorder {
    /// Connects to the test stack's RabbitMQ as `consumer` and starts recording.
    ///
    /// # Panics
    /// When the broker cannot be reached, with a message saying how to start it.
    pub async fn start(consumer: &str, patterns: &[&str]) -> Self {
        use mfe_events::{handler_fn, Envelope, Hub, HubConfig, Subscription};
        let cfg = HubConfig::from_env().unwrap_or_else(|e| panic!("event hub configuration: {e}"));
        let hub = Hub::connect(cfg.with_connection_name(consumer))
            .await
            .unwrap_or_else(|e| panic!("{e} — the test needs the test stack's RabbitMQ: {START_HINT}"));
        let events: std::sync::Arc<std::sync::Mutex<Vec<Envelope>>> = Default::default();
        let sink = events.clone();
        let subscription = hub
            .subscribe(
                Subscription::exclusive(consumer, patterns),
                handler_fn(move |env: Envelope| {
                    let sink = sink.clone();
                    async move {
                        sink.lock().expect("event recorder lock").push(env);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe a test queue for {patterns:?}: {e}"));
        Self { hub, events, _subscription: subscription }
    }

    /// The events recorded so far, in arrival order.
    pub fn events(&self) -> Vec<mfe_events::Envelope> {
        self.events.lock().expect("event recorder lock").clone()
    }
}

/// A stand-in for the auth service's `GET /api/auth/users/{id}` on a free port: the ids in
/// `known` exist (200), any other is 404; only service tokens signed with `jwt_secret` are
/// answered (401 otherwise), as auth does. Returns its base URL, for `ServiceUrls::auth`.
pub async fn fake_auth_users(jwt_secret: &str, known: Vec<String>) -> String {
    use axum::{extract::Path, http::StatusCode, routing::get, Router};

    use crate::{auth::Caller, JwtKeys};
    let app = Router::new()
        .route(
            "/api/auth/users/{id}",
            get(move |caller: Caller, Path(id): Path<String>| {
                let known = known.clone();
                async move {
                    match caller {
                        Caller::Service(_) if known.contains(&id) => StatusCode::OK,
                        Caller::Service(_) => StatusCode::NOT_FOUND,
                        Caller::User(_) => StatusCode::FORBIDDEN,
                    }
                }
            }),
        )
        .with_state(JwtKeys::new(jwt_secret));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake auth service");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}
