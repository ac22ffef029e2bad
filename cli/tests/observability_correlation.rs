//! Observability end to end, with the real binaries as child processes: a request sent through
//! nginx (the repository's configuration, TLS with a fresh dev CA) and the gateway to the auth
//! service with `X-Correlation-Id` and a W3C `traceparent` shows the id in the gateway's and the
//! service's logs and in the published event, and with `OTEL_EXPORTER_OTLP_ENDPOINT` set both
//! processes export their spans (one trace: caller → gateway → auth service) to a local OTLP
//! receiver when they shut down; the event carries the same trace.
//!
//! Needs the test stack (PostgreSQL, RabbitMQ, Redis of `test.env`) and nginx (`/usr/sbin/nginx`
//! or MFE_NGINX); builds the `auth-service` and `mfe-gateway` binaries with cargo if needed.

mod nginx_support;

use nginx_support::Edge;
use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, routing::post, Router};
use mfe_events::{Hub, HubConfig};
use opentelemetry_proto::tonic::{collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value};
use prost::Message;

const HINT: &str =
    "start the test stack: `set -a; source test.env; set +a; cargo build -p mfe && target/debug/mfe infra start`";

type Shared<T> = Arc<Mutex<T>>;

/// A child process whose stdout and stderr are collected; killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    output: Shared<String>,
}

impl Proc {
    fn spawn(name: &'static str, bin: PathBuf, env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(&bin);
        cmd.current_dir(std::env::temp_dir())
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("SENTRY_DSN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let output: Shared<String> = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Proc { name, child, output }
    }

    fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// SIGTERM, then waits (bounded) for a graceful exit.
    fn terminate(&mut self) {
        if !nginx_support::terminate(&mut self.child, Duration::from_secs(20)) {
            panic!("{} did not stop within 20 s of SIGTERM; logs:\n{}", self.name, self.logs());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of `edge` trusting its dev CA, reaching `https://localhost:<port>` on loopback.
fn edge_client(edge: &Edge) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(edge.ca_certificate())
        .resolve("localhost", ([127, 0, 0, 1], edge.https).into())
        .build()
        .unwrap()
}

/// Builds (if stale) and locates the service binaries.
fn binaries() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "auth-service", "-p", "mfe-gateway"])
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "cargo build -p auth-service -p mfe-gateway failed");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    (target.join("debug/auth-service"), target.join("debug/mfe-gateway"))
}

async fn start_otlp_receiver() -> (SocketAddr, Shared<Vec<Bytes>>) {
    let bodies: Shared<Vec<Bytes>> = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(b): State<Shared<Vec<Bytes>>>, body: Bytes| async move {
                b.lock().unwrap().push(body);
                ""
            }),
        )
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the otlp receiver");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (addr, bodies)
}

#[derive(Debug)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn exported_spans(bodies: &Shared<Vec<Bytes>>) -> Vec<ExportedSpan> {
    let mut out = Vec::new();
    for body in bodies.lock().unwrap().iter() {
        let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("an otlp protobuf body");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(ExportedSpan {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                });
            }
        }
    }
    out
}

async fn wait_healthy(client: &reqwest::Client, url: &str, what: &Proc, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if check(&v) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not healthy at {url} within 60 s — {HINT}; logs:\n{}",
            what.name,
            what.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_correlation_id_and_trace_sent_through_nginx_reach_the_gateway_and_service_logs_the_event_and_the_otlp_receiver(
) {
    let (auth_bin, gateway_bin) = binaries();
    let (otlp, bodies) = start_otlp_receiver().await;
    let endpoint = format!("http://{otlp}");
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
    .unwrap_or_else(|e| panic!("cannot connect to rabbitmq: {e} — {HINT}"));
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
    let mut spans = exported_spans(&bodies);
    while !(spans.iter().any(|s| s.service == "gateway") && spans.iter().any(|s| s.service == "auth-service"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        spans = exported_spans(&bodies);
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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
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
