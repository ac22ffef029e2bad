//! Refresh tokens. Each sign-in starts a token *family*; `refresh` rotates (stamps `rotated_at`
//! on the presented token and issues a successor in the same family). Presenting a token that
//! was already rotated means it was copied: the whole family is revoked and the caller gets 401.
//! Only the SHA-256 of a token auth issued is stored, so a database leak yields no usable token.
//!
//! # Tokens migrated from POC-2: both forms are accepted
//! POC-2 stored its refresh tokens as they are, and `mfe migrate` copies them into auth_db
//! unchanged: the legacy columns of `refresh_tokens` must stay byte-identical to the legacy
//! database (the validation checksums compare them, and the online migration streams the raw
//! legacy `token` column into auth_db by logical replication, which a rewrite would fight).
//! So a presented token is looked up (`find_token`) as `token = sha256hex(presented)` — every
//! token auth issued — or as `token = presented`, but the raw form **only on rows with
//! `family_id IS NULL`**, which only migrated rows are (every token auth issues has a family).
//! A stored hash can therefore never be replayed as if it were a raw token.
//!
//! The first refresh of a migrated token rotates it like any other: `rotated_at` is stamped on
//! it, its `family_id` stays NULL (so the raw lookup still finds it) and the successor — hashed
//! like every token auth issues — gets the migrated token's id as its family, which is how
//! `revoke_family` already treats a NULL family (a family of one, keyed by the token id).
//! Presenting the migrated token again is a reuse: the family (the migrated row and every
//! successor) is revoked and the caller gets 401. Logout finds migrated tokens the same way.
//!
//! The exposure of a migrated token is the legacy database's: whoever can read auth_db (or the
//! legacy database) can use a POC-2 token until it is rotated, revoked or expired — once
//! rotated it is refused, and its successor is only stored hashed. Nothing new is exposed.

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use chrono::{NaiveDateTime, Utc};
use mfe_events::types;
use mfe_kit::{ApiError, AuthUser, CorrelationId, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::{users, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/auth/refresh", post(refresh)).route("/api/auth/logout", post(logout))
}

/// A fresh access/refresh token pair.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
}

/// The stored form of a refresh token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_refresh_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Inserts a refresh token of `family_id` and returns it with a new access token.
async fn issue(
    conn: &mut PgConnection,
    state: &AppState,
    user: &users::User,
    family_id: &str,
    device_id: Option<String>,
) -> Result<Tokens, ApiError> {
    let refresh_token = new_refresh_token();
    let now = Utc::now();
    let expires_at = now + chrono::Duration::from_std(crate::REFRESH_TTL).expect("ttl fits");
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, token, expires_at, created_at, family_id, device_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&user.id)
    .bind(token_hash(&refresh_token))
    .bind(expires_at.naive_utc())
    .bind(now.naive_utc())
    .bind(family_id)
    .bind(&device_id)
    .execute(&mut *conn)
    .await?;
    let (access_token, _) =
        state.jwt.issue(&user.id, user.role, crate::ACCESS_TTL, device_id).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Tokens { access_token, refresh_token })
}

/// Starts a new token family for `user` (sign-up, sign-in) and records it on the device.
pub async fn start_session(
    conn: &mut PgConnection,
    state: &AppState,
    user: &users::User,
    device_id: Option<String>,
) -> Result<Tokens, ApiError> {
    let family_id = uuid::Uuid::new_v4().to_string();
    if let Some(device_id) = &device_id {
        sqlx::query("UPDATE devices SET refresh_family_id = $3 WHERE user_id = $1 AND device_id = $2")
            .bind(&user.id)
            .bind(device_id)
            .bind(&family_id)
            .execute(&mut *conn)
            .await?;
    }
    issue(conn, state, user, &family_id, device_id).await
}

