//! Device sessions, with the API of seed plan 7.2.1 (SPEC §10): one row per (user, client
//! device). Signing in with a `deviceId` binds the session's refresh tokens to the device;
//! revoking a device revokes those tokens and publishes `auth.session.revoked`
//! {userId, deviceId} through the outbox, which the gateway pushes to the user's open tabs.
//!
//! # The contract (what the seed's frontend reads)
//! - `POST /api/auth/devices/register` `{deviceId, deviceName?, deviceType?}` → 200 and the
//!   device (the seed answers `res.json(device)`); registering again refreshes its
//!   `lastActiveAt` and user agent, and re-activates a logged-out device.
//! - `GET /api/auth/devices` → a bare JSON array, newest-active first.
//! - `DELETE /api/auth/devices/{deviceId}` → 204 (404 when the user has no such active device).
//! - `POST /api/auth/devices/logout-others` `{currentDeviceId?}` → 204; without
//!   `currentDeviceId` the device of the access token is kept.
//!
//! A device is `{id, deviceId, deviceName, deviceType, userAgent, lastActiveAt, createdAt}` —
//! exactly the fields of the seed's model the frontend shows, without `userId` (always the
//! caller) and without the client address auth records for the audit trail.
//!
//! Where this differs from the seed's Prisma code, on purpose: `deviceId` is unique per user,
//! not globally (a client-chosen id of one user must not take over another's row), and a
//! logged-out device is marked `revoked_at` rather than deleted, so its tokens stay traceable.
//! `lastActiveAt` moves on sign-in, on register and on every refresh of the device's tokens.

use axum::{
    extract::{FromRequestParts, Path, State},
    http::{request::Parts, StatusCode},
    routing::{delete, get, post},
    Router,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::types;
use mfe_kit::{ApiError, AuthUser, ClientIp, CorrelationId, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use crate::AppState;

/// The client's address and user agent, recorded on device sessions. The address is
/// [`mfe_kit::ClientIp`]: the first hop of `X-Forwarded-For` that is not a trusted proxy,
/// walking from the right (never the client's own leftmost entry), else the peer address.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let ip = ClientIp::of(parts).0.map(|ip| ip.to_string());
        Ok(ClientMeta { ip, user_agent: header("user-agent").map(|ua| ua.chars().take(512).collect()) })
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/auth/devices/register", post(register))
        .route("/api/auth/devices", get(list))
        .route("/api/auth/devices/logout-others", post(logout_others))
        .route("/api/auth/devices/{device_id}", delete(revoke))
}

/// The longest `deviceName` kept (the seed's frontend sends e.g. "Chrome Browser").
const MAX_DEVICE_NAME: usize = 200;
/// The longest `deviceType` kept (the seed's frontend sends browser, mobile or desktop).
const MAX_DEVICE_TYPE: usize = 64;

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

/// What a client says about its device (register, sign-in, sign-up): both optional; blank
/// counts as not given, so a re-registration without them keeps what was stored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLabel {
    pub device_name: Option<String>,
    pub device_type: Option<String>,
}

impl DeviceLabel {
    /// The trimmed, non-blank name and type; 422 when one is too long or has control characters.
    fn checked(&self) -> Result<(Option<String>, Option<String>), ApiError> {
        let check = |field: &str, value: &Option<String>, max: usize| -> Result<Option<String>, ApiError> {
            let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
            if v.chars().count() > max || v.chars().any(char::is_control) {
                return Err(ApiError::Validation(format!(
                    "{field} must be at most {max} characters without control characters"
                )));
            }
            Ok(Some(v.to_string()))
        };
        Ok((
            check("deviceName", &self.device_name, MAX_DEVICE_NAME)?,
            check("deviceType", &self.device_type, MAX_DEVICE_TYPE)?,
        ))
    }
}

