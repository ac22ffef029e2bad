//! Helpers for the services' integration tests: a fresh, empty database per test on the
//! server a service's URL points at, and a configuration that binds port 0. Tests read the
//! connection URLs from the environment (`test.env`), with the SPEC defaults otherwise.

use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection};

use crate::config::{Service, ServiceConfig};

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
