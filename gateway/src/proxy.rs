//! The streaming reverse proxy of SPEC §8: `/api/<service>/...` goes to that service with the
//! path unchanged. Bodies are never collected: the incoming body is handed to the upstream
//! request as a stream and the upstream's body back to the client the same way, so memory stays
//! flat whatever the size. Connections to upstreams are pooled here ([`Upstream`]: HTTP/1.1
//! senders reused most-recent-first).
//!
//! Errors answer in the platform's shape `{"error":{"code","message"}}`: no route 404, upstream
//! marked down by the health checks 503, connection failure 502, no response headers within the
//! timeout 504.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Mutex,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{
        header::{self, HeaderMap, HeaderName, HeaderValue},
        uri::{Authority, PathAndQuery, Scheme},
        StatusCode, Uri,
    },
    response::{IntoResponse, Response},
};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::{
    config::Route,
    metrics::{GatewayMetrics, HttpSeries, RouteRequests},
};

/// The header carrying the correlation id across the platform.
pub static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Why a request could not be proxied; each variant is one status of SPEC §8.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for {path} — the gateway serves /api/auth, /api/payments, /api/admin, /api/profile, /ws, /health and /metrics")]
    NoRoute { path: String },
    #[error("the {route} service is marked down by health checks — try again shortly")]
    UpstreamDown { route: String },
    #[error("cannot reach the {route} service: {reason}")]
    Connect { route: String, reason: String },
    #[error("the {route} service did not answer within {timeout_ms} ms")]
    Timeout { route: String, timeout_ms: u128 },
    #[error("the upstream URL of the {route} service is invalid: {reason}")]
    BadUpstream { route: String, reason: String },
}

impl ProxyError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::UpstreamDown { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable"),
            ProxyError::Connect { .. } | ProxyError::BadUpstream { .. } => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        error_response(status, code, &self.to_string())
    }
}

/// The platform's JSON error body with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// The `path` label of everything proxied under `prefix`: the gateway's route template, in
/// axum's syntax (`/api/payments/{*path}`); the gateway does not know the service's own
/// templates, and a raw path would put ids into labels.
pub fn route_template(prefix: &str) -> String {
    format!("{}/{{*path}}", prefix.trim_end_matches('/'))
}

/// One upstream service: where it is and whether its last health check passed.
struct Upstream {
    route: Route,
    authority: Authority,
    /// Cleared by a failed health check; requests then get 503 without trying the service.
    up: AtomicBool,
    histogram: prometheus::Histogram,
    /// `gateway_proxy_requests_total{route=..}` by status, resolved once per status seen.
    requests: RouteRequests,
    /// `http_requests_total` / `http_request_duration_seconds` of the route's template.
    http: HttpSeries,
    /// The `Host` header of requests to this upstream (its authority).
    host: HeaderValue,
    /// Idle keep-alive connections (HTTP/1.1), most recently used last.
    idle: Mutex<Vec<SendRequest<Body>>>,
    connect_timeout: Duration,
}

/// Why a request was not sent, with the upstream it was meant for (when its path matched one).
type Refused<'a> = (Option<&'a Upstream>, ProxyError);

/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// The proxy: routes, pooled connections, timeouts and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    upstreams: Arc<[Arc<Upstream>]>,
    timeout: Duration,
    metrics: GatewayMetrics,
}

