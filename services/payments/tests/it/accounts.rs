//! Tokens that are validly signed but must not act (issue 23): a user that does not exist
//! creates no payment, and a token of an ended session (logout) is refused here too.

use crate::common;

use std::time::Duration;

use mfe_kit::{revocation::Revocations, JwtKeys, Role};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_valid_token_of_a_user_auth_does_not_know_creates_no_payment() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (mut settings, name) = common::test_settings().await;
    let keys = JwtKeys::new(settings.service.jwt_secret.expose());
    let (known, known_token) = common::user(&keys, Role::Customer);
    settings.service.urls.auth =
        mfe_testkit::service::fake_auth_users(settings.service.jwt_secret.expose(), vec![known]).await.into();
    let app = common::spawn_with(settings, name).await;

    let (_ghost, ghost_token) = common::user(&keys, Role::Customer);
    let res = app.create_payment(&ghost_token, &json!({"amount": "10.00", "currency": "EUR"})).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "the account of this token no longer exists");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&app.db).await.unwrap();
    assert_eq!(n, 0, "nothing was written");

    app.create_ok(&known_token, "10.00").await;
    app.teardown().await;
}

#[tokio::test]
async fn a_token_of_an_ended_session_is_refused_by_payments() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = common::spawn_app().await;
    let settings = payments_service::Settings::from_env().expect("settings from the environment");
    let keys = JwtKeys::new(settings.service.jwt_secret.expose());
    let sid = format!("test.{}", uuid::Uuid::new_v4());
    let (token, _) = keys
        .issue_for_session(&uuid::Uuid::new_v4().to_string(), Role::Customer, Duration::from_secs(600), None, &sid)
        .unwrap();
    assert_eq!(app.list_payments(&token, "").await.status(), StatusCode::OK);
    // What auth writes at logout.
    let redis = mfe_kit::cache::connect_redis(&settings.service.redis_url).await.expect("test stack redis");
    let revocations = Revocations::new(redis, mfe_kit::metrics::Metrics::new("payments-test").registry());
    assert!(revocations.revoke(std::slice::from_ref(&sid), Duration::from_secs(60)).await);
    let res = app.list_payments(&token, "").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "access token revoked, sign in again");
    app.teardown().await;
}
