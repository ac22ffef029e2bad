//! The findings of the adversarial pass on tokens and accounts (issue 23), each as the attack
//! and the answer it must get now.

use std::time::Duration;

use auth_service::{password, throttle::Limits, Settings};
use mfe_core::Service;
use mfe_kit::{JwtKeys, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{b64url, spawn_app, spawn_settings, TestApp};

fn keys(app: &TestApp) -> JwtKeys {
    JwtKeys::new(app.config.jwt_secret.expose())
}

async fn message(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn logout_ends_the_access_token_of_its_session_and_only_that_one() {
    let app = spawn_app().await;
    let first = app.new_user(None).await;
    let email = first.user["email"].as_str().unwrap();
    let second: Value = app.signin(email, "s3cret-pass", None).await.json().await.unwrap();
    let second_access = second["accessToken"].as_str().unwrap();
    assert_eq!(app.me(&first.access_token).await.status(), StatusCode::OK);

    let body = json!({"refreshToken": first.refresh_token});
    let res = app.post_json("/api/auth/logout", &body, Some(&first.access_token)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.me(&first.access_token).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(message(res).await, "access token revoked, sign in again");
    assert_eq!(app.me(second_access).await.status(), StatusCode::OK, "the other session goes on");
}

#[tokio::test]
async fn logout_others_and_a_reused_refresh_token_end_the_access_tokens_of_those_sessions() {
    let app = spawn_app().await;
    let laptop = app.new_user(Some("laptop")).await;
    let email = laptop.user["email"].as_str().unwrap();
    let phone: Value = app.signin(email, "s3cret-pass", Some("phone")).await.json().await.unwrap();
    let phone_access = phone["accessToken"].as_str().unwrap();

    let res = app.post_json("/api/auth/devices/logout-others", &json!({}), Some(&laptop.access_token)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(phone_access).await.status(), StatusCode::UNAUTHORIZED, "the phone's token is ended");
    assert_eq!(app.me(&laptop.access_token).await.status(), StatusCode::OK, "the kept device goes on");

    // A rotated refresh token presented after the grace window: the family is revoked, and
    // the access token of the thief's (or the user's) refresh with it.
    let app = crate::helpers::spawn_app_with_grace(Duration::ZERO).await;
    let user = app.new_user(None).await;
    let rotated: Value = app.refresh(&user.refresh_token).await.json().await.unwrap();
    let access = rotated["accessToken"].as_str().unwrap();
    assert_eq!(app.me(access).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&user.refresh_token).await.status(), StatusCode::UNAUTHORIZED, "reuse");
    assert_eq!(app.me(access).await.status(), StatusCode::UNAUTHORIZED, "the family's access token is ended");
}

#[tokio::test]
async fn tokens_from_the_future_and_broken_tokens_get_a_generic_401() {
    let app = spawn_app().await;
    let user = app.new_user(None).await;
    let id = user.user["id"].as_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(app.config.jwt_secret.expose().as_bytes()),
        )
        .unwrap()
    };
    let future_iat = sign(json!({"sub": id, "role": "CUSTOMER", "iat": now + 3600, "exp": now + 7200, "jti": "a"}));
    let future_nbf =
        sign(json!({"sub": id, "role": "CUSTOMER", "iat": now, "nbf": now + 3600, "exp": now + 7200, "jti": "b"}));
    let no_exp = sign(json!({"sub": id, "role": "CUSTOMER", "iat": now, "jti": "c"}));
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(json!({"sub": id, "role": "ADMIN", "iat": now, "exp": now + 600, "jti": "d"}).to_string().as_bytes())
    );
    for token in [future_iat, future_nbf, no_exp, alg_none] {
        let res = app.me(&token).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{token}");
        let body = res.text().await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["message"], "invalid access token", "{body}");
        assert!(!body.contains("line") && !body.contains("missing field"), "no decoder internals: {body}");
    }
    let expired = sign(json!({"sub": id, "role": "CUSTOMER", "iat": now - 3600, "exp": now - 60, "jti": "e"}));
    assert_eq!(message(app.me(&expired).await).await, "access token expired, refresh it");
}

