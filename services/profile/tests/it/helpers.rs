//! `spawn_app()` and a `TestApp` whose methods are named after the endpoints.

use std::time::Duration;

use mfe_core::Service;
use mfe_events::{types, Envelope, Hub, Subscription};
use mfe_kit::{JwtKeys, Role};
use profile_service::{Application, Settings, CONSUMER};
use reqwest::Response;
use serde_json::Value;
use sqlx::PgPool;

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    pub client: reqwest::Client,
    pub jwt: JwtKeys,
    /// A publisher on the shared exchange, to play the auth service.
    pub hub: Hub,
}

/// The profile service on a free port with a fresh, migrated database, consuming
/// `auth.user.registered` from its own exclusive queue (never the shared `profile.events.queue`).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with its configuration changed by `edit` first (e.g. the auth URL).
pub async fn spawn_app_with(edit: impl FnOnce(&mut mfe_kit::ServiceConfig)) -> TestApp {
    mfe_testkit::logging::init("profile-service-tests");
    let mut config = mfe_testkit::service::test_config(Service::Profile).await;
    edit(&mut config);
    let mut settings = Settings::for_service(config.clone()).expect("profile settings");
    settings.subscription = Subscription::exclusive(CONSUMER, &[types::AUTH_USER_REGISTERED]);
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("cannot start the profile service: {e:#} — {}", mfe_testkit::START_HINT));
    let address = format!("http://127.0.0.1:{}", app.port());
    let broker = app.state().broker.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    // The consumer's exclusive queue exists only once the broker link is up: publish after that.
    assert!(
        broker.wait_until_consuming(Duration::from_secs(20)).await,
        "the profile service never started consuming events — is the test stack's RabbitMQ up (RABBITMQ_URL)?"
    );
    let db = PgPool::connect_lazy(&config.database_url).expect("test pool");
    let hub = Hub::connect(config.hub.clone().with_connection_name("profile-service-tests")).await.expect("test hub");
    TestApp { address, jwt: JwtKeys::new(config.jwt_secret.expose()), db, client: reqwest::Client::new(), hub }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// An access token for a new random user id.
    pub fn token_for(&self, user_id: &str) -> String {
        self.jwt.issue(user_id, Role::Customer, Duration::from_secs(600), None).unwrap().0
    }

    pub async fn get_me(&self, token: &str) -> Response {
        self.client.get(self.url("/api/profile/me")).bearer_auth(token).send().await.unwrap()
    }

    pub async fn put_me(&self, token: &str, body: &Value) -> Response {
        self.client.put(self.url("/api/profile/me")).bearer_auth(token).json(body).send().await.unwrap()
    }

    /// Publishes `auth.user.registered` for `user_id`, as the auth service's relay would.
    pub async fn publish_registered(&self, user_id: &str) -> Envelope {
        let env = Envelope::new(
            types::AUTH_USER_REGISTERED,
            "auth-service",
            serde_json::json!({"userId": user_id, "email": format!("{user_id}@example.com"), "name": "Test", "role": "CUSTOMER"}),
        );
        self.hub.publish(&env).await.expect("publish auth.user.registered");
        env
    }

    /// The app's `cache_hits_total` of the profile cache (0 before the first hit).
    pub async fn profile_cache_hits(&self) -> f64 {
        let metrics = self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metrics
            .lines()
            .find(|l| l.starts_with("cache_hits_total{") && l.contains(r#"cache="profile""#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Polls `GET /api/profile/me` until it stops answering 404 (at most `max`).
    pub async fn wait_for_profile(&self, token: &str, max: Duration) -> Response {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let res = self.get_me(token).await;
            if res.status() != reqwest::StatusCode::NOT_FOUND || tokio::time::Instant::now() >= deadline {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
