//! Trace context carried on events, without a tracing-backend dependency here.
//!
//! The service kit installs [`TraceHooks`] when OpenTelemetry is enabled
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` set). Then [`crate::Envelope::new`] captures the current
//! W3C `traceparent`; the outbox keeps it in the stored envelope (key `traceparent`, next to the
//! SPEC §7 fields, never in the published body); the publisher sends it as the AMQP header
//! `traceparent`; and the consumer runs each handler inside a span whose parent is that context.
//! Without hooks (the default) nothing is captured and handlers run as before.
//!
//! # Why a hook registry and not a direct dependency
//! The crate graph points down (core <- events <- kit), so events cannot call kit's OTel code;
//! it could depend on `opentelemetry_sdk` and `tracing-opentelemetry` itself instead. It does
//! not, on purpose: what the hooks do only makes sense once the binary has installed an
//! exporter, which kit decides from `OTEL_EXPORTER_OTLP_ENDPOINT`. Done unconditionally here,
//! every consumer would run its handlers in a `consume` span even with tracing off (changing
//! the JSON log lines, which list the current span) and this crate would link the OTel SDK for
//! the CLI and the tests that never export. The registry is two function pointers set once per
//! process by `mfe_kit::otel`; nothing else installs hooks.

use std::sync::OnceLock;

/// The AMQP header (and stored-envelope key) carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// What the tracing backend provides.
#[derive(Clone, Copy)]
pub struct TraceHooks {
    /// The `traceparent` of the current span, if it is sampled.
    pub current: fn() -> Option<String>,
    /// The span a consumer handles an event in: a child of `traceparent` when given.
    pub consumer_span: fn(traceparent: Option<&str>, event_type: &str, correlation_id: Option<&str>) -> tracing::Span,
}

static HOOKS: OnceLock<TraceHooks> = OnceLock::new();

/// Installs the hooks once per process; later calls are ignored.
pub fn install(hooks: TraceHooks) {
    let _ = HOOKS.set(hooks);
}

/// The current `traceparent`, or `None` when no hooks are installed.
pub fn current_traceparent() -> Option<String> {
    HOOKS.get().and_then(|h| (h.current)())
}

/// The trace id (32 lowercase hex digits) of a W3C `traceparent` (`00-<trace>-<span>-<flags>`),
/// `None` when the value is not one or its trace id is the invalid all-zero one.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace) = (parts.next()?, parts.next()?);
    let valid = version.len() == 2
        && trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

/// The span to handle an event in; `Span::none()` when no hooks are installed.
pub fn consumer_span(traceparent: Option<&str>, event_type: &str, correlation_id: Option<&str>) -> tracing::Span {
    match HOOKS.get() {
        Some(h) => (h.consumer_span)(traceparent, event_type, correlation_id),
        None => tracing::Span::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_second_field_of_a_traceparent() {
        let tp = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
    }
}
