//! Test harness: the real admin service on port 0 against a fresh, migrated database named by a
//! UUID on the server of `ADMIN_DATABASE_URL` (test.env), consuming every event from its own
//! exclusive per-test queue (never the shared `admin.events.queue`).
#![allow(dead_code)]

use std::time::Duration;

use admin_service::{AppState, Application, Settings};
use mfe_kit::{JwtKeys, Role};
use serde_json::Value;
use sqlx::{migrate::Migrator, PgPool};

/// Creates a database named by a fresh UUID on the server of `$var` and runs `migrator`.
pub async fn fresh_database(var: &str, migrator: &Migrator) -> (String, String) {
    mfe_testkit::db::fresh_migrated_database(var, migrator).await
}

pub async fn drop_database(var: &str, name: &str) {
    mfe_testkit::db::drop_database(&mfe_testkit::db::with_database(&mfe_core::env::get(var), name)).await
}

/// A base URL nothing answers on (a port bound, then released).
pub async fn dead_url() -> String {
    format!("http://127.0.0.1:{}", mfe_testkit::net::closed_port())
}

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub db_name: String,
    pub state: AppState,
    pub keys: JwtKeys,
    client: reqwest::Client,
}

/// Admin settings for a test: port 0, a fresh database, a private exclusive events queue, and
/// every other service URL pointing at nothing until the test says otherwise.
pub async fn test_settings() -> (Settings, String) {
    let mut settings = Settings::from_env().expect("settings from the environment");
    let (url, name) = fresh_database("ADMIN_DATABASE_URL", &admin_service::MIGRATOR).await;
    settings.service.port = 0;
    settings.service.database_url = url;
    settings.events_queue = format!("mfe.test.admin.{}", uuid::Uuid::new_v4().simple());
    settings.events_queue_exclusive = true;
    settings.db_pool_size = 4;
    settings.health_timeout = Duration::from_millis(1500);
    let dead = dead_url().await;
    let urls = &mut settings.service.urls;
    urls.gateway = dead.clone();
    (urls.auth, urls.payments, urls.admin, urls.profile) =
        (dead.as_str().into(), dead.as_str().into(), dead.as_str().into(), dead.into());
    (settings, name)
}

pub async fn spawn_app() -> TestApp {
    let (settings, name) = test_settings().await;
    spawn_with(settings, name).await
}

pub async fn spawn_with(settings: Settings, db_name: String) -> TestApp {
    mfe_testkit::logging::init("admin-test");
    let keys = JwtKeys::new(settings.service.jwt_secret.expose());
    let app = Application::build(settings).await.expect("build the admin app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    assert!(
        state.broker.wait_until_consuming(Duration::from_secs(20)).await,
        "the admin app never started consuming events — is the test stack's RabbitMQ up (RABBITMQ_URL)?"
    );
    TestApp { address, db: state.db.clone(), db_name, state, keys, client: reqwest::Client::new() }
}

pub fn token(keys: &JwtKeys, role: Role) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let (token, _) = keys.issue(&id, role, Duration::from_secs(600), None).expect("issue a token");
    (id, token)
}

impl TestApp {
    pub fn user(&self, role: Role) -> (String, String) {
        token(&self.keys, role)
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).bearer_auth(token).send().await.expect("GET")
    }

    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let response = self.get(token, path).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    pub async fn put_config(&self, token: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(format!("{}/api/admin/config/{key}", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("PUT config")
    }

    /// Polls the audit log (up to `max`) until `query` matches at least one row; returns the rows.
    pub async fn wait_for_audit(&self, token: &str, query: &str, max: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let page = self.get_json(token, &format!("/api/admin/audit-logs{query}")).await;
            let rows = page["data"].as_array().cloned().unwrap_or_default();
            if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn teardown(self) {
        self.state.broker.shutdown().await;
        self.db.close().await;
        drop_database("ADMIN_DATABASE_URL", &self.db_name).await;
    }
}
