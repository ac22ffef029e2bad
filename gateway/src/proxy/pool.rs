//! The upstreams and their connection pools.

use std::{
    pin::Pin,
    sync::{atomic::AtomicBool, Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{header::HeaderValue, uri::Authority},
    response::Response,
};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::{
    config::Route,
    metrics::{HttpSeries, RouteRequests},
};

/// One upstream service: where it is and whether its last health check passed.
pub(super) struct Upstream {
    pub(super) route: Route,
    pub(super) authority: Authority,
    /// Cleared by a failed health check; requests then get 503 without trying the service.
    pub(super) up: AtomicBool,
    pub(super) histogram: prometheus::Histogram,
    /// `gateway_proxy_requests_total{route=..}` by status, resolved once per status seen.
    pub(super) requests: RouteRequests,
    /// `http_requests_total` / `http_request_duration_seconds` of the route's template.
    pub(super) http: HttpSeries,
    /// The `Host` header of requests to this upstream (its authority).
    pub(super) host: HeaderValue,
    /// Idle keep-alive connections (HTTP/1.1), most recently used last.
    pub(super) idle: Mutex<Vec<SendRequest<Body>>>,
    pub(super) connect_timeout: Duration,
}

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

impl Upstream {
    /// Sends `req` (origin-form URI, `Host` set) on an idle pooled connection, or on a new one;
    /// the response body returns the connection to the pool once it has been read to the end.
    /// A request refused by a pooled connection that the upstream closed meanwhile (before
    /// anything was sent) is retried once on a fresh connection. `Err` is the reason, for 502.
    pub(super) async fn send(self: &Arc<Self>, req: axum::http::Request<Body>) -> Result<Response, String> {
        let mut req = req;
        if let Some(mut sender) = self.checkout().await {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.pooled_response(response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(error_reason(e.error())),
                },
            }
        }
        // Boxed: connecting is the rare path, and its future would otherwise make every
        // request's future larger.
        let mut sender = Box::pin(self.connect()).await?;
        let response = sender.send_request(req).await.map_err(|e| error_reason(&e))?;
        Ok(self.pooled_response(response, sender))
    }

    /// The most recently used idle connection that is still open and ready.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = self.idle.lock().expect("pool lock poisoned").pop()?;
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// A new HTTP/1.1 connection (no Nagle, TCP keep-alive), its I/O driven by its own task.
    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let addr = self.authority.as_str();
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, async {
            let mut last = None;
            for target in tokio::net::lookup_host((host, port)).await? {
                let socket =
                    if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.set_keepalive(true)?;
                socket.set_nodelay(true)?;
                match socket.connect(target).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
        })
        .await
        .map_err(|_| format!("connecting to {addr} timed out after {} ms", self.connect_timeout.as_millis()))?
        .map_err(|e: std::io::Error| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| error_reason(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// The response with a body that gives `sender` back to the pool at its end.
    fn pooled_response(
        self: &Arc<Self>,
        response: axum::http::Response<hyper::body::Incoming>,
        sender: SendRequest<Body>,
    ) -> Response {
        let (parts, body) = response.into_parts();
        let body = if http_body::Body::is_end_stream(&body) {
            self.checkin(sender);
            PooledBody { inner: body, give_back: None }
        } else {
            PooledBody { inner: body, give_back: Some((sender, self.clone())) }
        };
        Response::from_parts(parts, Body::new(body))
    }

    fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        if idle.len() < MAX_IDLE_PER_UPSTREAM {
            idle.push(sender);
        }
    }
}

/// An upstream response body, streamed as it arrives; read to its end it returns its connection
/// to the pool (dropped earlier, the connection is dropped with it and closes).
struct PooledBody {
    inner: hyper::body::Incoming,
    give_back: Option<(SendRequest<Body>, Arc<Upstream>)>,
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.give_back_connection(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back_connection(),
            Poll::Ready(Some(Err(_))) => this.give_back = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl PooledBody {
    fn give_back_connection(&mut self) {
        if let Some((sender, upstream)) = self.give_back.take() {
            upstream.checkin(sender);
        }
    }
}

/// The innermost cause of a client error, which names what actually failed (refused, reset).
fn error_reason(e: &hyper::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = s.to_string();
        source = s.source();
    }
    reason
}
