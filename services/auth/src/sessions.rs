//! Refresh tokens. Each sign-in starts a token *family*; `refresh` rotates (stamps `rotated_at`
//! on the presented token and issues a successor in the same family). Presenting a token that
//! was already rotated means it was copied: the whole family is revoked and the caller gets 401
//! — unless it comes within the grace window, below. Only the SHA-256 of a token auth issued is
//! stored, so a database leak yields no usable token.
//!
//! # Two tabs refreshing at once: the grace window
//! The tabs of one browser share one refresh token and often refresh it at the same moment
//! (each when its access token expires, or all together when the laptop wakes up). Without a
//! grace, the second request is a reuse and revokes the family: every tab is logged out. So for
//! [`Rotation::grace`] after a rotation (`AUTH_REFRESH_GRACE_SECONDS`, default 5 s), presenting
//! the rotated token again answers with **the same successor** (and a fresh access token)
//! instead of revoking; after the window it is a reuse, exactly as before.
//!
//! Why the same successor rather than a sibling token: with the same successor the family keeps
//! exactly one live refresh token, so reuse detection stays exact. A sibling would leave a
//! second live token nobody rotates — a thief who replayed the old token inside the window
//! would keep it for its whole lifetime without ever tripping the detection; with the same
//! successor, whichever of the thief and the user rotates it second is caught.
//!
//! Answering with the same successor without storing it: the successor is not random but
//! `HMAC-SHA256(rotation key, presented token)`, the key derived from `JWT_SECRET`. The second
//! request presents the same token, so it recomputes the same successor, and auth checks that
//! its hash is the live token of the family. Nothing but SHA-256 hashes is stored; without the
//! key the successor of a stolen token cannot be guessed (whoever holds `JWT_SECRET` can mint
//! access tokens anyway). Sign-in tokens stay random. If `JWT_SECRET` changes in between, the
//! recomputed successor is not found and the second request counts as a reuse.
//!
//! The two requests serialise on the row lock of `find_token`: the first rotates and commits,
//! the second then sees `rotated_at` and takes the grace path. It also locks the successor, so
//! a rotation of the successor racing with it is serialised too; a successor already rotated or
//! revoked gets no grace (the family is revoked), and the window is measured from the
//! `rotated_at` the first request stamped, on the service's clock.
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
//! Presenting the migrated token again within the grace window answers with that successor (two
//! tabs after the migration); after it, it is a reuse: the family (the migrated row and every
//! successor) is revoked and the caller gets 401. Logout finds migrated tokens the same way.
//!
//! The exposure of a migrated token is the legacy database's: whoever can read auth_db (or the
//! legacy database) can use a POC-2 token until it is rotated, revoked or expired — once
//! rotated it is refused, and its successor is only stored hashed. Nothing new is exposed.

use std::{fmt, time::Duration};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use chrono::{NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use mfe_core::Secret;
use mfe_events::types;
use mfe_kit::{ApiError, AuthUser, CorrelationId, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::{devices, users, AppState};

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

/// How refresh tokens rotate (see the module doc): the grace window and the key that derives
/// a token's successor from it.
#[derive(Clone)]
pub struct Rotation {
    /// For this long after a rotation the rotated token answers with its successor.
    pub grace: Duration,
    /// HMAC-SHA256 keyed with the rotation key (itself derived from `JWT_SECRET`).
    key: Hmac<Sha256>,
}

impl fmt::Debug for Rotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotation").field("grace", &self.grace).field("key", &"[redacted]").finish()
    }
}

impl Rotation {
    /// The rotation key is `HMAC-SHA256(JWT_SECRET, label)`: a key of its own (a successor is
    /// never a valid JWT signature and the other way round) that needs no extra secret to run.
    pub fn new(jwt_secret: &Secret, grace: Duration) -> Self {
        let mut derive = Hmac::<Sha256>::new_from_slice(jwt_secret.expose().as_bytes()).expect("hmac takes any key");
        derive.update(b"mfe auth-service refresh-token successor v1");
        let key = Hmac::<Sha256>::new_from_slice(&derive.finalize().into_bytes()).expect("hmac takes any key");
        Self { grace, key }
    }

