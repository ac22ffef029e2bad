//! `mfe dashboard [--port P] [--open]`: the running stack in one local web page.
//!
//! An axum server inside the `mfe` binary, bound to 127.0.0.1 only, serving one page, one
//! script and one stylesheet embedded at build time (`assets/`, plain JS, no frontend
//! toolchain) and a JSON API the page polls:
//!
//! - [`resources`]: every infrastructure component (what `mfe infra status` reports), each
//!   service and the gateway (their health answer: the *why* when one is not ready), log tails,
//!   and the actions restart / re-run migrations / reset a database, each behind a confirmation.
//! - [`events`]: a live tail of the `events` exchange over Server-Sent Events (sampled above
//!   [`events::MAX_SHOWN_PER_S`] a second), queue depths and consumers from the management API,
//!   dead letters with replay and purge (the `mfe events dlq` operations of `mfe_events::dlq`).
//! - [`metrics`]: request rate, error rate and p95 per service and route, event rates and
//!   WebSocket connections, scraped from every `/metrics` every 2 s.
//! - [`migration`]: the online sync's per-service state (`mfe migrate sync status`).
//! - [`traces`]: an OTLP/HTTP receiver (`POST /v1/traces`, the one route without the token:
//!   write-only) and the trace list and waterfall of what the services exported to it.
//!
//! Access: a random token (32 bytes, hex) printed in the URL, as Jupyter does. The first page
//! load with `?token=` sets an HttpOnly, SameSite=Strict cookie; every request without the
//! cookie, the query token or `Authorization: Bearer <token>` gets 401, but the write-only
//! `POST /v1/traces`. The page reads the same configuration as every other command
//! (`--env-file`, `.env`, the environment) and works with
//! either runtime.

mod events;
mod metrics;
mod migration;
pub mod prom;
mod resources;
pub mod sampler;
mod traces;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mfe_events::{Hub, HubConfig};
use rand::RngCore;

use crate::infra::Runtime;
use crate::Ctx;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Port on 127.0.0.1 (default: a free one the system picks).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Open the page in the desktop's browser (xdg-open).
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub runtime: crate::infra::RuntimeArg,
    /// Events of the topology under this prefix (as `mfe events --prefix`), as test suites name theirs.
    #[arg(long, hide = true, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Also write the URL (with its token) to this file, mode 0600: how `mfe up --dashboard`
    /// learns the URL of the dashboard it started in the background.
    #[arg(long, hide = true, value_name = "PATH")]
    pub url_file: Option<std::path::PathBuf>,
}

/// What every handler shares.
pub struct AppState {
    pub ctx: Ctx,
    token: String,
    cookie_name: String,
    pub runtime: Runtime,
    pub hub_cfg: HubConfig,
    hub: tokio::sync::Mutex<Option<Hub>>,
    pub metrics: metrics::Store,
    pub traces: traces::Store,
    /// One action at a time: two restarts of the same component must not interleave.
    pub action_lock: tokio::sync::Mutex<()>,
    /// One dead-letter read at a time: each reads the DLQ as its only (exclusive) consumer, so
    /// the page's periodic listing would otherwise make a replay it raced fail.
    pub dlq_lock: tokio::sync::Mutex<()>,
}

type Shared = Arc<AppState>;

impl AppState {
    /// The broker connection, opened on first use (the dashboard starts while RabbitMQ is down).
    pub async fn hub(&self) -> Result<Hub, ApiError> {
        let mut guard = self.hub.lock().await;
        if let Some(h) = guard.as_ref() {
            return Ok(h.clone());
        }
        let hub = Hub::connect(self.hub_cfg.clone()).await.map_err(|e| {
            ApiError::unavailable(format!("RabbitMQ: {e} — is the infrastructure running? try `mfe infra start`"))
        })?;
        *guard = Some(hub.clone());
        Ok(hub)
    }
}

/// An API failure: `{"error": {"code", "message"}}` with its status (SPEC §4's error shape).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), extra: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 409: the action was understood and not done; `message` says what it would do.
    pub fn confirm(message: impl Into<String>, preview: serde_json::Value) -> Self {
        Self { extra: Some(preview), ..Self::new(StatusCode::CONFLICT, "confirmation_required", message) }
    }
    pub fn failed(e: &anyhow::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", crate::error_line(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some(extra) = self.extra {
            body["preview"] = extra;
        }
        (self.status, Json(body)).into_response()
    }
}

