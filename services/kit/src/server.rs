//! The parts of starting a service that are the same everywhere: a lazily connecting pool,
//! migrations that wait for the database, the common middleware stack (with the request body
//! limit) and the serve loop with graceful shutdown. Each service's `Application::build` strings
//! these together.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{DefaultBodyLimit, Request},
    http::{header::CONTENT_LENGTH, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;

use crate::{
    health::{health_handler, Health},
    metrics::{metrics_handler, track_requests, Metrics},
    telemetry::correlation_id,
};

/// A pool that connects on first use, so a service starts (and reports 503 on `/health`) while
/// its database is down, and recovers by itself when the database returns.
pub fn lazy_pool(database_url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(16)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(database_url)
}

/// Runs `migrator` now; when the database cannot be reached, keeps retrying in the background
/// (every 2 s) instead of failing the start. Errors other than connectivity (a broken migration)
/// are returned at once.
pub async fn migrate_or_retry(
    pool: &PgPool,
    migrator: &'static Migrator,
    what: &'static str,
) -> Result<(), sqlx::migrate::MigrateError> {
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(sqlx::migrate::MigrateError::Execute(e)) if is_connectivity(&e) => {
            tracing::error!(error = %e, "{what} unreachable at start-up; migrating in the background once it answers");
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    match migrator.run(&pool).await {
                        Ok(()) => {
                            tracing::info!("{what} migrated");
                            break;
                        }
                        Err(e) => tracing::debug!(error = %e, "{what} still not migrated"),
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn is_connectivity(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

/// Adds `/health`, `/metrics`, the request body limit, the request metrics and the
/// correlation-id middleware to `api`.
pub fn with_common_routes(api: Router, health: Health, metrics: Metrics) -> Router {
    let ops = Router::new()
        .route("/health", get(health_handler).with_state(health))
        .route("/metrics", get(metrics_handler).with_state(metrics.clone()));
    with_common_layers(api.merge(ops), metrics)
}

/// The middleware of [`with_common_routes`] without its routes, for a service that serves its
/// own `/health` and `/metrics` (payments adds business metrics to the page): the request body
/// limit, the request metrics and the correlation id.
pub fn with_common_layers(router: Router, metrics: Metrics) -> Router {
    router
        // `limit_request_body` is the one limit; axum's own would answer 400 through `Json`.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(limit_request_body))
        .layer(middleware::from_fn_with_state(metrics, track_requests))
        .layer(middleware::from_fn(correlation_id))
}

/// The largest request body a service reads (axum's default, made explicit); a larger one is
/// answered 413.
pub const MAX_BODY_BYTES: u64 = 2 * 1024 * 1024;

/// How long, in all and between two reads, a body the service did not read is still read and
/// discarded after the answer (nginx's `lingering_time` and `lingering_timeout`).
const DRAIN_TOTAL: Duration = Duration::from_secs(30);
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// Answers 413 to a body over [`MAX_BODY_BYTES`] (at once when its `Content-Length` says so,
/// else as soon as the handler has read that much), and reads to its end any body the handler
/// left unread.
///
/// The draining is what lets a client that is still sending — the gateway streaming a 32 MiB
/// upload — receive the answer: a server that closes its socket with unread bytes in it makes
/// the kernel send a reset, which throws away the answer in flight and fails the client's write
/// (the gateway then reports 502 instead of relaying the 413). Whether the client had read the
/// answer before the reset is a race, so without the draining the outcome changes with load.
async fn limit_request_body(req: Request, next: Next) -> Response {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let exceeded = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(GuardedBody { inner: Some(body), n_read: 0, ended: false, exceeded: exceeded.clone() });
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        // Dropping the guarded body drains it in the background.
        return body_too_large();
    }
    let response = next.run(Request::from_parts(parts, body)).await;
    if exceeded.load(Ordering::Relaxed) {
        body_too_large()
    } else {
        response
    }
}

fn body_too_large() -> Response {
    let message = format!("the request body is larger than {} MiB", MAX_BODY_BYTES / (1024 * 1024));
    let body = serde_json::json!({"error": {"code": "payload_too_large", "message": message}});
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response()
}

/// A request body that fails once more than [`MAX_BODY_BYTES`] were read (and says so through
/// `exceeded`), and when dropped unread hands the rest to a background task that discards it.
struct GuardedBody {
    inner: Option<Body>,
    n_read: u64,
    /// The inner body returned its end (or an error): nothing is left to drain.
    ended: bool,
    exceeded: Arc<AtomicBool>,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                this.n_read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.n_read > MAX_BODY_BYTES {
                    this.exceeded.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new("request body over the limit"))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => {
                this.ended = true;
                Poll::Ready(other)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if self.ended || body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads `body` to its end and discards it, within [`DRAIN_TOTAL`] and [`DRAIN_IDLE`].
async fn drain(mut body: Body) {
    let deadline = tokio::time::Instant::now() + DRAIN_TOTAL;
    loop {
        let wait = (tokio::time::Instant::now() + DRAIN_IDLE).min(deadline);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

/// Binds `bind:port` (port 0 picks a free port).
pub async fn bind(bind: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((bind, port)).await
}

/// Serves `router` on `listener` until SIGTERM/Ctrl-C (see [`crate::shutdown`]), letting
/// in-flight requests finish; `service` names it in the log and the error.
pub async fn serve_until_signal(service: &str, listener: TcpListener, router: Router) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    tracing::info!(port, "{service} service listening");
    serve(listener, router, crate::shutdown::shutdown_signal())
        .await
        .with_context(|| format!("{service} service: the http server failed"))
}

/// [`bind`] for a service's start: the error says what to do about a taken port.
pub async fn listen(bind_addr: &str, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    bind(bind_addr, port)
        .await
        .with_context(|| format!("cannot listen on {bind_addr}:{port} — is the port taken? set PORT"))
}

/// How long a pooled connection may sit idle before [`connect_and_migrate`]'s pool checks it
/// with a ping before handing it out.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A pool of up to `size` connections to the database at `database_url`, connected now, with
/// `migrator` applied: for a service that needs its database at start (payments, admin). The
/// service owns its schema: applying pending migrations is a no-op when current, and sqlx takes
/// an advisory lock, so replicas starting together do not race. `what` names the database in
/// errors (`payments_db`). Connections idle for [`PING_AFTER_IDLE`] or longer are pinged before
/// use (a dead one is replaced); busy ones are used without the extra round trip.
pub async fn connect_and_migrate(
    database_url: &str,
    size: u32,
    migrator: &'static Migrator,
    what: &str,
) -> anyhow::Result<PgPool> {
    use anyhow::Context as _;
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out: a round trip (and a wake-up of the
        // database backend) before every query. Under load a connection was in use a moment
        // ago; only one that sat idle is checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect(database_url)
        .await
        .with_context(|| {
            format!(
                "{what} at {}: cannot connect — is the infrastructure running? try `mfe infra start`",
                crate::env::redact_url_password(database_url)
            )
        })?;
    migrator.run(&pool).await.with_context(|| format!("{what}: applying its migrations"))?;
    Ok(pool)
}

/// Serves `router` until `shutdown` resolves: stops accepting, lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
