//! The HTTP API under `/api/admin/`, every route ADMIN only (401 without a token, 403 for other
//! roles): users (through the auth service), audit logs, system config, system health,
//! announcements.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use chrono::{DateTime, Utc};
use mfe_kit::{telemetry::CORRELATION_HEADER, ApiError, ClientIp, CorrelationId, Json, RequireAdmin};
use serde::{Deserialize, Serialize};

use crate::{
    announcements::{self, Announcement, NewAnnouncement},
    audit::{self, AuditFilter, AuditLog, Cursor},
    startup::AppState,
    system_config::{self, valid_key, Actor, ConfigEntry},
};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", get(list_users))
        .route("/api/admin/audit-logs", get(list_audit_logs))
        .route("/api/admin/config", get(list_config))
        .route("/api/admin/config/{key}", get(get_config).put(put_config))
        .route("/api/admin/system/health", get(system_health))
        .route("/api/admin/announcements", post(post_announcement))
}

/// `GET /api/admin/users`: the auth service's `GET /api/auth/users`, called with the caller's
/// own bearer token and correlation id (the auth service checks the role again), query string
/// passed through. The answer is relayed as is; the admin service never reads auth_db.
async fn list_users(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
    correlation: CorrelationId,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut path = "/api/auth/users".to_string();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        path = format!("{path}?{q}");
    }
    let auth = &state.urls.auth;
    let request = |r: reqwest::RequestBuilder| {
        let r = r.header(CORRELATION_HEADER.as_str(), correlation.as_str());
        match headers.get(header::AUTHORIZATION) {
            Some(token) => r.header(header::AUTHORIZATION, token.as_bytes()),
            None => r,
        }
    };
    let upstream = auth.get(&state.http, &path, request).await.map_err(|e| {
        ApiError::Unavailable(format!("auth service at {auth}: {} — is it running? check AUTH_SERVICE_URL", short(&e)))
    })?;
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream.headers().get(reqwest::header::CONTENT_TYPE).map(|v| v.as_bytes().to_vec());
    let body = upstream
        .bytes()
        .await
        .map_err(|e| ApiError::Unavailable(format!("auth service at {auth}: reading the answer: {}", short(&e))))?;
    let mut response = Response::builder().status(status);
    if let Some(ct) = content_type {
        response = response.header(header::CONTENT_TYPE, ct);
    }
    response.body(Body::from(body)).map_err(|e| ApiError::Internal(e.into()))
}

fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused".into()
    } else {
        mfe_core::cause_chain(e)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    pub user_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub data: Vec<AuditLog>,
    pub next_cursor: Option<String>,
}

fn time_param(name: &str, raw: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match raw.filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) => DateTime::parse_from_rfc3339(&r).map(|t| Some(t.with_timezone(&Utc))).map_err(|_| {
            ApiError::BadRequest(format!("{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z, got {r:?}"))
        }),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// `GET /api/admin/audit-logs?userId=&action=&resourceType=&resourceId=&from=&to=&limit=&cursor=`,
/// newest first.
async fn list_audit_logs(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw.parse::<i64>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::BadRequest(format!("limit must be a number from 1 to {MAX_LIMIT}, got {raw:?}"))
        })?,
    };
    let cursor = match non_empty(q.cursor) {
        None => None,
        Some(raw) => Some(Cursor::decode(&raw).ok_or_else(|| {
            ApiError::BadRequest("cursor is not one this service issued; pass nextCursor from a previous page".into())
        })?),
    };
    let filter = AuditFilter {
        user_id: non_empty(q.user_id),
        action: non_empty(q.action),
        resource_type: non_empty(q.resource_type),
        resource_id: non_empty(q.resource_id),
        from: time_param("from", q.from)?,
        to: time_param("to", q.to)?,
    };
    let (data, next) = audit::list(&state.db, &filter, cursor.as_ref(), limit).await?;
    Ok(Json(AuditPage { data, next_cursor: next.map(|c| c.encode()) }))
}

async fn list_config(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
) -> Result<impl IntoResponse, ApiError> {
    let entries = system_config::all(&state.db).await?;
    Ok(Json(serde_json::json!({ "data": entries })))
}

fn checked_key(key: &str) -> Result<(), ApiError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(ApiError::Validation(format!(
            "config key {key:?} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )))
    }
}

async fn get_config(
    State(state): State<AppState>,
    RequireAdmin(_): RequireAdmin,
    Path(key): Path<String>,
) -> Result<Json<ConfigEntry>, ApiError> {
    checked_key(&key)?;
    system_config::get(&state.db, &key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("config key {key:?} is not set")))
}

#[derive(Debug, Deserialize)]
pub struct PutConfig {
    /// Any JSON value except null (required; a missing or null value is a 422).
    pub value: Option<serde_json::Value>,
    pub description: Option<String>,
}

