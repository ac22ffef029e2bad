//! Users and refresh tokens migrated from POC-2: rows written the way `mfe migrate import`
//! writes them (the legacy columns only, values unchanged; the columns auth_db added stay NULL),
//! taken from the sample dataset `fixtures/sample` where it has them.

use argon2::{
    password_hash::{PasswordHasher, SaltString},
    Algorithm, Argon2, Params, Version,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_with_grace, TestApp};

/// What every rehashed password must look like: today's argon2id parameters.
const CURRENT_ARGON2ID: &str = "$argon2id$v=19$m=19456,t=2,p=1$";
/// The password of every sample user (fixtures/README.md).
const SAMPLE_PASSWORD: &str = "Password123!";
/// The sample's live POC-2 refresh token (fixtures/README.md) and the user it belongs to.
const SAMPLE_TOKEN: &str = "462dfd0e24a602437cc76d4442a7a883fa7bd9b0c16f4a22e8f2029244a30ff2";

/// The rows of a sample dataset table.
fn sample_rows(table: &str) -> Vec<Value> {
    let path = format!("{}/../../fixtures/sample/{table}.jsonl", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Inserts a users row as the import does: the legacy columns, as they are.
async fn insert_legacy_user(app: &TestApp, id: &str, email: &str, password_hash: &str) {
    sqlx::query(
        r#"INSERT INTO users (id, email, password_hash, name, role, email_verified, created_at, updated_at)
           VALUES ($1, $2, $3, 'Migrated User', 'CUSTOMER', true, '2025-01-10 00:38:49.322', '2025-01-11 00:38:49.855')"#,
    )
    .bind(id)
    .bind(email)
    .bind(password_hash)
    .execute(&app.db)
    .await
    .unwrap();
}

/// Inserts a refresh_tokens row as the import does: POC-2's raw token, no family.
async fn insert_legacy_token(app: &TestApp, id: &str, user_id: &str, token: &str, expires_at: &str) {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, token, expires_at, created_at)
         VALUES ($1, $2, $3, $4::timestamp, '2026-11-24 09:15:00.000')",
    )
    .bind(id)
    .bind(user_id)
    .bind(token)
    .bind(expires_at)
    .execute(&app.db)
    .await
    .unwrap();
}

async fn stored_hash(app: &TestApp, email: &str) -> String {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1").bind(email).fetch_one(&app.db).await.unwrap()
}

/// The sample user owning `SAMPLE_TOKEN`, with its sample hash, inserted into the app's database.
async fn insert_sample_token_owner(app: &TestApp) -> String {
    let token = sample_rows("refresh_tokens")
        .into_iter()
        .find(|t| t["token"] == SAMPLE_TOKEN)
        .expect("the documented live token is in fixtures/sample/refresh_tokens.jsonl");
    let user =
        sample_rows("users").into_iter().find(|u| u["id"] == token["user_id"]).expect("its user is in the sample");
    let user_id = user["id"].as_str().unwrap();
    insert_legacy_user(app, user_id, user["email"].as_str().unwrap(), user["password_hash"].as_str().unwrap()).await;
    insert_legacy_token(
        app,
        token["id"].as_str().unwrap(),
        user_id,
        SAMPLE_TOKEN,
        token["expires_at"].as_str().unwrap(),
    )
    .await;
    user_id.to_string()
}