/// Writes `text` to `path`, readable by its owner only (the URL carries the access token).
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("dashboard: cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// 32 random bytes, hex: URL-safe as it is.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Equal without an early exit on the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

fn cookie_token(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// The token check every request passes, and the page's security headers.
async fn require_token(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let by_query = query_token(req.uri().query()).is_some_and(|t| same_secret(&t, &st.token));
    let by_cookie = cookie_token(req.headers(), &st.cookie_name).is_some_and(|t| same_secret(&t, &st.token));
    let by_header = bearer_token(req.headers()).is_some_and(|t| same_secret(&t, &st.token));
    let mut resp = if by_query || by_cookie || by_header {
        next.run(req).await
    } else {
        let msg = "this dashboard needs its access token: open the URL `mfe dashboard` printed (it ends in ?token=...)";
        if req.uri().path().starts_with("/api/") {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response()
        } else {
            (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg).into_response()
        }
    };
    let h = resp.headers_mut();
    if by_query {
        let cookie = format!("{}={}; HttpOnly; SameSite=Strict; Path=/", st.cookie_name, st.token);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The whole application: routes behind the token check.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/resources", get(resources::list))
        .route("/api/actions", post(resources::action))
        .route("/api/logs", get(resources::logs))
        .route("/api/events/stream", get(events::stream))
        .route("/api/events/queues", get(events::queues))
        .route("/api/events/dlq", get(events::dead_letters))
        .route("/api/events/dlq/replay", post(events::replay))
        .route("/api/events/dlq/purge", post(events::purge))
        .route("/api/metrics", get(metrics::get))
        .route("/api/migration", get(migration::get))
        .route("/api/traces", get(traces::list))
        .route("/api/traces/{trace_id}", get(traces::get))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        // The OTLP receiver: outside the token (exporters cannot carry it), write-only.
        .route("/v1/traces", post(traces::receive).layer(axum::extract::DefaultBodyLimit::max(traces::MAX_BODY)))
        .with_state(state)
}

pub async fn run(ctx: &Ctx, args: DashboardArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.map_err(|e| {
        anyhow::anyhow!("dashboard: cannot listen on 127.0.0.1:{}: {e} — choose another with --port", args.port)
    })?;
    let port = listener.local_addr()?.port();
    let runtime = Runtime::select(ctx, args.runtime.runtime).await?;
    let mut hub_cfg = HubConfig::from_env()?.with_connection_name("mfe dashboard");
    if let Some(p) = args.prefix.as_deref().filter(|p| !p.is_empty()) {
        hub_cfg = hub_cfg.isolated(p);
    }
    let token = new_token();
    let state = Arc::new(AppState {
        ctx: ctx.clone(),
        token: token.clone(),
        cookie_name: format!("mfe_dashboard_{port}"),
        runtime,
        hub_cfg,
        hub: tokio::sync::Mutex::new(None),
        metrics: metrics::Store::default(),
        traces: traces::Store::default(),
        action_lock: tokio::sync::Mutex::new(()),
        dlq_lock: tokio::sync::Mutex::new(()),
    });
    let scraper = tokio::spawn(metrics::scrape_forever(state.clone()));
    let url = format!("http://127.0.0.1:{port}/?token={token}");
    eprintln!(
        "dashboard: serving on 127.0.0.1:{port} ({} runtime); open this URL (it carries the access token), Ctrl-C to stop:",
        state.runtime.name()
    );
    println!("{url}");
    if let Some(path) = &args.url_file {
        write_private(path, &format!("{url}\n"))?;
    }
    if args.open {
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = opened {
            eprintln!("dashboard: could not open a browser (xdg-open: {e}); open the URL above yourself");
        }
    }
    let app = router(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    scraper.abort();
    if let Some(hub) = state.hub.lock().await.take() {
        hub.close().await;
    }
    served.map_err(|e| anyhow::anyhow!("dashboard: the server stopped: {e}"))?;
    eprintln!("dashboard: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_64_url_safe_characters_and_new_each_time() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_are_found_in_the_query_the_cookie_and_the_header() {
        assert_eq!(query_token(Some("a=1&token=abc%20d")), Some("abc d".into()));
        assert_eq!(query_token(Some("a=1")), None);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; mfe_dashboard_9=secret; y=2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tok"));
        assert_eq!(cookie_token(&h, "mfe_dashboard_9"), Some("secret".into()));
        assert_eq!(cookie_token(&h, "mfe_dashboard_8"), None);
        assert_eq!(bearer_token(&h), Some("tok".into()));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
