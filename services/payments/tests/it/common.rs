//! Test harness: `spawn_app()` starts the real payments service on port 0 against a fresh,
//! migrated database named by a UUID on the server of `PAYMENTS_DATABASE_URL` (test.env), with
//! the real RabbitMQ and Redis. Tokens are minted with the shared `JWT_SECRET`.
#![allow(dead_code)]

use std::time::Duration;

use mfe_events::{Envelope, Hub};
use mfe_kit::{JwtKeys, Role};
use mfe_testkit::events::EventRecorder;
use payments_service::{AppState, Application, Settings};
use serde_json::Value;
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub db_name: String,
    pub state: AppState,
    keys: JwtKeys,
    client: reqwest::Client,
}

/// Creates and migrates a database named by a fresh UUID; returns its URL and name.
pub async fn fresh_database() -> (String, String) {
    mfe_testkit::db::fresh_migrated_database("PAYMENTS_DATABASE_URL", &payments_service::MIGRATOR).await
}

/// Test settings: port 0, a fresh database, everything else from the environment.
pub async fn test_settings() -> (Settings, String) {
    let mut settings = Settings::from_env().expect("settings from the environment");
    let (url, name) = fresh_database().await;
    settings.service.port = 0;
    settings.service.database_url = url;
    settings.psp_step = None;
    settings.db_pool_size = 5;
    (settings, name)
}

pub async fn spawn_app() -> TestApp {
    let (settings, name) = test_settings().await;
    spawn_with(settings, name).await
}

pub async fn spawn_with(settings: Settings, db_name: String) -> TestApp {
    mfe_testkit::logging::init("payments-test");
    let keys = JwtKeys::new(settings.service.jwt_secret.expose());
    let app = Application::build(settings).await.expect("build the payments app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    TestApp { address, db: state.service.db.clone(), db_name, state, keys, client: reqwest::Client::new() }
}

/// A token for a new random user with `role`; returns (user id, token).
pub fn user(keys: &JwtKeys, role: Role) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let (token, _) = keys.issue(&id, role, Duration::from_secs(600), None).expect("issue a token");
    (id, token)
}

impl TestApp {
    pub fn user(&self, role: Role) -> (String, String) {
        user(&self.keys, role)
    }

    pub async fn create_payment(&self, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/payments", self.address))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /api/payments")
    }

    /// Creates a valid payment and returns its JSON (panics unless 201).
    pub async fn create_ok(&self, token: &str, amount: &str) -> Value {
        let response = self.create_payment(token, &serde_json::json!({"amount": amount, "currency": "EUR"})).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 201, "create should succeed: {body}");
        serde_json::from_str(&body).expect("payment JSON")
    }

    pub async fn list_payments(&self, token: &str, query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/api/payments{query}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/payments")
    }

    /// The ids on one list page and the next cursor.
    pub async fn list_ids(&self, token: &str, query: &str) -> (Vec<String>, Option<String>) {
        let response = self.list_payments(token, query).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.expect("page JSON");
        let ids = page["data"].as_array().expect("data array").iter().map(|p| p["id"].as_str().unwrap().to_string());
        (ids.collect(), page["nextCursor"].as_str().map(String::from))
    }

    pub async fn get_payment(&self, token: &str, id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/api/payments/{id}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/payments/{id}")
    }

    pub async fn change_status(&self, token: &str, id: &str, status: &str) -> reqwest::Response {
        self.client
            .patch(format!("{}/api/payments/{id}/status", self.address))
            .bearer_auth(token)
            .json(&serde_json::json!({"status": status, "message": format!("to {status}")}))
            .send()
            .await
            .expect("PATCH /api/payments/{id}/status")
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self.client.get(format!("{}{path}", self.address)).send().await.expect("GET");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    pub async fn transaction_rows(&self, payment_id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT status::text FROM payment_transactions WHERE payment_id = $1 ORDER BY created_at, id",
        )
        .bind(payment_id)
        .fetch_all(&self.db)
        .await
        .expect("read payment_transactions")
    }

    /// Outbox rows of payment `id` as (event type, published?).
    pub async fn outbox_rows(&self, payment_id: &str) -> Vec<(String, bool)> {
        sqlx::query_as(
            "SELECT routing_key, published_at IS NOT NULL FROM event_outbox \
             WHERE envelope->'data'->>'paymentId' = $1 ORDER BY created_at, id",
        )
        .bind(payment_id)
        .fetch_all(&self.db)
        .await
        .expect("read event_outbox")
    }

    /// Drops the test database (best effort; the server keeps running for other tests).
    pub async fn teardown(self) {
        self.state.service.broker.shutdown().await;
        self.db.close().await;
        drop_database(&self.db_name).await;
    }
}

pub async fn drop_database(name: &str) {
    mfe_testkit::db::drop_database(&mfe_testkit::db::with_database(&mfe_core::env::get("PAYMENTS_DATABASE_URL"), name))
        .await
}

/// Every event published on the shared `events` exchange under `pattern`, collected from a
/// private exclusive queue (gone when the hub closes), so the test never reads a shared queue.
/// Other tests publish to the same exchange: callers filter by their own payment ids.
pub struct EventLog {
    recorder: EventRecorder,
    pub hub: Hub,
}

impl EventLog {
    pub async fn start(pattern: &str) -> Self {
        let recorder = EventRecorder::start("payments-test", &[pattern]).await;
        Self { hub: recorder.hub.clone(), recorder }
    }

    /// The events seen for payment `id`, in arrival order.
    pub fn for_payment(&self, payment_id: &str) -> Vec<Envelope> {
        self.recorder.events().into_iter().filter(|e| e.data["paymentId"] == payment_id).collect()
    }

    pub fn types_for(&self, payment_id: &str) -> Vec<String> {
        self.for_payment(payment_id).into_iter().map(|e| e.event_type).collect()
    }

    /// Waits (up to `max`) until `n` events of payment `id` arrived, then a little longer to catch
    /// duplicates; returns the types that arrived.
    pub async fn wait_for(&self, payment_id: &str, n: usize, max: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let seen = self.types_for(payment_id);
            if seen.len() >= n {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.types_for(payment_id);
            }
            if tokio::time::Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
