//! Accounts: signup, signin, `me`, user lookup for other services and the admin listing.

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::types;
use mfe_kit::{ApiError, AuthUser, Caller, CorrelationId, Json, RequireAdmin, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{devices, password, sessions, AppState, ClientMeta};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/signin", post(signin))
        .route("/api/auth/me", get(me))
        .route("/api/auth/users", get(list_users))
        .route("/api/auth/users/{id}", get(get_user))
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    password_hash: String,
    name: String,
    role: String,
    email_verified: bool,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl UserRow {
    fn into_user(self) -> Result<(User, String), ApiError> {
        let role = self.role.parse().map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?;
        Ok((
            User {
                id: self.id,
                email: self.email,
                name: self.name,
                role,
                email_verified: self.email_verified,
                created_at: self.created_at.and_utc(),
                updated_at: self.updated_at.and_utc(),
            },
            self.password_hash,
        ))
    }
}

const USER_COLUMNS: &str =
    r#"id, email, password_hash, name, role::text AS role, email_verified, created_at, updated_at"#;

/// The user `id` from the cache or the database.
pub async fn find_user(state: &AppState, id: &str) -> Result<Option<User>, ApiError> {
    if let Some(cache) = &state.users_cache {
        if let Some(user) = cache.get::<User>(id).await {
            return Ok(Some(user));
        }
    }
    let row: Option<UserRow> = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (user, _) = row.into_user()?;
    if let Some(cache) = &state.users_cache {
        cache.set(id, &user).await;
    }
    Ok(Some(user))
}

/// The data every `auth.user.*` event carries.
pub fn event_data(user: &User) -> serde_json::Value {
    json!({"userId": user.id, "email": user.email, "name": user.name, "role": user.role})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignupRequest {
    email: String,
    password: String,
    name: String,
    /// CUSTOMER (default) or VENDOR; ADMIN cannot be chosen at signup.
    role: Option<Role>,
    device_id: Option<String>,
    /// `deviceName` and `deviceType`, recorded on the device when `deviceId` is given.
    #[serde(flatten)]
    device: devices::DeviceLabel,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigninRequest {
    email: String,
    password: String,
    /// The client's device id; given, the session is bound to that device.
    device_id: Option<String>,
    /// `deviceName` and `deviceType`, recorded on the device when `deviceId` is given.
    #[serde(flatten)]
    device: devices::DeviceLabel,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    access_token: String,
    refresh_token: String,
    /// Seconds until the access token expires.
    expires_in: u64,
    user: User,
}

async fn signup(
    State(state): State<AppState>,
    correlation: CorrelationId,
    meta: ClientMeta,
    Json(body): Json<SignupRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = password::normalise_email(&body.email)?;
    let name = password::check_name(&body.name)?;
    password::check_policy(&body.password)?;
    let role = body.role.unwrap_or(Role::Customer);
    if role == Role::Admin {
        return Err(ApiError::Forbidden("the ADMIN role cannot be chosen at signup".into()));
    }
    let device_id = devices::check_device_id(body.device_id.as_deref())?;
    let plain = body.password;
    let hash = tokio::task::spawn_blocking(move || password::hash(&plain))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot hash password: {e}")))?;

    let now = Utc::now().naive_utc();
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.db.begin().await?;
    // A legacy account may hold the same address in another case (imported byte-identical);
    // the unique index only sees exact duplicates.
    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = $1)")
        .bind(&email)
        .fetch_one(&mut *tx)
        .await?;
    if taken {
        return Err(ApiError::Conflict(format!("an account with email {email} already exists")));
    }
    let inserted = sqlx::query_as::<_, UserRow>(&format!(
        r#"INSERT INTO users (id, email, password_hash, name, role, email_verified, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5::"Role", false, $6, $6)
           RETURNING {USER_COLUMNS}"#
    ))
    .bind(&id)
    .bind(&email)
    .bind(&hash)
    .bind(&name)
    .bind(role.as_str())
    .bind(now)
    .fetch_one(&mut *tx)
    .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) if mfe_kit::error::is_unique_violation(&e) => {
            return Err(ApiError::Conflict(format!("an account with email {email} already exists")))
        }
        Err(e) => return Err(e.into()),
    };
    let (user, _) = row.into_user()?;
    if let Some(device_id) = &device_id {
        devices::upsert(&mut tx, &user.id, device_id, &body.device, &meta).await?;
    }
    let tokens = sessions::start_session(&mut tx, &state, &user, device_id).await?;
    state.enqueue_event(&mut tx, types::AUTH_USER_REGISTERED, event_data(&user), &correlation).await?;
    tx.commit().await?;
    state.broker.notify();
    if let Some(cache) = &state.users_cache {
        cache.delete(&user.id).await;
    }
    tracing::info!(user_id = %user.id, "user registered");
    let response = AuthResponse {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in: crate::ACCESS_TTL.as_secs(),
        user,
    };
    Ok((StatusCode::CREATED, Json(response)))
}

/// 429 in the shared error shape, with `Retry-After` in whole seconds.
fn too_many_attempts(wait: std::time::Duration) -> axum::response::Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = json!({"error": {
        "code": "too_many_requests",
        "message": format!("too many failed sign-ins; try again in {secs} s"),
    }});
    (StatusCode::TOO_MANY_REQUESTS, [(axum::http::header::RETRY_AFTER, secs.to_string())], axum::Json(body))
        .into_response()
}

