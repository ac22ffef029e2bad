//! The HTTP side every service shares: the common routes and middleware (with the request
//! body limit), binding the listener and the serve loop with graceful shutdown. How a service
//! connects to its dependencies is [`crate::startup`].

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
use tokio::net::TcpListener;

use crate::{
    health::{health_handler, Health},
    metrics::{metrics_handler, track_requests, Metrics},
    telemetry::correlation_id,
};

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
/// limit, control characters refused in the query string, the request metrics and the
/// correlation id.
pub fn with_common_layers(router: Router, metrics: Metrics) -> Router {
    router
        // `limit_request_body` is the one limit; axum's own would answer 400 through `Json`.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(limit_request_body))
        .layer(middleware::from_fn(crate::input::refuse_control_characters))
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

/// Binds `bind:port` (port 0 picks a free port); the error says what to do about a taken port.
pub async fn bind(bind: &str, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind((bind, port))
        .await
        .with_context(|| format!("cannot listen on {bind}:{port} — is the port taken? set PORT"))
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