/// Records (or re-activates) `device_id` of `user_id`: a new name or type replaces the stored
/// one, an absent one keeps it; user agent, address and `last_active_at` are always refreshed.
pub async fn upsert(
    conn: &mut PgConnection,
    user_id: &str,
    device_id: &str,
    label: &DeviceLabel,
    meta: &ClientMeta,
) -> Result<Device, ApiError> {
    let (name, kind) = label.checked()?;
    let now = Utc::now().naive_utc();
    let row: DeviceRow = sqlx::query_as(
        "INSERT INTO devices (id, user_id, device_id, device_name, device_type, user_agent, ip_address,
                              created_at, last_active_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             device_name = COALESCE(EXCLUDED.device_name, devices.device_name),
             device_type = COALESCE(EXCLUDED.device_type, devices.device_type),
             user_agent = EXCLUDED.user_agent,
             ip_address = EXCLUDED.ip_address,
             last_active_at = EXCLUDED.last_active_at,
             revoked_at = NULL
         RETURNING id, device_id, device_name, device_type, user_agent, created_at, last_active_at",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(user_id)
    .bind(device_id)
    .bind(name)
    .bind(kind)
    .bind(&meta.user_agent)
    .bind(&meta.ip)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

/// Moves `last_active_at` of the device of a refreshed session (no-op without a device).
pub async fn touch(conn: &mut PgConnection, user_id: &str, device_id: Option<&str>) -> Result<(), sqlx::Error> {
    if let Some(device_id) = device_id {
        sqlx::query("UPDATE devices SET last_active_at = $3 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(Utc::now().naive_utc())
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A device session as the API shows it (seed 7.2.1's model, see the module doc).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    id: String,
    device_id: String,
    device_name: Option<String>,
    device_type: Option<String>,
    user_agent: Option<String>,
    last_active_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    device_id: String,
    device_name: Option<String>,
    device_type: Option<String>,
    user_agent: Option<String>,
    created_at: NaiveDateTime,
    last_active_at: NaiveDateTime,
}

impl From<DeviceRow> for Device {
    fn from(row: DeviceRow) -> Self {
        Device {
            id: row.id,
            device_id: row.device_id,
            device_name: row.device_name,
            device_type: row.device_type,
            user_agent: row.user_agent,
            last_active_at: row.last_active_at.and_utc(),
            created_at: row.created_at.and_utc(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterRequest {
    device_id: String,
    #[serde(flatten)]
    label: DeviceLabel,
}

async fn register(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: ClientMeta,
    Json(body): Json<RegisterRequest>,
) -> Result<Json<Device>, ApiError> {
    let device_id = check_device_id(Some(&body.device_id))?.expect("given");
    let mut conn = state.db.acquire().await?;
    Ok(Json(upsert(&mut conn, auth.id(), &device_id, &body.label, &meta).await?))
}

async fn list(State(state): State<AppState>, auth: AuthUser) -> Result<Json<Vec<Device>>, ApiError> {
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT id, device_id, device_name, device_type, user_agent, created_at, last_active_at FROM devices
         WHERE user_id = $1 AND revoked_at IS NULL ORDER BY last_active_at DESC, created_at DESC, device_id",
    )
    .bind(auth.id())
    .fetch_all(&state.db)
    .await?;
    Ok(Json(rows.into_iter().map(Device::from).collect()))
}

/// Marks the given devices of `user_id` revoked, revokes their refresh tokens and enqueues one
/// `auth.session.revoked` per device. Returns the sessions (token families) ended, whose access
/// tokens the caller denies after its commit ([`crate::sessions::end_access_tokens`]).
async fn revoke_devices(
    conn: &mut PgConnection,
    state: &AppState,
    user_id: &str,
    device_ids: &[String],
    correlation: &CorrelationId,
) -> Result<Vec<String>, ApiError> {
    let now = Utc::now().naive_utc();
    let mut families: Vec<String> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET revoked_at = $3
         WHERE user_id = $1 AND device_id = ANY($2) AND revoked_at IS NULL
         RETURNING COALESCE(family_id, id)",
    )
    .bind(user_id)
    .bind(device_ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    families.sort();
    families.dedup();
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
    Ok(families)
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
    let families = revoke_devices(&mut tx, &state, auth.id(), &revoked, &correlation).await?;
    tx.commit().await?;
    state.broker.notify();
    crate::sessions::end_access_tokens(&state, &families).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogoutOthersRequest {
    /// The device to keep (the seed sends the browser's own id); defaults to the device of the
    /// access token.
    current_device_id: Option<String>,
}

async fn logout_others(
    State(state): State<AppState>,
    auth: AuthUser,
    correlation: CorrelationId,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body: LogoutOthersRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutOthersRequest::default()
    } else {
        mfe_kit::error::decode_json(&body)?
    };
    let keep = check_device_id(body.current_device_id.as_deref().or(auth.device_id()))?.ok_or_else(|| {
        ApiError::Validation(
            "say which device to keep: send {\"currentDeviceId\": \"...\"} or sign in with a deviceId".into(),
        )
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
    let families = revoke_devices(&mut tx, &state, auth.id(), &revoked, &correlation).await?;
    tx.commit().await?;
    state.broker.notify();
    crate::sessions::end_access_tokens(&state, &families).await;
    tracing::info!(user_id = auth.id(), kept = %keep, revoked = revoked.len(), "logged out the other devices");
    Ok(StatusCode::NO_CONTENT)
}
