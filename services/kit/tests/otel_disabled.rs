//! Without `OTEL_EXPORTER_OTLP_ENDPOINT` (and `SENTRY_DSN`), tracing installs nothing extra:
//! no exporter, no trace context on headers or events. Its own test binary (one subscriber per
//! process).

use axum::http::HeaderMap;
use mfe_events::Envelope;
use mfe_kit::telemetry;

#[test]
fn without_an_endpoint_no_exporter_is_installed_and_no_trace_context_is_propagated() {
    std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
    std::env::remove_var("SENTRY_DSN");
    telemetry::init_tracing("otel-disabled-test");
    assert!(!mfe_kit::otel::enabled());
    assert!(!mfe_kit::sentry::enabled());
    let span = tracing::info_span!("request");
    let _entered = span.enter();
    assert_eq!(mfe_kit::otel::current_traceparent(), None);
    let mut headers = HeaderMap::new();
    telemetry::inject_trace_context(&mut headers);
    assert!(headers.is_empty(), "no traceparent header is added: {headers:?}");
    let env = Envelope::new("otel.disabled", "test", serde_json::json!({}));
    assert_eq!(env.traceparent, None);
    let json = serde_json::to_value(&env).unwrap();
    assert!(json.get("traceparent").is_none(), "the published body stays the SPEC envelope: {json}");
}