impl Proxy {
    pub fn new(
        routes: &[Route],
        upstream_timeout: Duration,
        connect_timeout: Duration,
        metrics: GatewayMetrics,
    ) -> anyhow::Result<Self> {
        let mut upstreams = Vec::with_capacity(routes.len());
        for route in routes {
            let uri: Uri = route.upstream.parse().map_err(|e| {
                anyhow::anyhow!("the upstream URL of {} (`{}`) is invalid: {e}", route.name, route.upstream)
            })?;
            let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
                anyhow::bail!("the upstream URL of {} (`{}`) needs a scheme and a host", route.name, route.upstream);
            };
            if scheme != Scheme::HTTP {
                anyhow::bail!("the upstream URL of {} (`{}`) must be http://", route.name, route.upstream);
            }
            metrics.set_upstream_up(&route.name, true);
            let host = HeaderValue::from_str(authority.as_str()).map_err(|e| {
                anyhow::anyhow!("the upstream URL of {} (`{}`) has an invalid host: {e}", route.name, route.upstream)
            })?;
            upstreams.push(Arc::new(Upstream {
                histogram: metrics.upstream_histogram(&route.name),
                requests: metrics.route_requests(&route.name),
                http: metrics.http_series(&route_template(&route.prefix)),
                route: route.clone(),
                authority,
                up: AtomicBool::new(true),
                host,
                idle: Mutex::new(Vec::new()),
                connect_timeout,
            }));
        }
        Ok(Self { upstreams: upstreams.into(), timeout: upstream_timeout, metrics })
    }

    /// Starts one background task per upstream polling `GET /health` every `interval` (the first
    /// poll after one interval). Returns the tasks so the application can stop them.
    pub fn spawn_health_checks(&self, interval: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        self.upstreams
            .iter()
            .map(|upstream| {
                let upstream = upstream.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let check_timeout = interval.min(Duration::from_secs(2));
                    loop {
                        tokio::time::sleep(interval).await;
                        let req = axum::http::Request::get("/health")
                            .header(header::HOST, upstream.host.clone())
                            .body(Body::empty())
                            .expect("valid request");
                        let healthy = match tokio::time::timeout(check_timeout, upstream.send(req)).await {
                            Ok(Ok(resp)) => !resp.status().is_server_error(),
                            _ => false,
                        };
                        let was = upstream.up.swap(healthy, Ordering::Relaxed);
                        if was != healthy {
                            if healthy {
                                tracing::info!(route = %upstream.route.name, "upstream is healthy again");
                            } else {
                                tracing::warn!(route = %upstream.route.name, upstream = %upstream.route.upstream, "upstream failed its health check, answering 503");
                            }
                            metrics.set_upstream_up(&upstream.route.name, healthy);
                        }
                    }
                })
            })
            .collect()
    }

    /// The gateway's metrics, which the proxy records into.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Whether each upstream passed its last health check, for the gateway's `/health`.
    pub fn upstream_states(&self) -> Vec<(String, bool)> {
        self.upstreams.iter().map(|u| (u.route.name.clone(), u.up.load(Ordering::Relaxed))).collect()
    }

    fn find(&self, path: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| {
            let prefix = u.route.prefix.as_str();
            path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/') | Some(b'?'))
        })
    }

    /// Forwards one request from `peer` (the client's address, for the forwarding headers) and
    /// streams the answer back; every failure is a JSON error.
    pub async fn forward(&self, req: Request, peer: Option<SocketAddr>) -> Response {
        let correlation_id = correlation_id_of(req.headers());
        // Cloning a standard method copies a tag, nothing is allocated.
        let method = req.method().clone();
        // Only visible ASCII gets here (checked or generated), so this never falls back.
        let id = correlation_id.to_str().unwrap_or_default();
        let span = mfe_kit::telemetry::proxy_span(id, req.method(), req.uri().path(), req.headers());
        let started = Instant::now();
        // The preparation is synchronous and the exchange a small future of its own: the
        // request's future is moved (copied) a few times on its way into the connection's task,
        // and a large one showed up as memmove in the profile.
        let forwarded = match span.in_scope(|| self.prepare(req, peer, &correlation_id)) {
            Err(e) => Err(e),
            Ok((upstream, upstream_req)) => {
                let exchange = self.exchange(upstream, upstream_req);
                let result = if span.is_disabled() {
                    exchange.await
                } else {
                    tracing::Instrument::instrument(exchange, span.clone()).await
                };
                result.map(|r| (upstream, r)).map_err(|e| (Some(&**upstream), e))
            }
        };
        let (upstream, mut response): (Option<&Upstream>, Response) = match forwarded {
            Ok((upstream, response)) => (Some(upstream), response),
            Err((upstream, e)) => {
                if !matches!(e, ProxyError::NoRoute { .. }) {
                    tracing::warn!(correlation_id = %id, error = %e, "proxy error");
                }
                (upstream, e.into_response())
            }
        };
        let status = response.status().as_u16();
        let seconds = started.elapsed().as_secs_f64();
        match upstream {
            Some(upstream) => {
                upstream.requests.inc(status);
                upstream.http.observe(&method, status, seconds);
            }
            None => self.metrics.observe_http(&method, mfe_kit::metrics::UNMATCHED_PATH, status, seconds),
        }
        if !span.is_disabled() {
            span.in_scope(|| {
                let route = upstream.map(|u| u.route.name.as_str());
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(route, status, elapsed_ms, "proxied");
            });
        }
        response.headers_mut().insert(CORRELATION_ID.clone(), correlation_id);
        response
    }

    /// The upstream of `req` and the request to send it (origin-form URI, forwarding headers,
    /// `Host` of the upstream, trace context), or why there is none.
    fn prepare(
        &self,
        req: Request,
        peer: Option<SocketAddr>,
        correlation_id: &HeaderValue,
    ) -> Result<(&Arc<Upstream>, Request), Refused<'_>> {
        let Some(upstream) = self.find(req.uri().path()) else {
            return Err((None, ProxyError::NoRoute { path: req.uri().path().to_string() }));
        };
        if !upstream.up.load(Ordering::Relaxed) {
            return Err((Some(upstream), ProxyError::UpstreamDown { route: upstream.route.name.clone() }));
        }
        let (mut parts, body) = req.into_parts();
        // Origin-form on the wire (`GET /path?q HTTP/1.1` + `Host`), as RFC 9112 asks of a client.
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(path_and_query);
        }
        parts.version = axum::http::Version::HTTP_11;
        prepare_request_headers(&mut parts.headers, peer, correlation_id);
        parts.headers.insert(header::HOST, upstream.host.clone());
        mfe_kit::telemetry::inject_trace_context(&mut parts.headers);
        Ok((upstream, axum::http::Request::from_parts(parts, body)))
    }

    /// Sends `req` to `upstream` within the timeout; the response with its hop-by-hop headers
    /// removed, or the 502/504 error.
    async fn exchange(&self, upstream: &Arc<Upstream>, req: Request) -> Result<Response, ProxyError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, upstream.send(req)).await;
        upstream.histogram.observe(started.elapsed().as_secs_f64());
        let response = match result {
            Err(_) => {
                let route = upstream.route.name.clone();
                return Err(ProxyError::Timeout { route, timeout_ms: self.timeout.as_millis() });
            }
            Ok(Err(reason)) => return Err(ProxyError::Connect { route: upstream.route.name.clone(), reason }),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

impl Upstream {
    /// Sends `req` (origin-form URI, `Host` set) on an idle pooled connection, or on a new one;
    /// the response body returns the connection to the pool once it has been read to the end.
    /// A request refused by a pooled connection that the upstream closed meanwhile (before
    /// anything was sent) is retried once on a fresh connection. `Err` is the reason, for 502.
    async fn send(self: &Arc<Self>, req: axum::http::Request<Body>) -> Result<Response, String> {
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

/// The incoming correlation id when it is a sane token (visible ASCII, at most 128 bytes),
/// else a fresh random UUID.
pub fn correlation_id_of(headers: &HeaderMap) -> HeaderValue {
    let incoming = headers.get(&CORRELATION_ID).map(|v| v.as_bytes().trim_ascii());
    match incoming {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic) => {
            HeaderValue::from_bytes(id).expect("visible ASCII is a valid header value")
        }
        _ => fresh_correlation_id(),
    }
}

/// A random (version 4) UUID from a per-thread generator seeded once from the OS: a correlation
/// id must be unique, not unpredictable, and asking the OS for randomness on every request
/// (`Uuid::new_v4`) is a system call per request.
fn fresh_correlation_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    // splitmix64: two outputs make the 128 random bits.
    let next = |state: &Cell<u64>| {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let (hi, lo) = STATE.with(|state| (next(state), next(state)));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_le_bytes());
    bytes[8..].copy_from_slice(&lo.to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(uuid.hyphenated().encode_lower(&mut text).as_bytes())
        .expect("a UUID is a valid header value")
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and adds the forwarding headers. `X-Real-IP`
/// and `X-Forwarded-Proto` set by a proxy in front (nginx on loopback) are trusted and kept;
/// from any other peer they are replaced, so a client cannot spoof its address.
pub fn prepare_request_headers(headers: &mut HeaderMap, peer: Option<SocketAddr>, correlation_id: &HeaderValue) {
    strip_hop_by_hop(headers);
    let trusted_front = peer.is_some_and(|p| p.ip().is_loopback());
    if let Some(peer) = peer {
        let ip = ip_header_value(peer.ip());
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.trim().is_empty() => {
                HeaderValue::from_str(&format!("{existing}, {}", peer.ip())).ok()
            }
            _ => Some(ip.clone()),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if !(trusted_front && headers.contains_key(&X_REAL_IP)) {
            headers.insert(X_REAL_IP.clone(), ip);
        }
    }
    if !(trusted_front && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    // The upstream sees its own authority in Host (set by the client from the URI); the name the
    // client used travels in X-Forwarded-Host.
    if let Some(host) = headers.remove(header::HOST) {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    headers.insert(CORRELATION_ID.clone(), correlation_id.clone());
}

/// An IP address as a header value; loopback (nginx in front, every local client) is a constant.
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    static V4_LOOPBACK: HeaderValue = HeaderValue::from_static("127.0.0.1");
    if ip == std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) {
        return V4_LOOPBACK.clone();
    }
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

/// Drops `Connection` and every header it names, plus the fixed hop-by-hop set and `Proxy-*`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (a handful) is cheaper than
    // a hashed removal of every hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [&KEEP_ALIVE, &header::TE, &header::TRAILER, &header::TRANSFER_ENCODING, &header::UPGRADE] {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy_headers: Vec<HeaderName> =
            headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
        for name in proxy_headers {
            headers.remove(name);
        }
    }
}

/// Whether `name` is hop-by-hop by itself (the names a `Connection` header lists are not
/// known until it is read; it is hop-by-hop itself, so it counts).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str().starts_with("proxy-")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-sum"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["authorization", "content-type"]);
    }

    #[test]
    fn forwarding_headers_append_the_peer_and_keep_a_trusted_fronts_real_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-real-ip", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(header::HOST, HeaderValue::from_static("localhost"));
        prepare_request_headers(&mut h, Some("127.0.0.1:5555".parse().unwrap()), &HeaderValue::from_static("cid-1"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost");
        assert_eq!(h["x-correlation-id"], "cid-1");
        assert!(h.get(header::HOST).is_none());
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address_or_scheme() {
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        prepare_request_headers(&mut h, Some("198.51.100.7:4000".parse().unwrap()), &HeaderValue::from_static("c"));
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
    }

    #[test]
    fn a_malformed_correlation_id_is_replaced_by_a_uuid() {
        let mut h = HeaderMap::new();
        h.insert("x-correlation-id", HeaderValue::from_static("abc-123"));
        assert_eq!(correlation_id_of(&h), "abc-123");
        h.insert("x-correlation-id", HeaderValue::from_static("has space"));
        let fresh = correlation_id_of(&h);
        let uuid = uuid::Uuid::parse_str(fresh.to_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(correlation_id_of(&h), fresh, "two fresh ids must differ");
    }
}
