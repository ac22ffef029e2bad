//! Logging, tracing and request correlation.
//!
//! [`init_tracing`] installs the one global subscriber of a process; each feature has one switch:
//! - log filter: `RUST_LOG` (default `info`);
//! - log format: `LOG_FORMAT=json` prints one JSON object per line (fields, current span and
//!   its parents, so the correlation id is on every line of a request); anything else is the
//!   human format;
//! - OpenTelemetry: `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://127.0.0.1:4318`) exports spans
//!   over OTLP HTTP/protobuf to `<endpoint>/v1/traces` (see [`crate::otel`]; `OTEL_SERVICE_NAME`
//!   overrides the service name);
//! - Sentry: `SENTRY_DSN` (and `SENTRY_ENVIRONMENT`) reports errors and panics (see
//!   [`crate::sentry`]).
//!
//! Unset, the last two install nothing. Call [`shutdown`] before the process exits so buffered
//! spans and events are sent.
//!
//! The [`correlation_id`] middleware reads `X-Correlation-Id` (or makes a UUID), records it in
//! the request span (a child of an incoming W3C `traceparent`), logs one line per finished
//! request and echoes the id on the response; the [`CorrelationId`] extractor gives handlers
//! the id to stamp on the events they publish.

use std::time::Instant;

use axum::{
    extract::{FromRequestParts, MatchedPath, Request},
    http::{request::Parts, HeaderMap, HeaderName, HeaderValue, Method},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;
use tracing_subscriber::{fmt, layer::SubscriberExt, registry::Registry, util::SubscriberInitExt, EnvFilter, Layer};

/// The header carrying the correlation id across services and onto events.
pub static CORRELATION_HEADER: HeaderName = HeaderName::from_static("x-correlation-id");

type Filtered = tracing_subscriber::layer::Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Installs the global subscriber once; later calls (tests spawning many apps) are no-ops.
/// `service` names the process in exported spans and Sentry events.
pub fn init_tracing(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = mfe_core::env::get("LOG_FORMAT").eq_ignore_ascii_case("json");
    let mut layers: Vec<BoxedLayer> = Vec::new();
    layers.push(if json {
        fmt::layer().json().with_current_span(true).with_span_list(true).boxed()
    } else {
        fmt::layer().with_target(false).boxed()
    });
    let mut problems = Vec::new();
    if let Some(endpoint) = crate::otel::endpoint_from_env() {
        if crate::otel::enabled() {
            return; // already initialised in this process
        }
        match crate::otel::install(service, &endpoint) {
            Ok(tracer) => layers.push(tracing_opentelemetry::layer().with_tracer(tracer).boxed()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(dsn) = crate::sentry::dsn_from_env() {
        match crate::sentry::install(service, &dsn) {
            Ok(()) => layers.push(sentry::integrations::tracing::layer().boxed()),
            Err(e) => problems.push(e),
        }
    }
    let result = tracing_subscriber::registry().with(filter).with(layers).try_init();
    if result.is_ok() {
        for problem in problems {
            tracing::error!("{problem}");
        }
        tracing::debug!(
            service,
            otel = crate::otel::enabled(),
            sentry = crate::sentry::enabled(),
            json,
            "tracing initialised"
        );
    }
}

/// Sends buffered spans (OTLP) and events (Sentry); call once before the process exits.
pub fn shutdown() {
    crate::otel::shutdown();
    crate::sentry::flush();
}

/// Writes the current span's W3C `traceparent` into an outgoing request's headers (the
/// gateway's upstream calls); nothing when OpenTelemetry is off.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    crate::otel::inject_headers(headers);
}

/// The span of one proxied request (the gateway): the correlation id, method and path, a child
/// of an incoming `traceparent`.
pub fn proxy_span(correlation_id: &str, method: &Method, path: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!("proxy", correlation_id = %correlation_id, method = %method, path = %path);
    crate::otel::set_parent_from_headers(&span, headers);
    span
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

/// Middleware: one span per request carrying the correlation id (a child of an incoming
/// `traceparent`), one log line when it finishes, the id made available to handlers and echoed
/// on the response.
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
    crate::otel::set_parent_from_headers(&span, req.headers());
    // Probes are frequent and uninteresting: their line is debug.
    let probe = matches!(req.uri().path(), "/health" | "/metrics");
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if probe {
            tracing::debug!(status, elapsed_ms, "request finished");
        } else {
            tracing::info!(status, elapsed_ms, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_HEADER.clone(), value);
    }
    response
}
