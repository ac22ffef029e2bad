//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a request through the kit's middleware stack is
//! exported over OTLP/HTTP to a local receiver, as a child of the caller's `traceparent`, and an
//! event published while handling it is consumed in a span of the same trace.
//!
//! Its own test binary: the endpoint must be set before the process's one subscriber exists.

use std::time::Duration;

use axum::{routing::get, Router};
use mfe_events::{handler_fn, Envelope, Hub, HubConfig, Subscription};
use mfe_kit::{health::Health, metrics::Metrics, server, telemetry};
use mfe_testkit::otlp::Collector;
use tokio::sync::mpsc;

const SERVICE: &str = "otel-test-service";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_and_the_event_it_publishes_are_exported_as_one_trace_to_the_otlp_endpoint() {
    let collector = Collector::start().await;
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint());
    std::env::remove_var("OTEL_SERVICE_NAME");
    telemetry::init_tracing(SERVICE);
    assert!(mfe_kit::otel::enabled(), "the otlp exporter is installed when the endpoint is set");

    // A real hub on an isolated topology; the consumer reports the trace context it runs in.
    let prefix = format!("mfe.test.{}", uuid::Uuid::new_v4().simple());
    let cfg = HubConfig::from_env()
        .expect("event hub configuration")
        .isolated(&prefix)
        .with_connection_name(format!("{prefix}.otel"));
    let urls = cfg.urls.join(",");
    let hub = Hub::connect(cfg.clone())
        .await
        .unwrap_or_else(|e| panic!("{e} (RABBITMQ_URL={urls}) — {}", mfe_testkit::START_HINT));
    let event_type = format!("otel.test.{}", uuid::Uuid::new_v4().simple());
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Option<String>>();
    let sub = Subscription::exclusive("otel-test", &[event_type.as_str()]);
    let consumer = hub
        .subscribe(
            sub,
            handler_fn(move |_env: Envelope| {
                let tx = seen_tx.clone();
                async move {
                    let _ = tx.send(mfe_kit::otel::current_traceparent());
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe the test consumer");

    // The service: one route that publishes an event, behind the kit's common middleware.
    let publisher = hub.clone();
    let published_type = event_type.clone();
    let api = Router::new().route(
        "/api/ping",
        get(move || {
            let hub = publisher.clone();
            let event_type = published_type.clone();
            async move {
                let env = Envelope::new(event_type, SERVICE, serde_json::json!({}));
                assert!(env.traceparent.is_some(), "an envelope made in a request span carries its trace context");
                hub.publish(&env).await.expect("publish the event");
                "pong"
            }
        }),
    );
    let router = server::with_common_routes(api, Health::new("otel-test"), Metrics::new("otel-test"));
    let listener = server::bind("127.0.0.1", 0).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(listener, router, std::future::pending()));

    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/ping"))
        .header("traceparent", format!("00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"))
        .header("x-correlation-id", "otel-test-1")
        .send()
        .await
        .expect("request the service");
    assert_eq!(response.status(), 200);

    let consumed = tokio::time::timeout(Duration::from_secs(20), seen_rx.recv())
        .await
        .expect("the event reaches the consumer within 20 s")
        .expect("consumer channel open");
    let consumed = consumed.expect("the consumer handles the event inside a span with a trace context");
    assert!(
        consumed.contains(INCOMING_TRACE),
        "the consumer's span belongs to the caller's trace {INCOMING_TRACE}: {consumed}"
    );

    // Spans leave in batches; flush and wait for the receiver to have them.
    let mut spans = Vec::new();
    for _ in 0..40 {
        mfe_kit::otel::flush();
        spans = collector.spans();
        if spans.iter().any(|s| s.name == "request") && spans.iter().any(|s| s.name == "consume") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.trace_id == INCOMING_TRACE)
        .unwrap_or_else(|| panic!("no request span of trace {INCOMING_TRACE} exported; got {} spans", spans.len()));
    assert_eq!(request.service, SERVICE, "the resource names the service");
    assert_eq!(request.parent_span_id, INCOMING_PARENT, "the request span is a child of the incoming traceparent");
    let consume = spans
        .iter()
        .find(|s| s.name == "consume" && s.trace_id == INCOMING_TRACE)
        .expect("the consumer span is exported in the same trace");
    assert_ne!(consume.parent_span_id, "", "the consumer span has a parent");
    assert!(
        spans.iter().any(|s| s.span_id == consume.parent_span_id && s.trace_id == INCOMING_TRACE),
        "the consumer span's parent is a span of the request's trace"
    );

    consumer.cancel().await;
    let _ = hub.delete_isolated_topology(&[]).await;
    hub.close().await;
    telemetry::shutdown();
}