async fn signin(
    State(state): State<AppState>,
    correlation: CorrelationId,
    meta: ClientMeta,
    Json(body): Json<SigninRequest>,
) -> Result<axum::response::Response, ApiError> {
    let invalid = || ApiError::Unauthorized("invalid email or password".into());
    let email = password::lookup_email(&body.email);
    let device_id = devices::check_device_id(body.device_id.as_deref())?;
    if let Some(wait) = state.throttle.retry_after(&email, meta.ip.as_deref()).await {
        tracing::info!(ip = meta.ip.as_deref(), "sign-in throttled");
        return Ok(too_many_attempts(wait));
    }
    // Case-insensitive (legacy accounts keep upper-case emails); an exact match wins should
    // two legacy accounts differ only in case.
    let row: Option<UserRow> = sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE lower(email) = $1 ORDER BY email = $1 DESC, created_at LIMIT 1"
    ))
    .bind(&email)
    .fetch_optional(&state.db)
    .await?;
    let (user, hash) = match row {
        Some(row) => {
            let (user, hash) = row.into_user()?;
            (Some(user), hash)
        }
        None => (None, password::dummy_hash().to_string()),
    };
    let plain = body.password;
    // One blocking task verifies and, for a POC-2 hash (bcrypt, older argon2) that matched,
    // computes its argon2id replacement, so a migrated sign-in waits for the pool only once.
    let (matches, rehashed, hash) = tokio::task::spawn_blocking(move || {
        let matches = password::verify(&plain, &hash);
        let rehashed = (matches && password::needs_rehash(&hash)).then(|| password::hash(&plain));
        (matches, rehashed, hash)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let user = match user {
        Some(user) if matches => user,
        _ => {
            state.throttle.failed(&email, meta.ip.as_deref()).await;
            return Err(invalid());
        }
    };
    state.throttle.succeeded(&email).await;

    let mut tx = state.db.begin().await?;
    let wrote_user = match rehashed {
        Some(Ok(new_hash)) => rehash(&mut tx, &user, &hash, &new_hash).await?,
        // The old hash still verifies, so the sign-in goes on; the next one tries again.
        Some(Err(e)) => {
            tracing::error!(user_id = %user.id, "cannot rehash the password to argon2id: {e}");
            false
        }
        None => false,
    };
    if let Some(device_id) = &device_id {
        devices::upsert(&mut tx, &user.id, device_id, &body.device, &meta).await?;
    }
    let tokens = sessions::start_session(&mut tx, &state, &user, device_id.clone()).await?;
    let mut data = event_data(&user);
    data["deviceId"] = json!(device_id);
    state.enqueue_event(&mut tx, types::AUTH_USER_LOGIN, data, &correlation).await?;
    tx.commit().await?;
    state.broker.notify();
    if wrote_user {
        // Every write of a user drops `user:{id}`, even one the cached fields do not show.
        if let Some(cache) = &state.users_cache {
            cache.delete(&user.id).await;
        }
    }
    Ok(Json(AuthResponse {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in: crate::ACCESS_TTL.as_secs(),
        user,
    })
    .into_response())
}

/// Replaces the verified POC-2 hash `old` of `user` by `new` (argon2id), in the sign-in's
/// transaction: the new hash is stored exactly when the sign-in's session is. Compared with
/// `old`, so a password changed meanwhile is never overwritten. `updated_at` stays: the account
/// did not change, only how its password is stored (and `updatedAt` is what clients see).
/// Returns whether the row was written.
async fn rehash(conn: &mut sqlx::PgConnection, user: &User, old: &str, new: &str) -> Result<bool, ApiError> {
    let done = sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
        .bind(&user.id)
        .bind(old)
        .bind(new)
        .execute(conn)
        .await?;
    if done.rows_affected() == 1 {
        tracing::info!(user_id = %user.id, from = password::Scheme::of(old).as_str(), "password rehashed to argon2id");
    }
    Ok(done.rows_affected() == 1)
}

async fn me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<User>, ApiError> {
    find_user(&state, auth.id())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::Unauthorized("the account of this token no longer exists".into()))
}

/// `GET /api/auth/users/{id}`, service to service (SPEC §3): another service with a service
/// token ([`mfe_kit::JwtKeys::issue_service`]) reads any user, an admin any user, a user only
/// itself; anyone else gets 403 (before the lookup, so it does not tell which ids exist).
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    match &caller {
        Caller::Service(_) => {}
        Caller::User(user) if user.is_self_or_admin(&id) => {}
        Caller::User(_) => {
            return Err(ApiError::Forbidden(
                "a user can only read its own account here (services and admins: any)".into(),
            ))
        }
    }
    find_user(&state, &id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
}

#[derive(Deserialize)]
pub struct ListParams {
    page: Option<u32>,
    limit: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserPage {
    users: Vec<User>,
    page: u32,
    limit: u32,
    total: i64,
    total_pages: i64,
}

async fn list_users(
    State(state): State<AppState>,
    _admin: RequireAdmin,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?;
    let page = params.page.unwrap_or(1).max(1);
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let offset = i64::from(page - 1) * i64::from(limit);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&state.db).await?;
    let rows: Vec<UserRow> =
        sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"))
            .bind(i64::from(limit))
            .bind(offset)
            .fetch_all(&state.db)
            .await?;
    let users = rows.into_iter().map(|r| r.into_user().map(|(u, _)| u)).collect::<Result<Vec<_>, _>>()?;
    let total_pages = (total + i64::from(limit) - 1) / i64::from(limit);
    Ok(Json(UserPage { users, page, limit, total, total_pages }))
}
