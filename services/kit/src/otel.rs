//! OpenTelemetry tracing, on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Spans of the `tracing` subscriber (the request span of [`crate::telemetry::correlation_id`],
//! the gateway's proxy span, the consumer span of every event) are exported in batches over
//! OTLP HTTP/protobuf to `${OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`, with the resource attribute
//! `service.name` (the service's name, or `OTEL_SERVICE_NAME`). Context travels as W3C
//! `traceparent`: extracted from incoming HTTP headers ([`set_parent_from_headers`]), injected
//! into upstream requests ([`inject_headers`]) and carried on events (`mfe_events::trace`).
//!
//! Unset, nothing is installed: no layer, no exporter thread, no header work.

use std::{collections::HashMap, sync::OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
    Context,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The variable that turns exporting on: the collector's base URL, e.g. `http://127.0.0.1:4318`.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The configured endpoint, when set and non-empty.
pub fn endpoint_from_env() -> Option<String> {
    mfe_core::env::lookup("OTEL_EXPORTER_OTLP_ENDPOINT")
}

/// Whether spans are being exported (the provider was installed by `init_tracing`).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the otlp exporter for {endpoint}: {reason} — check {ENDPOINT_VAR}")]
pub struct OtelError {
    endpoint: String,
    reason: String,
}

/// Builds the provider for `service` exporting to `endpoint` and returns the tracer for the
/// `tracing` layer. Installs the propagator and the event hooks. Called once, by `init_tracing`.
pub(crate) fn install(service: &str, endpoint: &str) -> Result<opentelemetry_sdk::trace::Tracer, OtelError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| OtelError { endpoint: url, reason: e.to_string() })?;
    let name = mfe_core::env::lookup("OTEL_SERVICE_NAME").unwrap_or(service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name.clone()).build())
        .build();
    let tracer = provider.tracer(name);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    mfe_events::trace::install(mfe_events::trace::TraceHooks { current: current_traceparent, consumer_span });
    Ok(tracer)
}

/// Exports every finished span now (tests; shutdown uses [`shutdown`]).
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.force_flush() {
            tracing::warn!(error = %e, "cannot flush spans to the otlp endpoint");
        }
    }
}

/// Flushes and stops the exporter; call once when the process ends.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
        let _ = p.shutdown();
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the `traceparent` in `headers` (when present and exporting is on).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

/// Writes the current span's `traceparent` into `headers` (an upstream request), replacing any
/// incoming one; does nothing when exporting is off.
pub fn inject_headers(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The current span's W3C `traceparent`, when exporting is on and the span is valid.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove("traceparent")
}

fn context_of(traceparent: &str) -> Context {
    let map = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&map)
}

/// The span a consumer handles an event in, a child of the emitting request's span.
fn consumer_span(traceparent: Option<&str>, event_type: &str, correlation_id: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.kind = "consumer",
        event_type = %event_type,
        correlation_id = correlation_id.unwrap_or(""),
    );
    if let Some(tp) = traceparent {
        let cx = context_of(tp);
        if cx.span().span_context().is_valid() {
            span.set_parent(cx);
        }
    }
    span
}