/// Who is calling and from where ([`ClientIp`]: the first untrusted hop of X-Forwarded-For
/// from the right, else the peer), for audit rows.
fn actor_of(user_id: &str, client_ip: ClientIp, headers: &HeaderMap, correlation: CorrelationId) -> Actor {
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(String::from);
    Actor {
        user_id: user_id.to_string(),
        ip_address: client_ip.0.map(|ip| ip.to_string()),
        user_agent: header_text("user-agent"),
        correlation_id: Some(correlation.0),
    }
}

/// `POST /api/admin/announcements` `{message, title?, level?}` → 201 with the announcement;
/// every connected socket receives it as `notification:new` (room `broadcast`).
async fn post_announcement(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    correlation: CorrelationId,
    client_ip: ClientIp,
    headers: HeaderMap,
    Json(body): Json<NewAnnouncement>,
) -> Result<(StatusCode, Json<Announcement>), ApiError> {
    let (title, message, level) = body.validate().map_err(ApiError::Validation)?;
    let actor = actor_of(admin.id(), client_ip, &headers, correlation);
    let announcement = announcements::publish(&state.db, title, message, level, &actor).await?;
    state.broker.notify();
    state.metrics.event_published(mfe_events::types::ADMIN_ANNOUNCEMENT_CREATED);
    state.metrics.event_published(mfe_events::types::ADMIN_AUDIT_CREATED);
    tracing::info!(announcement = %announcement.id, sent_by = %actor.user_id, "announcement published");
    Ok((StatusCode::CREATED, Json(announcement)))
}

async fn put_config(
    State(state): State<AppState>,
    RequireAdmin(admin): RequireAdmin,
    correlation: CorrelationId,
    client_ip: ClientIp,
    headers: HeaderMap,
    Path(key): Path<String>,
    Json(body): Json<PutConfig>,
) -> Result<Json<ConfigEntry>, ApiError> {
    checked_key(&key)?;
    let value = body.value.ok_or_else(|| ApiError::Validation("body must carry a non-null \"value\"".into()))?;
    let actor = actor_of(admin.id(), client_ip, &headers, correlation);
    let entry = system_config::set(&state.db, &key, value, body.description, &actor).await?;
    state.broker.notify();
    state.metrics.event_published(mfe_events::types::ADMIN_CONFIG_UPDATED);
    state.metrics.event_published(mfe_events::types::ADMIN_AUDIT_CREATED);
    tracing::info!(key = %key, updated_by = %actor.user_id, "system config updated");
    Ok(Json(entry))
}

/// One row of the system health table.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    pub name: String,
    pub url: String,
    /// `up` (answered 200), `degraded` (answered, not 200) or `down` (no answer).
    pub status: &'static str,
    pub http_status: Option<u16>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The service's own `/health` report, when it sent JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

async fn probe(http: &reqwest::Client, name: String, base: &str, timeout: Duration) -> ServiceHealth {
    let url = format!("{}/health", base.trim_end_matches('/'));
    let started = Instant::now();
    let result = http.get(&url).timeout(timeout).send().await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(response) => {
            let code = response.status().as_u16();
            let report = response.json::<serde_json::Value>().await.ok();
            ServiceHealth {
                name,
                url,
                status: if code == 200 { "up" } else { "degraded" },
                http_status: Some(code),
                latency_ms,
                error: (code != 200).then(|| format!("/health answered {code}")),
                report,
            }
        }
        Err(e) => ServiceHealth {
            name,
            url,
            status: "down",
            http_status: None,
            latency_ms,
            error: Some(if e.is_timeout() {
                format!("no answer within {} ms", timeout.as_millis())
            } else {
                short(&e)
            }),
            report: None,
        },
    }
}

/// `GET /api/admin/system/health`: every component's `/health` — each replica of a service its
/// own row (`auth`, `auth-2`, …, as `mfe up --replicas` names them) — called concurrently, each
/// bounded by the health timeout; 200 with the table whatever the results.
async fn system_health(State(state): State<AppState>, RequireAdmin(_): RequireAdmin) -> impl IntoResponse {
    let urls = &state.urls;
    let mut targets = vec![("gateway".to_string(), urls.gateway.as_str())];
    for (service, replicas) in
        [("auth", &urls.auth), ("payments", &urls.payments), ("admin", &urls.admin), ("profile", &urls.profile)]
    {
        for (k, base) in replicas.urls().iter().enumerate() {
            targets.push((mfe_core::replica_name(service, k), base.as_str()));
        }
    }
    let checks = targets.into_iter().map(|(name, base)| probe(&state.http, name, base, state.health_timeout));
    let services = futures::future::join_all(checks).await;
    let up = services.iter().filter(|s| s.status == "up").count();
    let status = if up == services.len() { "ok" } else { "degraded" };
    Json(serde_json::json!({
        "status": status,
        "checkedAt": Utc::now(),
        "summary": format!("{up}/{} services up", services.len()),
        "services": services,
    }))
}
