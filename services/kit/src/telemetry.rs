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
    let id = match value.and_then(|v| valid_correlation_id(v.as_bytes())) {
        Some(id) => return String::from_utf8_lossy(id).into_owned(),
        None => fresh_correlation_id(),
    };
    id.to_str().expect("a UUID is visible ASCII").to_string()
}

/// `value` trimmed, when it is a sane correlation id: visible ASCII, 1 to 128 bytes.
pub fn valid_correlation_id(value: &[u8]) -> Option<&[u8]> {
    let id = value.trim_ascii();
    (!id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)).then_some(id)
}

/// The [`CORRELATION_HEADER`] of `headers` when it is a sane token ([`valid_correlation_id`]),
/// else a fresh random UUID ([`fresh_correlation_id`]).
pub fn correlation_id_of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&CORRELATION_HEADER).and_then(|v| valid_correlation_id(v.as_bytes())) {
        Some(id) => HeaderValue::from_bytes(id).expect("visible ASCII is a valid header value"),
        None => fresh_correlation_id(),
    }
}

/// A random (version 4) UUID from a per-thread generator seeded once from the OS: a correlation
/// id must be unique, not unpredictable, and asking the OS for randomness on every request
/// (`Uuid::new_v4`) is a system call per request, which showed in the gateway's CPU profile.
pub fn fresh_correlation_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    // splitmix64: two outputs make the 128 random bits.
    let next = |state: &Cell<u64>| {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (hi, lo) = STATE.with(|state| (next(state), next(state)));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_le_bytes());
    bytes[8..].copy_from_slice(&lo.to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(uuid.hyphenated().encode_lower(&mut text).as_bytes())
        .expect("a UUID is a valid header value")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_correlation_id_is_replaced_by_a_uuid() {
        let mut h = HeaderMap::new();
        h.insert("x-correlation-id", HeaderValue::from_static("abc-123"));
        assert_eq!(correlation_id_of(&h), "abc-123");
        h.insert("x-correlation-id", HeaderValue::from_static("has space"));
        let fresh = correlation_id_of(&h);
        let uuid = uuid::Uuid::parse_str(fresh.to_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(correlation_id_of(&h), fresh, "two fresh ids must differ");
    }

    #[test]
    fn the_middleware_and_the_gateway_accept_the_same_ids() {
        for raw in ["abc-123", "  padded  ", "", "has space", &"x".repeat(128), &"x".repeat(129)] {
            let value = HeaderValue::from_str(raw).unwrap();
            let mut h = HeaderMap::new();
            h.insert(&CORRELATION_HEADER, value.clone());
            let kept = valid_correlation_id(raw.as_bytes()).is_some();
            assert_eq!(incoming_id(Some(&value)) == raw.trim(), kept, "{raw:?}");
            assert_eq!(correlation_id_of(&h) == raw.trim(), kept, "{raw:?}");
        }
    }
}
