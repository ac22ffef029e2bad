//! The gateway's HTTP server: an accept loop over hyper's HTTP/1.1 connection driver, with
//! upgrades (WebSocket) enabled.
//!
//! Proxied requests go straight to [`Proxy::forward`]; only `/health`, `/metrics` and `/ws` go
//! through the axum [`Router`]. Measured under `wrk`, the generic path of `axum::serve` (HTTP/1
//! or HTTP/2 detection per connection, the tower adapters, the router's match and the state
//! clone per request) cost a few µs of CPU per proxied request, which is the budget that decides
//! the gateway's CPU against nginx. HTTP/2 is not offered: nginx in front speaks HTTP/1.1 to its
//! upstreams (`proxy_http_version 1.1`), and browsers reach the gateway only through nginx.
//!
//! Shutdown is graceful like `axum::serve`'s: the listener closes, every connection finishes its
//! request in flight (keep-alive ends), and the server returns once all have closed.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo, response::Response, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{metrics::GatewayMetrics, proxy::Proxy};

/// What every connection of the server shares.
struct Shared {
    router: Router,
    proxy: Proxy,
    metrics: GatewayMetrics,
}

/// The service of one connection: the peer's address and the shared routes.
#[derive(Clone)]
struct Frontend {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

/// Paths the axum router serves; every other path is proxied (the router's fallback is the
/// proxy too, so this split changes no answer).
fn served_by_router(path: &str) -> bool {
    matches!(path, "/health" | "/metrics" | "/ws")
}

impl hyper::service::Service<hyper::Request<Incoming>> for Frontend {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        let peer = self.peer;
        if served_by_router(req.uri().path()) {
            req.extensions_mut().insert(ConnectInfo(peer));
            let shared = self.shared.clone();
            Box::pin(async move {
                // The router's routes are exact paths, so the path is its own template.
                let (method, path, started) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
                let response = shared.router.clone().oneshot(req).await?;
                let seconds = started.elapsed().as_secs_f64();
                shared.metrics.observe_http(&method, &path, response.status().as_u16(), seconds);
                Ok(response)
            })
        } else {
            let shared = self.shared.clone();
            Box::pin(async move { Ok(shared.proxy.forward(req, Some(peer)).await) })
        }
    }
}

/// What a client's connection may cost before the request is read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send the request line and headers, counted from when the connection is ready
    /// for a request (accepted, or idle after the last answer): a slowloris socket, or an idle
    /// keep-alive one, is closed after it.
    pub header_read_timeout: Duration,
    /// The largest request line plus headers; a larger head is answered 431.
    pub max_header_bytes: usize,
}

/// Accepts connections on `listener` until `shutdown` resolves, then waits for the open
/// connections to finish (upgraded WebSockets run on their own and are not waited for).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    proxy: Proxy,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let metrics = proxy.metrics().clone();
    let shared = Arc::new(Shared { router, proxy, metrics });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Checked once the head is complete; a head that does not fit hyper's read buffer (~400 KB,
        // left at its default so body streaming is unchanged) is a 431 as well.
        .max_header_size(limits.max_header_bytes);
    // Cancelled at shutdown: every connection then shuts down gracefully; the tracker says when
    // the last one has ended.
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    handle_accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small proxied requests must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let service = Frontend { shared: shared.clone(), peer };
        let conn = http.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stopping.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Accept errors other than a client giving up (e.g. out of file descriptors) pause the loop
/// for a second, as hyper's and axum's servers do, instead of spinning.
async fn handle_accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "gateway cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_metrics_and_ws_go_through_the_router() {
        assert!(served_by_router("/health") && served_by_router("/metrics") && served_by_router("/ws"));
        assert!(!served_by_router("/api/auth/signin"));
        assert!(!served_by_router("/ws/x"));
        assert!(!served_by_router("/healthz"));
    }
}
