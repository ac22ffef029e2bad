//! Observability end to end, with the real binaries as child processes: a request sent through
//! nginx (the repository's configuration, TLS with a fresh dev CA) and the gateway to the auth
//! service with `X-Correlation-Id` and a W3C `traceparent` shows the id in the gateway's and the
//! service's logs and in the published event, and with `OTEL_EXPORTER_OTLP_ENDPOINT` set both
//! processes export their spans (one trace: caller → gateway → auth service) to a local OTLP
//! receiver when they shut down; the event carries the same trace.
//!
//! Needs the test stack (PostgreSQL, RabbitMQ, Redis of `test.env`) and nginx (`/usr/sbin/nginx`
//! or MFE_NGINX); builds the `auth-service` and `mfe-gateway` binaries with cargo if needed.

use crate::nginx_support::Edge;
use crate::processes::{binaries, wait_healthy, Proc};
use std::time::{Duration, Instant};

use mfe_events::{Hub, HubConfig};
use mfe_testkit::{otlp::Collector, START_HINT};

/// A client of `edge` trusting its dev CA, reaching `https://localhost:<port>` on loopback.
fn edge_client(edge: &Edge) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(edge.ca_certificate())
        .resolve("localhost", ([127, 0, 0, 1], edge.https).into())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_correlation_id_and_trace_sent_through_nginx_reach_the_gateway_and_service_logs_the_event_and_the_otlp_receiver(
) {
    let _serial = mfe_testkit::serial::group(module_path!());
    let [auth_bin, gateway_bin] = binaries(["auth-service", "mfe-gateway"]);
    let otlp = Collector::start().await;
    let endpoint = otlp.endpoint();
    let database = mfe_testkit::fresh_database(&mfe_core::env::get("AUTH_DATABASE_URL")).await;
    let auth_port = mfe_testkit::closed_port();
    let gateway_port = mfe_testkit::closed_port();

    let mut auth = Proc::spawn(
        "auth-service",
        auth_bin,
        &[
            ("PORT", auth_port.to_string()),
            ("BIND_ADDR", "127.0.0.1".into()),
            ("AUTH_DATABASE_URL", database),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ],
    );
    let mut gateway = Proc::spawn(
        "gateway",
        gateway_bin,
        &[
            ("PORT", gateway_port.to_string()),
            ("GATEWAY_HOST", "127.0.0.1".into()),
            ("AUTH_SERVICE_URL", format!("http://127.0.0.1:{auth_port}")),
            ("GATEWAY_HEALTH_INTERVAL_MS", "200".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ],
    );
    let client = reqwest::Client::new();
    wait_healthy(&client, &format!("http://127.0.0.1:{auth_port}/health"), &auth, |v| v["status"] == "ok").await;
    wait_healthy(&client, &format!("http://127.0.0.1:{gateway_port}/health"), &gateway, |v| {
        v["upstreams"]["auth"] == "up"
    })
    .await;

    // A private queue on the platform exchange, bound before the request.
    let hub = Hub::connect(
        HubConfig::from_env().expect("event hub configuration").with_connection_name("observability-test"),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to rabbitmq: {e} — {START_HINT}"));
    let mut deliveries =
        hub.tail(&["auth.user.registered".to_string()]).await.expect("a test queue bound to the events exchange");

    let edge = Edge::start(gateway_port);
    let correlation = format!("abc-{}", uuid::Uuid::new_v4());
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let response = edge_client(&edge)
        .post(edge.url("/api/auth/signup"))
        .header("x-correlation-id", &correlation)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&serde_json::json!({
            "email": format!("obs-{}@example.com", uuid::Uuid::new_v4().simple()),
            "password": "Corr3lation!Pass",
            "name": "Observability Test",
        }))
        .send()
        .await
        .expect("sign up through nginx");
    let status = response.status();
    let echoed = response.headers().get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(
        status,
        201,
        "signup through nginx and the gateway: {}\nauth logs:\n{}",
        response.text().await.unwrap_or_default(),
        auth.logs()
    );
    assert_eq!(echoed.as_deref(), Some(correlation.as_str()), "the id is echoed on the response");

    // The event, published by the outbox relay, carries the id and the trace.
    let (event, traceparent) = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = deliveries.next_message().await {
            let v: serde_json::Value = serde_json::from_slice(&m.body).expect("a json envelope");
            if v["correlationId"] == correlation.as_str() {
                return (v, m.header_str("traceparent").map(str::to_string));
            }
        }
        panic!("the test queue closed before the event arrived")
    })
    .await
    .unwrap_or_else(|_| panic!("no auth.user.registered event with correlationId {correlation} within 20 s"));
    assert_eq!(event["type"], "auth.user.registered");
    assert!(event.get("traceparent").is_none(), "the published body stays the SPEC envelope: {event}");
    let traceparent = traceparent.expect("the event carries a traceparent AMQP header");
    assert!(traceparent.contains(&trace_id), "the event belongs to the caller's trace {trace_id}: {traceparent}");

    // Both processes log the id (gateway: the proxied line; auth: the request line).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(gateway.logs().contains(&correlation) && auth.logs().contains(&correlation)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway_line = gateway.logs().lines().find(|l| l.contains(&correlation)).map(str::to_string);
    assert!(gateway_line.is_some(), "the gateway logs the correlation id; logs:\n{}", gateway.logs());
    assert!(gateway_line.unwrap().contains("proxied"), "the gateway's line is its proxied-request line");
    assert!(
        auth.logs().lines().any(|l| l.contains(&correlation) && l.contains("request finished")),
        "the auth service logs the correlation id; logs:\n{}",
        auth.logs()
    );

    // Graceful shutdown flushes the spans: caller → gateway proxy span → auth request span.
    gateway.terminate();
    auth.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spans = otlp.spans();
    while !(spans.iter().any(|s| s.service == "gateway") && spans.iter().any(|s| s.service == "auth-service"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = otlp.spans();
    }
    let proxy = spans
        .iter()
        .find(|s| s.service == "gateway" && s.name == "proxy" && s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("no gateway proxy span of trace {trace_id} exported: {spans:#?}"));
    assert_eq!(proxy.parent_span_id, caller_span, "the gateway's span is a child of the caller's traceparent");
    let request = spans
        .iter()
        .find(|s| s.service == "auth-service" && s.name == "request" && s.trace_id == trace_id)
        .unwrap_or_else(|| panic!("no auth-service request span of trace {trace_id} exported: {spans:#?}"));
    assert_eq!(request.parent_span_id, proxy.span_id, "the service's span is a child of the gateway's span");
    deliveries.close().await;
    hub.close().await;
}