#[tokio::test]
async fn a_valid_token_of_a_user_that_does_not_exist_is_refused_by_auth() {
    let app = spawn_app().await;
    let (ghost, _) = keys(&app).issue("no-such-user", Role::Customer, Duration::from_secs(60), None).unwrap();
    assert_eq!(app.me(&ghost).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.post_json("/api/auth/logout", &json!({}), Some(&ghost)).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_email_with_retry_after() {
    let config = mfe_testkit::service::test_config(Service::Auth).await;
    let mut settings = Settings::for_service(config).expect("auth settings");
    settings.signin_limits = Limits { per_email: 3, per_ip: 0, window: Duration::from_secs(60) };
    let app = spawn_settings(settings).await;
    let victim = app.new_user(None).await;
    let email = victim.user["email"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(app.signin(email, "wrong-pass-1", None).await.status(), StatusCode::UNAUTHORIZED);
    }
    // Over the limit even the right password waits (the check comes before the verification),
    // whatever case the email is typed in.
    let res = app.signin(&email.to_uppercase(), "s3cret-pass", None).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "Retry-After {retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    // Another account is not affected.
    let other = app.new_user(None).await;
    assert_eq!(app.signin(other.user["email"].as_str().unwrap(), "s3cret-pass", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn emails_are_normalised_and_lookalikes_or_invisible_characters_are_refused() {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    for (email, why) in [
        (format!("ann{tag}\u{200B}@example.com"), "invisible"),
        (format!("ann{tag}@p\u{0430}ypal.com"), "ASCII"),
        (format!("\u{202E}ann{tag}@example.com"), "invisible"),
    ] {
        let res = app.signup(&email, "s3cret-pass").await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{email:?}");
        let msg = message(res).await;
        assert!(msg.starts_with("email ") && msg.contains(why), "{email:?}: {msg}");
    }
    // Full-width letters are the same address as the plain ones.
    let wide: String = format!("ann{tag}").chars().map(|c| char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap()).collect();
    let res = app.signup(&format!("{wide}@example.com"), "s3cret-pass").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.json::<Value>().await.unwrap()["user"]["email"], format!("ann{tag}@example.com"));
    assert_eq!(app.signup(&format!("Ann{tag}@example.com"), "s3cret-pass").await.status(), StatusCode::CONFLICT);
    assert_eq!(app.signin(&format!("{wide}@EXAMPLE.com"), "s3cret-pass", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_legacy_account_with_an_upper_case_email_signs_in_and_its_address_stays_taken() {
    let app = spawn_app().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let legacy = format!("Legacy.{tag}@Example.COM");
    let hash = password::hash("s3cret-pass").unwrap();
    sqlx::query(
        r#"INSERT INTO users (id, email, password_hash, name, role, email_verified, created_at, updated_at)
           VALUES ($1, $2, $3, 'Migrated User', 'CUSTOMER', true, now(), now())"#,
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&legacy)
    .bind(&hash)
    .execute(&app.db)
    .await
    .unwrap();
    let res = app.signin(&legacy.to_lowercase(), "s3cret-pass", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["user"]["email"], legacy, "the stored email is left as imported");
    assert_eq!(app.signin(&legacy, "s3cret-pass", None).await.status(), StatusCode::OK);
    let res = app.signup(&legacy.to_lowercase(), "s3cret-pass").await;
    assert_eq!(res.status(), StatusCode::CONFLICT, "no second account for the same address");
}

/// A redis-server of this test's own on a private port (36379), stopped when dropped: the
/// shared test stack's Redis is never touched.
struct OwnRedis {
    child: tokio::process::Child,
    url: String,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = 36379;
        let binary = std::env::var("MFE_REDIS_SERVER").ok().filter(|s| !s.is_empty());
        let child = tokio::process::Command::new(binary.as_deref().unwrap_or("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (apt-get install redis-server, or set MFE_REDIS_SERVER)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Self { child, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not listen on {port}");
    }

    async fn stop(&mut self) {
        self.child.kill().await.expect("stop the test's redis-server");
    }
}

#[tokio::test]
async fn with_redis_stopped_tokens_still_work_and_sign_ins_are_still_throttled_per_replica() {
    mfe_testkit::logging::init("auth-service-tests");
    let mut redis = OwnRedis::start().await;
    let mut config = mfe_testkit::service::test_config(Service::Auth).await;
    config.redis_url = redis.url.clone();
    let mut settings = Settings::for_service(config).expect("auth settings");
    settings.signin_limits = Limits { per_email: 2, per_ip: 0, window: Duration::from_secs(60) };
    let app = spawn_settings(settings).await;
    let user = app.new_user(None).await;
    let email = user.user["email"].as_str().unwrap().to_string();

    redis.stop().await;
    // The denylist cannot be read: the token is accepted (fail open, after at most the
    // denylist's Redis budget) rather than every user logged out; sign-in keeps working.
    let started = std::time::Instant::now();
    assert_eq!(app.get("/api/auth/devices", Some(&user.access_token)).await.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(app.signin(&email, "s3cret-pass", None).await.status(), StatusCode::OK);
    // Failed sign-ins are counted in the replica's memory: still throttled.
    for _ in 0..2 {
        assert_eq!(app.signin(&email, "wrong-pass-1", None).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.signin(&email, "s3cret-pass", None).await.status(), StatusCode::TOO_MANY_REQUESTS);
}
