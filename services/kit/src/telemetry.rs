//! Logging and request correlation: [`init_tracing`] (RUST_LOG filter, JSON lines when
//! `LOG_FORMAT=json`), the [`correlation_id`] middleware (reads `X-Correlation-Id` or makes a
//! UUID, records it in the request span, echoes it on the response) and the [`CorrelationId`]
//! extractor handlers use to stamp the events they publish.

use axum::{
    extract::{FromRequestParts, MatchedPath, Request},
    http::{request::Parts, HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// The header carrying the correlation id across services and onto events.
pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

/// Installs the global subscriber once; later calls (tests spawning many apps) are no-ops.
pub fn init_tracing(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").map(|v| v.eq_ignore_ascii_case("json")).unwrap_or(false);
    let result = if json {
        tracing_subscriber::registry().with(filter).with(fmt::layer().json().with_current_span(true)).try_init()
    } else {
        tracing_subscriber::registry().with(filter).with(fmt::layer().with_target(false)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "tracing initialised");
    }
}

/// The correlation id of the current request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by the middleware; without it (a router built without the kit's layers) read the
        // header or make one, so handlers never have to cope with a missing id.
        if let Some(id) = parts.extensions.get::<CorrelationId>() {
            return Ok(id.clone());
        }
        Ok(CorrelationId(incoming_id(parts.headers.get(&CORRELATION_HEADER))))
    }
}

fn incoming_id(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Middleware: one span per request carrying the correlation id, the id made available to
/// handlers and echoed on the response.
pub async fn correlation_id(mut req: Request, next: Next) -> Response {
    let id = incoming_id(req.headers().get(&CORRELATION_HEADER));
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        method = %req.method(),
        route = route.as_deref().unwrap_or_else(|| req.uri().path()),
    );
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER.clone(), value);
    }
    response
}
