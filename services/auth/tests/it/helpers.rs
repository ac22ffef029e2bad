//! `spawn_app()` and a `TestApp` whose methods are named after the endpoints.

use std::time::Duration;

use auth_service::{Application, Settings};
use mfe_core::Service;
use mfe_kit::ServiceConfig;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub config: ServiceConfig,
    pub db: PgPool,
    pub client: reqwest::Client,
}

/// The auth service on a free port with a fresh, migrated database, with the settings of the
/// environment (the default refresh grace window, 5 s).
pub async fn spawn_app() -> TestApp {
    mfe_testkit::logging::init("auth-service-tests");
    let config = mfe_testkit::service::test_config(Service::Auth).await;
    spawn_with(config).await
}

/// [`spawn_app`] with a refresh grace window of `grace`, so a test of "after the window" waits
/// only that long.
pub async fn spawn_app_with_grace(grace: Duration) -> TestApp {
    mfe_testkit::logging::init("auth-service-tests");
    let config = mfe_testkit::service::test_config(Service::Auth).await;
    let mut settings = Settings::for_service(config).expect("auth settings");
    settings.refresh_grace = grace;
    spawn_settings(settings).await
}

pub async fn spawn_with(config: ServiceConfig) -> TestApp {
    spawn_settings(Settings::for_service(config).expect("auth settings")).await
}

pub async fn spawn_settings(settings: Settings) -> TestApp {
    let config = settings.service.clone();
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("cannot start the auth service: {e:#} — {}", mfe_testkit::START_HINT));
    let address = format!("http://127.0.0.1:{}", app.port());
    let broker = app.state().broker.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    // The broker link connects in the background; the tests start from a connected service.
    assert!(
        broker.wait_until_connected(Duration::from_secs(20)).await,
        "the auth service never connected to RabbitMQ — is the test stack up (RABBITMQ_URL)? {}",
        mfe_testkit::START_HINT
    );
    let db = PgPool::connect_lazy(&config.database_url).expect("test pool");
    TestApp { address, config, db, client: reqwest::Client::new() }
}

pub struct Signed {
    pub access_token: String,
    pub refresh_token: String,
    pub user: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn signup(&self, email: &str, password: &str) -> Response {
        self.post_json("/api/auth/signup", &json!({"email": email, "password": password, "name": "Ann Example"}), None)
            .await
    }

    pub async fn signin(&self, email: &str, password: &str, device_id: Option<&str>) -> Response {
        self.post_json("/api/auth/signin", &json!({"email": email, "password": password, "deviceId": device_id}), None)
            .await
    }

    /// Signs a new user up and in; returns the sign-in tokens.
    pub async fn new_user(&self, device_id: Option<&str>) -> Signed {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        assert_eq!(self.signup(&email, "s3cret-pass").await.status(), StatusCode::CREATED);
        let res = self.signin(&email, "s3cret-pass", device_id).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        Signed {
            access_token: body["accessToken"].as_str().unwrap().to_string(),
            refresh_token: body["refreshToken"].as_str().unwrap().to_string(),
            user: body["user"].clone(),
        }
    }

    pub async fn me(&self, token: &str) -> Response {
        self.get("/api/auth/me", Some(token)).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/api/auth/refresh", &json!({"refreshToken": refresh_token}), None).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }
}

/// A hand-made base64url (no padding) for crafting hostile tokens.
pub fn b64url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