#[tokio::test]
async fn migrated_bcrypt_and_argon2_users_sign_in_and_are_rehashed_to_todays_argon2id() {
    let app = spawn_app().await;
    let mut users: Vec<(String, String)> = Vec::new(); // (email, stored hash)

    // The sample's bcrypt users, hashes as the Node stack wrote them.
    for user in sample_rows("users") {
        if let Some(hash) = user["password_hash"].as_str().filter(|h| h.starts_with("$2")) {
            let email = user["email"].as_str().unwrap();
            insert_legacy_user(&app, user["id"].as_str().unwrap(), email, hash).await;
            users.push((email.to_string(), hash.to_string()));
        }
    }
    for prefix in ["$2a$", "$2b$", "$2y$"] {
        assert!(users.iter().any(|(_, h)| h.starts_with(prefix)), "the sample has a {prefix} user");
    }
    // argon2 as node-argon2 writes it by default (argon2id, 64 MiB, t=3, p=4), and argon2i.
    let salt = SaltString::encode_b64(b"poc2-node-salt").unwrap();
    for (algorithm, params) in
        [(Algorithm::Argon2id, Params::new(65536, 3, 4, None).unwrap()), (Algorithm::Argon2i, Params::default())]
    {
        let hash = Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(SAMPLE_PASSWORD.as_bytes(), &salt)
            .unwrap()
            .to_string();
        let email = format!("{}@poc2.example.com", algorithm.as_str());
        insert_legacy_user(&app, &uuid::Uuid::new_v4().to_string(), &email, &hash).await;
        users.push((email, hash));
    }

    for (email, legacy_hash) in &users {
        let res = app.signin(email, "Password123?", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{email}: a wrong password is refused");
        assert_eq!(&stored_hash(&app, email).await, legacy_hash, "{email}: a failed sign-in rehashes nothing");

        let res = app.signin(email, SAMPLE_PASSWORD, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{email} ({legacy_hash}) signs in");
        let body: Value = res.json().await.unwrap();
        assert_eq!(app.me(body["accessToken"].as_str().unwrap()).await.status(), StatusCode::OK);
        let rehashed = stored_hash(&app, email).await;
        assert!(rehashed.starts_with(CURRENT_ARGON2ID), "{email}: stored hash is now {rehashed}");

        // The new hash is the password's: the next sign-in verifies against it, and keeps it.
        assert_eq!(app.signin(email, SAMPLE_PASSWORD, None).await.status(), StatusCode::OK, "{email} again");
        assert_eq!(stored_hash(&app, email).await, rehashed, "{email}: an argon2id hash of today is kept");
        assert_eq!(app.signin(email, "Password123?", None).await.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_rehash_drops_the_cached_user() {
    let app = spawn_app().await;
    let user = sample_rows("users")
        .into_iter()
        .find(|u| u["password_hash"].as_str().is_some_and(|h| h.starts_with("$2")))
        .expect("a bcrypt user in the sample");
    // Its own id: the sample's ids are shared by every test, and `user:{id}` by every app.
    let id = uuid::Uuid::new_v4().to_string();
    let email = format!("rehash-{}@poc2.example.com", uuid::Uuid::new_v4().simple());
    insert_legacy_user(&app, &id, &email, user["password_hash"].as_str().unwrap()).await;
    let url = mfe_core::env::get("REDIS_URL");
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("user:{id}");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(r#"{"cached":"before the rehash"}"#)
        .arg("EX")
        .arg(300)
        .query_async(&mut redis)
        .await
        .unwrap();

    assert_eq!(app.signin(&email, SAMPLE_PASSWORD, None).await.status(), StatusCode::OK);
    assert!(stored_hash(&app, &email).await.starts_with(CURRENT_ARGON2ID));
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(!exists, "the sign-in wrote the user (its hash), so {key} is gone");

    // A sign-in that writes nothing leaves the entry.
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(r#"{"cached":"after"}"#)
        .arg("EX")
        .arg(300)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(app.signin(&email, SAMPLE_PASSWORD, None).await.status(), StatusCode::OK);
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(exists, "no write, no invalidation");
    let () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.unwrap();
}

#[tokio::test]
async fn a_migrated_refresh_token_refreshes_once_and_its_reuse_revokes_the_successor() {
    let grace = Duration::from_millis(800);
    let app = spawn_app_with_grace(grace).await;
    insert_sample_token_owner(&app).await;

    // Two tabs refresh the POC-2 token at the same moment: one rotation, one shared successor.
    let (a, b) = tokio::join!(app.refresh(SAMPLE_TOKEN), app.refresh(SAMPLE_TOKEN));
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::OK, StatusCode::OK),
        "a POC-2 token refreshes after the migration"
    );
    let (body, other): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    let successor = body["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(other["refreshToken"], successor.as_str(), "both tabs got the same successor");
    assert_ne!(successor, SAMPLE_TOKEN);
    assert_eq!(app.me(body["accessToken"].as_str().unwrap()).await.status(), StatusCode::OK);
    assert_eq!(app.me(other["accessToken"].as_str().unwrap()).await.status(), StatusCode::OK);
    let n_family: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens WHERE family_id = 'd6fdc608-9e10-4d4d-805b-935b608bde30'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(n_family, 1, "refreshed once: one successor");

    // The migrated row keeps its legacy columns byte for byte and no family; it is rotated.
    let (token, family, rotated): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT token, family_id, rotated_at IS NOT NULL FROM refresh_tokens WHERE id = 'd6fdc608-9e10-4d4d-805b-935b608bde30'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((token.as_str(), family, rotated), (SAMPLE_TOKEN, None, true));
    // The successor is stored hashed, in the migrated token's family.
    let successor_hash = hex::encode(Sha256::digest(successor.as_bytes()));
    let family: Option<String> = sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token = $1")
        .bind(&successor_hash)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(family.as_deref(), Some("d6fdc608-9e10-4d4d-805b-935b608bde30"));
    // A stored hash is no raw token: only family-less (migrated) rows are compared raw.
    assert_eq!(app.refresh(&successor_hash).await.status(), StatusCode::UNAUTHORIZED, "a stored hash is refused");

    // Its use after the grace window: a reuse, 401, and the successor dies with it.
    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    let res = app.refresh(SAMPLE_TOKEN).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("already used"), "{body}");
    assert_eq!(app.refresh(&successor).await.status(), StatusCode::UNAUTHORIZED, "the successor is revoked too");
    assert_eq!(app.refresh(SAMPLE_TOKEN).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_with_a_migrated_refresh_token_revokes_it() {
    let app = spawn_app().await;
    let user_id = insert_sample_token_owner(&app).await;
    let email: String =
        sqlx::query_scalar("SELECT email FROM users WHERE id = $1").bind(&user_id).fetch_one(&app.db).await.unwrap();
    let signed: Value = app.signin(&email, SAMPLE_PASSWORD, None).await.json().await.unwrap();
    let access = signed["accessToken"].as_str().unwrap();

    let res = app.post_json("/api/auth/logout", &json!({"refreshToken": SAMPLE_TOKEN}), Some(access)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let revoked: bool = sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM refresh_tokens WHERE token = $1")
        .bind(SAMPLE_TOKEN)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(revoked, "logout revoked the migrated token");
    let res = app.refresh(SAMPLE_TOKEN).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
    // Only that session ended: the sign-in's own token still refreshes.
    assert_eq!(app.refresh(signed["refreshToken"].as_str().unwrap()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_expired_migrated_refresh_token_is_refused() {
    let app = spawn_app().await;
    let user_id = uuid::Uuid::new_v4().to_string();
    insert_legacy_user(
        &app,
        &user_id,
        "expired@poc2.example.com",
        "$2b$04$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W",
    )
    .await;
    insert_legacy_token(&app, "rt-expired", &user_id, "poc2-expired-token", "2025-02-24 21:17:07.917").await;
    let res = app.refresh("poc2-expired-token").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
}