    /// The successor of the refresh token `presented`: the same on every call, unguessable
    /// without the key.
    pub fn successor_of(&self, presented: &str) -> String {
        let mut mac = self.key.clone();
        mac.update(presented.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether a token rotated at `rotated_at` is still inside the grace window.
    fn in_grace(&self, rotated_at: NaiveDateTime) -> bool {
        // A stamp slightly ahead of this clock (another replica's) counts as just now.
        let elapsed = (Utc::now().naive_utc() - rotated_at).to_std().unwrap_or(Duration::ZERO);
        elapsed < self.grace
    }
}

/// A new access token for `user` on `device_id`, of the session (token family) `family_id`.
fn access_token(
    state: &AppState,
    user: &users::User,
    device_id: Option<String>,
    family_id: &str,
) -> Result<String, ApiError> {
    let (token, _) = state
        .jwt
        .issue_for_session(&user.id, user.role, crate::ACCESS_TTL, device_id, &session_id(state, family_id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(token)
}

/// The `sid` of the access tokens of token family `family_id`: the family, prefixed with the
/// scope of this auth database ([`AppState::session_scope`]). Families auth starts are random
/// UUIDs, but a migrated family is keyed by its POC-2 row id, the same in every copy of the
/// legacy data: the scope keeps two auth databases sharing one Redis (the test databases, a
/// staging copy) from ending each other's sessions.
pub fn session_id(state: &AppState, family_id: &str) -> String {
    format!("{}.{family_id}", state.session_scope)
}

/// Ends the access tokens of `families` (sessions whose refresh tokens were just revoked, the
/// transaction committed) in every service: see [`mfe_kit::revocation`]. A Redis failure is
/// logged there; the refresh tokens stay revoked.
pub async fn end_access_tokens(state: &AppState, families: &[String]) {
    if let Some(revocations) = state.jwt.revocations() {
        let ttl = crate::ACCESS_TTL + std::time::Duration::from_secs(mfe_kit::jwt::LEEWAY_SECS);
        let sessions: Vec<String> = families.iter().map(|family| session_id(state, family)).collect();
        revocations.revoke(&sessions, ttl).await;
    }
}

/// Inserts `refresh_token` (stored as its hash) into `family_id` and returns it with a new
/// access token.
async fn issue(
    conn: &mut PgConnection,
    state: &AppState,
    user: &users::User,
    family_id: &str,
    device_id: Option<String>,
    refresh_token: String,
) -> Result<Tokens, ApiError> {
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
    Ok(Tokens { access_token: access_token(state, user, device_id, family_id)?, refresh_token })
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
    issue(conn, state, user, &family_id, device_id, new_refresh_token()).await
}

/// The refresh token stored for `presented`: its hash (tokens auth issued), or the presented
/// value itself on a migrated row (`family_id IS NULL`; see the module doc). `FOR UPDATE`: two
/// concurrent refreshes of one token serialise here, so exactly one rotates it and the other
/// sees the rotation (the grace window's successor, or a reuse).
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

/// The live successor `successor` of a token of `family_id` (see the module doc), locked so a
/// rotation of it waits for this transaction: not rotated, not revoked, not expired.
async fn find_live_successor(
    conn: &mut PgConnection,
    successor: &str,
    family_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM refresh_tokens
         WHERE token = $1 AND family_id = $2 AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > $3
         FOR UPDATE",
    )
    .bind(token_hash(successor))
    .bind(family_id)
    .bind(Utc::now().naive_utc())
    .fetch_optional(conn)
    .await
}

async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<RefreshResponse>, ApiError> {
    let invalid = |why: &str| ApiError::Unauthorized(format!("refresh token {why}; sign in again"));
    let respond = |tokens: Tokens| {
        Json(RefreshResponse {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_in: crate::ACCESS_TTL.as_secs(),
        })
    };
    let mut tx = state.db.begin().await?;
    let Some(row) = find_token(&mut tx, &body.refresh_token).await? else { return Err(invalid("is unknown")) };
    // A migrated token (no family) becomes the family of its successors, keyed by its id.
    let family_id = row.family_id.clone().unwrap_or_else(|| row.id.clone());
    if row.revoked_at.is_some() {
        return Err(invalid("was revoked"));
    }
    let successor = state.rotation.successor_of(&body.refresh_token);
    if let Some(rotated_at) = row.rotated_at {
        // Another tab refreshed this token a moment ago: hand out the same successor.
        if state.rotation.in_grace(rotated_at) && find_live_successor(&mut tx, &successor, &family_id).await?.is_some()
        {
            let user = users::find_user(&state, &row.user_id).await?.ok_or_else(|| invalid("belongs to no account"))?;
            devices::touch(&mut tx, &row.user_id, row.device_id.as_deref()).await?;
            tx.commit().await?;
            tracing::info!(user_id = %row.user_id, family_id, "rotated refresh token presented again within the grace window");
            let access_token = access_token(&state, &user, row.device_id, &family_id)?;
            return Ok(respond(Tokens { access_token, refresh_token: successor }));
        }
        let n = revoke_family(&mut tx, &family_id).await?;
        tx.commit().await?;
        end_access_tokens(&state, std::slice::from_ref(&family_id)).await;
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
    devices::touch(&mut tx, &row.user_id, row.device_id.as_deref()).await?;
    let tokens = issue(&mut tx, &state, &user, &family_id, row.device_id, successor).await?;
    tx.commit().await?;
    Ok(respond(tokens))
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
        mfe_kit::error::decode_json(&body)?
    };
    let user = users::find_user(&state, auth.id())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the account of this token no longer exists".into()))?;
    let mut tx = state.db.begin().await?;
    let now = Utc::now().naive_utc();
    // The sessions ended, whose access tokens are denied after the commit: the family of the
    // given refresh token (only that session), else those of the caller's device, else all.
    let mut families: Vec<String> = Vec::new();
    match (&body.refresh_token, auth.device_id()) {
        (Some(token), _) => {
            // Someone else's token is left alone: the caller can only end its own sessions.
            if let Some(row) = find_token(&mut tx, token).await?.filter(|row| row.user_id == user.id) {
                families.push(row.family_id.unwrap_or(row.id));
            }
        }
        (None, Some(device_id)) => {
            families.extend(
                sqlx::query_scalar::<_, String>(
                    "UPDATE refresh_tokens SET revoked_at = $3
                     WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL
                     RETURNING COALESCE(family_id, id)",
                )
                .bind(&user.id)
                .bind(device_id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?,
            );
        }
        (None, None) => {
            families.extend(
                sqlx::query_scalar::<_, String>(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL
                     RETURNING COALESCE(family_id, id)",
                )
                .bind(&user.id)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?,
            );
        }
    }
    families.sort();
    families.dedup();
    if body.refresh_token.is_some() {
        for family in &families {
            revoke_family(&mut tx, family).await?;
        }
    }
    let mut data = users::event_data(&user);
    data["deviceId"] = json!(auth.device_id());
    state.enqueue_event(&mut tx, types::AUTH_USER_LOGOUT, data, &correlation).await?;
    tx.commit().await?;
    state.broker.notify();
    end_access_tokens(&state, &families).await;
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

    #[test]
    fn a_successor_is_the_same_for_one_token_and_depends_on_the_token_and_the_secret() {
        let rotation = Rotation::new(&Secret::new("a-test-secret-of-sufficient-length-1"), Duration::from_secs(5));
        let other_secret = Rotation::new(&Secret::new("a-test-secret-of-sufficient-length-2"), Duration::from_secs(5));
        let token = new_refresh_token();
        let successor = rotation.successor_of(&token);
        assert_eq!(successor, rotation.successor_of(&token), "both tabs get the same successor");
        assert_eq!(successor.len(), 64);
        assert_ne!(successor, rotation.successor_of(&new_refresh_token()));
        assert_ne!(successor, other_secret.successor_of(&token), "keyed: unguessable without the secret");
        assert_ne!(successor, token_hash(&token), "the successor is not the stored hash of its parent");
        assert!(!format!("{rotation:?}").contains("secret"), "the key never prints");
    }

    #[test]
    fn the_grace_window_counts_from_the_rotation_and_zero_turns_it_off() {
        let secret = Secret::new("a-test-secret-of-sufficient-length-1");
        let rotation = Rotation::new(&secret, Duration::from_secs(5));
        let now = Utc::now().naive_utc();
        assert!(rotation.in_grace(now));
        assert!(rotation.in_grace(now - chrono::Duration::seconds(4)));
        assert!(!rotation.in_grace(now - chrono::Duration::seconds(6)));
        assert!(rotation.in_grace(now + chrono::Duration::seconds(1)), "a stamp from a clock slightly ahead");
        assert!(!Rotation::new(&secret, Duration::ZERO).in_grace(now));
    }
}
