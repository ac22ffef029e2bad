//! Fresh databases on the test stack's PostgreSQL servers: one per test, named by a prefix and a
//! UUID, so tests running at once never see each other's rows.

use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, PgConnection};

use crate::START_HINT;

/// `url` with its database replaced by `db`.
///
/// # Panics
/// When `url` is not a URL.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).unwrap_or_else(|e| panic!("invalid database url {url}: {e}"));
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// The database name of `url` (its path without the slash).
pub fn database_name(url: &str) -> String {
    url::Url::parse(url).map(|u| u.path().trim_start_matches('/').to_string()).unwrap_or_default()
}

/// A connection to the `postgres` database of the server of `server_url`.
///
/// # Panics
/// When the server cannot be reached, with a message saying how to start it.
pub async fn admin_connection(server_url: &str) -> PgConnection {
    let options: PgConnectOptions =
        server_url.parse().unwrap_or_else(|e| panic!("invalid database url {server_url}: {e}"));
    options
        .database("postgres")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server_url}: {e} — {START_HINT}"))
}

/// Creates an empty database named `<prefix>_<uuid>` on the server of `server_url` and returns
/// its URL.
///
/// # Panics
/// When the server cannot be reached (saying how to start it) or refuses the database.
pub async fn create_database(server_url: &str, prefix: &str) -> String {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection(server_url).await;
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    admin.close().await.ok();
    with_database(server_url, &name)
}

/// [`create_database`] named `test_<uuid>`.
pub async fn fresh_database(server_url: &str) -> String {
    create_database(server_url, "test").await
}

/// [`fresh_database`] on the server of the environment variable `var` (`PAYMENTS_DATABASE_URL`).
pub async fn fresh_database_of(var: &str) -> String {
    fresh_database(&mfe_core::env::get(var)).await
}

/// A fresh database on the server of `var`, migrated with `migrator`; returns its URL and name.
///
/// # Panics
/// When the database cannot be created, reached or migrated.
pub async fn fresh_migrated_database(var: &str, migrator: &sqlx::migrate::Migrator) -> (String, String) {
    let url = fresh_database_of(var).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    migrator.run(&pool).await.unwrap_or_else(|e| panic!("cannot migrate {url}: {e}"));
    pool.close().await;
    let name = database_name(&url);
    (url, name)
}

/// Drops the database of `url`, whoever is still connected (best effort: the server keeps
/// running for other tests, and no test's outcome depends on it).
pub async fn drop_database(url: &str) {
    let name = database_name(url);
    let Ok(options) = url.parse::<PgConnectOptions>() else { return };
    if let Ok(mut admin) = options.database("postgres").connect().await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).execute(&mut admin).await;
        admin.close().await.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_another_database_and_keeps_the_rest() {
        let url = with_database("postgres://u:p@127.0.0.1:5432/auth_db?sslmode=disable", "t_1");
        assert_eq!(url, "postgres://u:p@127.0.0.1:5432/t_1?sslmode=disable");
        assert_eq!(database_name(&url), "t_1");
    }
}
