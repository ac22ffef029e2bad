//! Device sessions (seed plan 7.2.1): one row per (user, client device). Signing in with a
//! `deviceId` binds the session's refresh tokens to the device; revoking a device revokes
//! those tokens and publishes `auth.session.revoked` {userId, deviceId} through the outbox,
//! which the gateway pushes to the user's open tabs.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::{delete, get, post},
    Router,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::types;
use mfe_kit::{ApiError, AuthUser, CorrelationId, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use crate::{AppState, ClientMeta};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/devices/register", post(register))
        .route("/api/auth/devices", get(list))
        .route("/api/auth/devices/logout-others", post(logout_others))
        .route("/api/auth/devices/{device_id}", delete(revoke))
}

/// A client device id: 1 to 128 printable ASCII characters.
pub fn check_device_id(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some(id) if !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(id.to_string()))
        }
        Some(_) => Err(ApiError::Validation("deviceId must be 1 to 128 printable ASCII characters".into())),
    }
}

/// Records (or re-activates) `device_id` of `user_id`, refreshing its metadata.
pub async fn upsert(
    conn: &mut PgConnection,
    user_id: &str,
    device_id: &str,
    name: Option<&str>,
    meta: &ClientMeta,
) -> Result<Device, sqlx::Error> {
    let now = Utc::now().naive_utc();
    let row: DeviceRow = sqlx::query_as(
        "INSERT INTO devices (id, user_id, device_id, name, user_agent, ip_address, created_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             name = COALESCE(EXCLUDED.name, devices.name),
             user_agent = EXCLUDED.user_agent,
             ip_address = EXCLUDED.ip_address,
             last_seen_at = EXCLUDED.last_seen_at,
             revoked_at = NULL
         RETURNING device_id, name, user_agent, ip_address, created_at, last_seen_at",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(user_id)
    .bind(device_id)
    .bind(name.map(|n| n.trim().chars().take(200).collect::<String>()))
    .bind(&meta.user_agent)
    .bind(&meta.ip)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(row.into_device(None))
}

/// A device session as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    device_id: String,
    name: Option<String>,
    user_agent: Option<String>,
    ip_address: Option<String>,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    /// Whether this is the device of the token making the request.
    current: bool,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    name: Option<String>,
    user_agent: Option<String>,
    ip_address: Option<String>,
    created_at: NaiveDateTime,
    last_seen_at: NaiveDateTime,
}

impl DeviceRow {
    fn into_device(self, current: Option<&str>) -> Device {
        Device {
            current: current == Some(self.device_id.as_str()),
            device_id: self.device_id,
            name: self.name,
            user_agent: self.user_agent,
            ip_address: self.ip_address,
            created_at: self.created_at.and_utc(),
            last_seen_at: self.last_seen_at.and_utc(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRequest {
    device_id: String,
    name: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: ClientMeta,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let device_id = check_device_id(Some(&body.device_id))?.expect("given");
    let mut conn = state.db.acquire().await?;
    let mut device = upsert(&mut conn, auth.id(), &device_id, body.name.as_deref(), &meta).await?;
    device.current = auth.device_id() == Some(device_id.as_str());
    Ok((StatusCode::CREATED, Json(device)))
}

#[derive(Serialize)]
struct DeviceList {
    devices: Vec<Device>,
}

async fn list(State(state): State<AppState>, auth: AuthUser) -> Result<Json<DeviceList>, ApiError> {
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT device_id, name, user_agent, ip_address, created_at, last_seen_at FROM devices
         WHERE user_id = $1 AND revoked_at IS NULL ORDER BY last_seen_at DESC, device_id",
    )
    .bind(auth.id())
    .fetch_all(&state.db)
    .await?;
    Ok(Json(DeviceList { devices: rows.into_iter().map(|r| r.into_device(auth.device_id())).collect() }))
}

/// Marks the given devices of `user_id` revoked, revokes their refresh tokens and enqueues one
/// `auth.session.revoked` per device.
async fn revoke_devices(
    conn: &mut PgConnection,
    state: &AppState,
    user_id: &str,
    device_ids: &[String],
    correlation: &CorrelationId,
) -> Result<(), ApiError> {
    let now = Utc::now().naive_utc();
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $3
         WHERE user_id = $1 AND device_id = ANY($2) AND revoked_at IS NULL",
    )
    .bind(user_id)
    .bind(device_ids)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    for device_id in device_ids {
        state
            .enqueue_event(
                conn,
                types::AUTH_SESSION_REVOKED,
                json!({"userId": user_id, "deviceId": device_id}),
                correlation,
            )
            .await?;
    }
    Ok(())
}

async fn revoke(
    State(state): State<AppState>,
    auth: AuthUser,
    correlation: CorrelationId,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.db.begin().await?;
    let revoked: Vec<String> = sqlx::query_scalar(
        "UPDATE devices SET revoked_at = $3 WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL
         RETURNING device_id",
    )
    .bind(auth.id())
    .bind(&device_id)
    .bind(Utc::now().naive_utc())
    .fetch_all(&mut *tx)
    .await?;
    if revoked.is_empty() {
        return Err(ApiError::NotFound(format!("no active device {device_id} for this user")));
    }
    revoke_devices(&mut tx, &state, auth.id(), &revoked, &correlation).await?;
    tx.commit().await?;
    state.relay.notify();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogoutOthersRequest {
    /// The device to keep; defaults to the device of the access token.
    device_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogoutOthersResponse {
    revoked: Vec<String>,
}

async fn logout_others(
    State(state): State<AppState>,
    auth: AuthUser,
    correlation: CorrelationId,
    body: axum::body::Bytes,
) -> Result<Json<LogoutOthersResponse>, ApiError> {
    let body: LogoutOthersRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutOthersRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let keep = check_device_id(body.device_id.as_deref().or(auth.device_id()))?.ok_or_else(|| {
        ApiError::Validation("say which device to keep: sign in with a deviceId or send {\"deviceId\": \"...\"}".into())
    })?;
    let mut tx = state.db.begin().await?;
    let revoked: Vec<String> = sqlx::query_scalar(
        "UPDATE devices SET revoked_at = $3 WHERE user_id = $1 AND device_id <> $2 AND revoked_at IS NULL
         RETURNING device_id",
    )
    .bind(auth.id())
    .bind(&keep)
    .bind(Utc::now().naive_utc())
    .fetch_all(&mut *tx)
    .await?;
    revoke_devices(&mut tx, &state, auth.id(), &revoked, &correlation).await?;
    tx.commit().await?;
    state.relay.notify();
    Ok(Json(LogoutOthersResponse { revoked }))
}
