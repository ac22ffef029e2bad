//! The proxy's errors and the platform's JSON error body they answer with.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// Why a request could not be proxied; each variant is one status of SPEC §8.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {path} — the gateway serves /api/auth, /api/payments, /api/admin, /api/profile, /ws, /health and /metrics")]
    NoRoute { path: String },
    #[error("the {route} service is marked down by health checks — try again shortly")]
    UpstreamDown { route: String },
    #[error("cannot reach the {route} service: {reason}")]
    Connect { route: String, reason: String },
    #[error("the {route} service did not answer within {timeout_ms} ms")]
    Timeout { route: String, timeout_ms: u128 },
    #[error("the upstream URL of the {route} service is invalid: {reason}")]
    BadUpstream { route: String, reason: String },
}

impl ProxyError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::UpstreamDown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
            ProxyError::Connect { .. } | ProxyError::BadUpstream { .. } => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        error_response(status, code, &self.to_string())
    }
}

/// The platform's JSON error body with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}