#[test]
fn the_optional_prometheus_service_is_behind_a_compose_profile_and_never_started_by_the_runtime() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let root = crate::repo_root();
    let compose_path = root.join("docker-compose.yml");
    let file = mfe::infra::compose::ComposeFile::load(&compose_path, &|k| std::env::var(k).ok())
        .expect("the repository compose file parses with the prometheus service in it");
    let prometheus = file.services.get("prometheus").expect("docker-compose.yml defines a prometheus service");
    assert!(prometheus.image.starts_with("prom/prometheus") || std::env::var("MFE_PROMETHEUS_IMAGE").is_ok());
    assert!(
        prometheus.volumes.iter().any(|v| v.starts_with("./prometheus/prometheus.yml:")),
        "the scrape configuration is mounted"
    );
    let raw: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&compose_path).unwrap()).expect("compose yaml");
    assert_eq!(
        raw["services"]["prometheus"]["profiles"],
        serde_yaml::from_str::<serde_yaml::Value>("[observability]").unwrap(),
        "prometheus only starts with `--profile observability`"
    );
    assert!(
        mfe::config::Component::ALL.iter().all(|c| c.name() != "prometheus"),
        "`mfe infra start` (either runtime) starts only its components, never the optional prometheus"
    );
    let scrape = std::fs::read_to_string(root.join("prometheus/prometheus.yml")).expect("prometheus/prometheus.yml");
    let scrape: serde_yaml::Value = serde_yaml::from_str(&scrape).expect("prometheus.yml is yaml");
    let targets: Vec<String> = scrape["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|sc| sc["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    for port in [3000, 3001, 3002, 3003, 3004] {
        assert!(targets.contains(&format!("127.0.0.1:{port}")), "prometheus scrapes 127.0.0.1:{port}: {targets:?}");
    }
}
