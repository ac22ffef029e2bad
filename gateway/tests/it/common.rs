//! Shared by the gateway's integration tests: a gateway spawned on port 0, and a small but real
//! HTTP upstream (an axum server on a free port) that stands in for a service where the test is
//! about proxy mechanics — streaming, headers, error mapping — rather than a service's API.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Query, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use futures::StreamExt;
use mfe_core::Secret;
use mfe_gateway::{Application, GatewayConfig, Route};
use mfe_kit::{JwtKeys, Role};

pub const SECRET: &str = "gateway-test-secret-long-enough-for-hs256-signing";

/// The test stack's broker, from test.env.
pub fn rabbitmq_url() -> String {
    mfe_core::env::get("RABBITMQ_URL")
}

/// A configuration with every route pointing at `upstream` and short timings.
pub fn config(upstream: &str) -> GatewayConfig {
    GatewayConfig {
        host: "127.0.0.1".into(),
        port: 0,
        routes: mfe_core::SERVICES.iter().map(|s| Route::new(s.name, s.route_prefix, upstream)).collect(),
        jwt_secret: Secret::new(SECRET),
        events: None,
        upstream_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(3600),
        ws_ping_interval: Duration::from_secs(30),
        ws_pong_timeout: Duration::from_secs(10),
        ws_send_queue: 64,
        front: mfe_gateway::config::FrontDoor::default(),
        workers: 0,
    }
}

pub struct TestGateway {
    pub port: u16,
    pub base: String,
    pub jwt: JwtKeys,
}

impl TestGateway {
    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={token}", self.port)
    }

    pub fn token(&self, user_id: &str, role: Role, device_id: Option<&str>) -> String {
        self.jwt.issue(user_id, role, Duration::from_secs(600), device_id.map(String::from)).unwrap().0
    }
}

/// Builds and runs a gateway; with events, waits until its bridge consumes.
pub async fn spawn_gateway(cfg: GatewayConfig) -> TestGateway {
    let with_events = cfg.events.is_some();
    let mut app = Application::build(cfg).await.expect("the gateway builds");
    if with_events {
        assert!(
            app.wait_for_events(Duration::from_secs(15)).await,
            "the gateway's event bridge did not connect to RabbitMQ at {} — start the test stack: \
             `set -a; source test.env; set +a; mfe infra start`",
            mfe_kit::config::ServiceUrls::from_env().gateway
        );
    }
    let port = app.port();
    tokio::spawn(app.run_until(std::future::pending()));
    TestGateway { port, base: format!("http://127.0.0.1:{port}"), jwt: JwtKeys::new(SECRET) }
}

/// The tiny upstream's switches and counters.
#[derive(Clone, Default)]
pub struct UpstreamState {
    /// `/health` answers 500 while set.
    pub unhealthy: Arc<AtomicBool>,
    /// Bytes received by the last `/api/*/upload`.
    pub uploaded: Arc<AtomicU64>,
}

pub struct TestUpstream {
    pub url: String,
    pub addr: SocketAddr,
    pub state: UpstreamState,
}

/// Starts the tiny upstream:
/// - `GET /health`;
/// - `ANY /api/{service}/echo`: JSON with method, path, query, headers and body;
/// - `POST|PUT /api/{service}/upload`: counts the streamed body, answers `{"bytes": n}`;
/// - `GET /api/{service}/download?bytes=N`: streams N bytes in 64 KiB chunks;
/// - `GET /api/{service}/slow?ms=N`: answers after N ms;
/// - `GET /api/{service}/hop`: answers with hop-by-hop headers that must not reach the client.
pub async fn spawn_upstream() -> TestUpstream {
    let state = UpstreamState::default();
    let app = Router::new()
        .route("/health", get(health))
        .route("/api/{service}/echo", any(echo))
        .route("/api/{service}/upload", any(upload))
        .route("/api/{service}/download", get(download))
        .route("/api/{service}/slow", get(slow))
        .route("/api/{service}/hop", get(hop))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestUpstream { url: format!("http://{addr}"), addr, state }
}

async fn health(State(s): State<UpstreamState>) -> Response {
    if s.unhealthy.load(Ordering::Relaxed) {
        (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
    } else {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let headers: serde_json::Map<String, serde_json::Value> =
        parts.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into())).collect();
    axum::Json(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

async fn upload(State(s): State<UpstreamState>, req: Request) -> Response {
    let mut stream = req.into_body().into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    s.uploaded.store(n, Ordering::Relaxed);
    axum::Json(serde_json::json!({"bytes": n})).into_response()
}

#[derive(serde::Deserialize)]
struct Size {
    bytes: Option<u64>,
    ms: Option<u64>,
}

async fn download(Query(q): Query<Size>) -> Response {
    Body::from_stream(chunks(q.bytes.unwrap_or(0))).into_response()
}

/// `total` bytes as a stream of 64 KiB chunks (one static buffer, so the upstream stays flat too).
pub fn chunks(total: u64) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    static CHUNK: [u8; 65536] = [b'x'; 65536];
    let n_full = total / 65536;
    let rest = (total % 65536) as usize;
    futures::stream::iter(
        (0..n_full)
            .map(|_| Ok(bytes::Bytes::from_static(&CHUNK)))
            .chain((rest > 0).then(|| Ok(bytes::Bytes::from_static(&CHUNK[..rest])))),
    )
}

async fn slow(Query(q): Query<Size>) -> Response {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0))).await;
    "late".into_response()
}

async fn hop() -> Response {
    (
        [
            ("connection", "x-upstream-private"),
            ("x-upstream-private", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ],
        "hop",
    )
        .into_response()
}