/// The refresh token stored for `presented`: its hash (tokens auth issued), or the presented
/// value itself on a migrated row (`family_id IS NULL`; see the module doc). `FOR UPDATE`: two
/// concurrent refreshes of one token serialise here, so exactly one rotates it and the other is
/// seen as a reuse.
async fn find_token(conn: &mut PgConnection, presented: &str) -> Result<Option<TokenRow>, sqlx::Error> {
    // Both arms use the unique index on `token`. Should a raw migrated value ever equal the hash
    // of another presented token, the hashed (issued) row wins.
    sqlx::query_as(
        "SELECT id, user_id, expires_at, family_id, rotated_at, revoked_at, device_id
         FROM refresh_tokens
         WHERE token = $1 OR (token = $2 AND family_id IS NULL)
         ORDER BY token = $1 DESC
         LIMIT 1
         FOR UPDATE",
    )
    .bind(token_hash(presented))
    .bind(presented)
    .fetch_optional(conn)
    .await
}

/// Revokes every live token of `family_id` (a NULL family, from migrated data, is the token
/// itself, keyed by its id).
async fn revoke_family(conn: &mut PgConnection, family_id: &str) -> Result<u64, sqlx::Error> {
    let now = Utc::now().naive_utc();
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2
         WHERE (family_id = $1 OR (family_id IS NULL AND id = $1)) AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefreshResponse {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    expires_at: NaiveDateTime,
    family_id: Option<String>,
    rotated_at: Option<NaiveDateTime>,
    revoked_at: Option<NaiveDateTime>,
    device_id: Option<String>,
}

async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<RefreshResponse>, ApiError> {
    let invalid = |why: &str| ApiError::Unauthorized(format!("refresh token {why}; sign in again"));
    let mut tx = state.db.begin().await?;
    let Some(row) = find_token(&mut tx, &body.refresh_token).await? else { return Err(invalid("is unknown")) };
    // A migrated token (no family) becomes the family of its successors, keyed by its id.
    let family_id = row.family_id.clone().unwrap_or_else(|| row.id.clone());
    if row.revoked_at.is_some() {
        return Err(invalid("was revoked"));
    }
    if row.rotated_at.is_some() {
        let n = revoke_family(&mut tx, &family_id).await?;
        tx.commit().await?;
        tracing::warn!(user_id = %row.user_id, family_id, revoked = n, "rotated refresh token reused; family revoked");
        return Err(invalid("was already used (possible theft); every session of this sign-in was revoked"));
    }
    if row.expires_at < Utc::now().naive_utc() {
        return Err(invalid("expired"));
    }
    let user = users::find_user(&state, &row.user_id).await?.ok_or_else(|| invalid("belongs to no account"))?;
    sqlx::query("UPDATE refresh_tokens SET rotated_at = $2 WHERE id = $1")
        .bind(&row.id)
        .bind(Utc::now().naive_utc())
        .execute(&mut *tx)
        .await?;
    let tokens = issue(&mut tx, &state, &user, &family_id, row.device_id).await?;
    tx.commit().await?;
    Ok(Json(RefreshResponse {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in: crate::ACCESS_TTL.as_secs(),
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogoutRequest {
    refresh_token: Option<String>,
}

/// Ends the caller's session: revokes the family of the given refresh token, or, without one,
/// every token of the caller's device (or of the caller, when the token has no device).
async fn logout(
    State(state): State<AppState>,
    auth: AuthUser,
    correlation: CorrelationId,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let body: LogoutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let user = users::find_user(&state, auth.id())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the account of this token no longer exists".into()))?;
    let mut tx = state.db.begin().await?;
    let now = Utc::now().naive_utc();
    match (&body.refresh_token, auth.device_id()) {
        (Some(token), _) => {
            // Someone else's token is left alone: the caller can only end its own sessions.
            if let Some(row) = find_token(&mut tx, token).await?.filter(|row| row.user_id == user.id) {
                revoke_family(&mut tx, &row.family_id.unwrap_or(row.id)).await?;
            }
        }
        (None, Some(device_id)) => {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $3 WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL",
            )
            .bind(&user.id)
            .bind(device_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        (None, None) => {
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(&user.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
    }
    let mut data = users::event_data(&user);
    data["deviceId"] = json!(auth.device_id());
    state.enqueue_event(&mut tx, types::AUTH_USER_LOGOUT, data, &correlation).await?;
    tx.commit().await?;
    state.relay.notify();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_random_and_stored_as_their_sha256() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
