use std::time::Duration;

use mfe_kit::{JwtKeys, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{b64url, spawn_app, spawn_app_with_grace};

#[tokio::test]
async fn expired_forged_and_alg_none_tokens_are_refused_with_401() {
    let app = spawn_app().await;
    let signed = app.new_user(None).await;
    let user_id = signed.user["id"].as_str().unwrap();
    let now = chrono::Utc::now().timestamp();

    // Signed with the right secret but expired a minute ago (well past the 5 s leeway).
    let claims = json!({"sub": user_id, "role": "CUSTOMER", "iat": now - 120, "exp": now - 60, "jti": "x"});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(app.config.jwt_secret.expose().as_bytes()),
    )
    .unwrap();
    // Valid in every way except the secret.
    let (forged, _) = JwtKeys::new("an-attacker-secret-of-sufficient-length!")
        .issue(user_id, Role::Admin, Duration::from_secs(600), None)
        .unwrap();
    // No signature at all.
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(
        json!({"sub": user_id, "role": "ADMIN", "iat": now, "exp": now + 600, "jti": "y"}).to_string().as_bytes(),
    );
    let alg_none = format!("{header}.{payload}.");

    for (what, token) in [("expired", expired), ("forged", forged), ("alg none", alg_none), ("garbage", "abc".into())] {
        let res = app.me(&token).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what} token");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    assert_eq!(app.get("/api/auth/me", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&signed.access_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refresh_token_rotates_and_its_reuse_revokes_the_family() {
    let grace = Duration::from_millis(500);
    let app = spawn_app_with_grace(grace).await;
    let signed = app.new_user(None).await;

    let res = app.refresh(&signed.refresh_token).await;
    assert_eq!(res.status(), StatusCode::OK);
    let first: Value = res.json().await.unwrap();
    let second_token = first["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(second_token, signed.refresh_token, "refresh rotates the token");
    assert_eq!(app.me(first["accessToken"].as_str().unwrap()).await.status(), StatusCode::OK);

    // The stored value is a hash, never the token itself.
    let n_plain: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE token = $1")
        .bind(&second_token)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n_plain, 0);

    // Replaying the rotated first token after the grace window: refused, and the whole family
    // dies with it.
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    let res = app.refresh(&signed.refresh_token).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("already used"), "{body}");
    assert_eq!(app.refresh(&second_token).await.status(), StatusCode::UNAUTHORIZED, "the successor is revoked too");

    // Another sign-in is another family and is unaffected.
    let fresh = app.signin(signed.user["email"].as_str().unwrap(), "s3cret-pass", None).await;
    let fresh: Value = fresh.json().await.unwrap();
    assert_eq!(app.refresh(fresh["refreshToken"].as_str().unwrap()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_revokes_the_refresh_token() {
    let app = spawn_app().await;
    let signed = app.new_user(None).await;
    let res = app
        .post_json("/api/auth/logout", &json!({"refreshToken": signed.refresh_token}), Some(&signed.access_token))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.refresh(&signed.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
}
