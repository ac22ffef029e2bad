//! The upstreams and their connection pools.
//!
//! The pool is hand-written on hyper's `client::conn::http1` rather than hyper-util's legacy
//! `Client` (commit f938037): measured under `wrk`, the client's per-request idle-watch task and
//! its generic checkout machinery cost CPU on every proxied request, the budget that decides the
//! gateway's CPU against nginx. What the pool does, in pingora-pool's terms:
//!
//! - connections are reused most-recent-first (LIFO: the warmest socket, and the idle tail ages
//!   out);
//! - a connection goes back to the pool when its response body has been read to the end; a body
//!   dropped earlier takes its connection with it, which closes (the rest of the response is
//!   still on the wire);
//! - a pooled connection the upstream closed meanwhile is skipped, and a request it refused
//!   before sending anything is retried once on a fresh connection;
//! - idle connections older than [`PoolLimits::idle_timeout`] are closed (when the pool is next
//!   used, and by [`Pool::evict_idle`], which the health-check loop calls);
//! - at most [`PoolLimits::max_idle`] connections wait idle and at most
//!   [`PoolLimits::max_open`] are open at once; a request beyond that waits until one is returned
//!   or closed (the proxy's timeout bounds the wait).

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, http::uri::Authority, response::Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// Why [`Pool::send`] got no response.
pub(super) struct SendFailure {
    /// The innermost cause (refused, reset, timed out), for the 502 body and the log.
    pub(super) reason: String,
    /// The request, when none of it reached the upstream.
    pub(super) unsent: Option<axum::http::Request<Body>>,
}

impl SendFailure {
    /// A failure after (part of) the request was sent.
    fn sent(reason: String) -> Self {
        Self { reason, unsent: None }
    }
}

impl std::fmt::Debug for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFailure").field("reason", &self.reason).field("unsent", &self.unsent.is_some()).finish()
    }
}

/// The limits of one upstream's pool.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolLimits {
    /// Idle connections kept; one returned beyond this is closed.
    pub max_idle: usize,
    /// Connections open at once: idle, in use or being established.
    pub max_open: usize,
    /// How long a connection may wait idle before it is closed.
    pub idle_timeout: Duration,
    /// How long establishing a TCP connection may take.
    pub connect_timeout: Duration,
}

impl PoolLimits {
    /// The gateway's limits per upstream: hyper-util's idle timeout (90 s); far more open
    /// connections than a service's database pool can serve, so the cap only stops a runaway
    /// (a stuck upstream with requests piling up) from exhausting file descriptors.
    pub(super) fn new(connect_timeout: Duration) -> Self {
        Self { max_idle: 1024, max_open: 4096, idle_timeout: Duration::from_secs(90), connect_timeout }
    }
}

/// HTTP/1.1 connections to one upstream.
pub(super) struct Pool {
    authority: Authority,
    limits: PoolLimits,
    /// Idle keep-alive connections, most recently returned last.
    idle: Mutex<Vec<Idle>>,
    /// Connections open (each holds a [`Slot`] until its I/O task ends).
    open: AtomicUsize,
    /// Signalled when a connection is returned to `idle` or closes, for requests waiting at
    /// `max_open`.
    freed: Notify,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// One of the pool's `max_open` places, held by a connection's I/O task (or by the connect in
/// progress); dropping it frees the place.
struct Slot(Arc<Pool>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Pool {
    pub(super) fn new(authority: Authority, limits: PoolLimits) -> Self {
        Self { authority, limits, idle: Mutex::new(Vec::new()), open: AtomicUsize::new(0), freed: Notify::new() }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle pooled connection, or on a new one;
    /// the response body returns the connection to the pool once it has been read to the end.
    /// A request refused by a pooled connection that the upstream closed meanwhile (before
    /// anything was sent) is retried once on a fresh connection. At `max_open` it waits for a
    /// connection to be returned or closed. `Err` carries the reason, for 502, and the request
    /// when none of it was sent (the connection could not be opened), so the proxy may send it
    /// to another replica.
    pub(super) async fn send(self: &Arc<Self>, req: axum::http::Request<Body>) -> Result<Response, SendFailure> {
        let mut req = req;
        let mut pooled = true;
        let slot = loop {
            if pooled {
                if let Some(mut sender) = self.checkout().await {
                    match sender.try_send_request(req).await {
                        Ok(response) => return Ok(self.pooled_response(response, sender)),
                        Err(mut e) => match e.take_message() {
                            Some(back) => {
                                req = back;
                                pooled = false;
                            }
                            None => return Err(SendFailure::sent(error_reason(e.error()))),
                        },
                    }
                }
            }
            if let Some(slot) = self.reserve() {
                break slot;
            }
            // A return or close in between stored a permit in `freed`, so none is missed.
            self.freed.notified().await;
        };
        // Boxed: connecting is the rare path, and its future would otherwise make every
        // request's future larger.
        let mut sender = match Box::pin(self.connect(slot)).await {
            Ok(sender) => sender,
            Err(reason) => return Err(SendFailure { reason, unsent: Some(req) }),
        };
        match sender.try_send_request(req).await {
            Ok(response) => Ok(self.pooled_response(response, sender)),
            Err(mut e) => Err(SendFailure { reason: error_reason(e.error()), unsent: e.take_message() }),
        }
    }

    /// Closes the idle connections older than the idle timeout.
    pub(super) fn evict_idle(&self) {
        let expired = {
            let mut idle = self.idle.lock().expect("pool lock poisoned");
            self.take_expired(&mut idle, Instant::now())
        };
        drop(expired);
    }

    /// Connections open now (idle, in use or connecting).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections waiting idle now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock poisoned").len()
    }

    /// The idle connections past the idle timeout, removed from `idle` (the oldest are first).
    fn take_expired(&self, idle: &mut Vec<Idle>, now: Instant) -> Vec<Idle> {
        let expired = idle.iter().take_while(|c| now.duration_since(c.since) >= self.limits.idle_timeout).count();
        idle.drain(..expired).collect()
    }

    /// A place for one more connection, unless `max_open` are open.
    fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let max = self.limits.max_open;
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Slot(self.clone()))
    }

    /// The most recently used idle connection that is still open, fresh and ready.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let Idle { mut sender, since } = self.idle.lock().expect("pool lock poisoned").pop()?;
            if sender.is_closed() {
                continue;
            }
            if since.elapsed() >= self.limits.idle_timeout {
                // The most recent is too old, so every other one is too.
                let all = std::mem::take(&mut *self.idle.lock().expect("pool lock poisoned"));
                drop((sender, all));
                return None;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// A new HTTP/1.1 connection (no Nagle, TCP keep-alive), its I/O driven by its own task,
    /// which holds `slot` until the connection closes.
    async fn connect(&self, slot: Slot) -> Result<SendRequest<Body>, String> {
        let addr = self.authority.as_str();
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self.authority.host().trim_start_matches('[').trim_end_matches(']');
        let connect_timeout = self.limits.connect_timeout;
        let stream = tokio::time::timeout(connect_timeout, async {
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
        .map_err(|_| format!("connecting to {addr} timed out after {} ms", connect_timeout.as_millis()))?
        .map_err(|e: std::io::Error| e.to_string())?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| error_reason(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
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

    /// Returns `sender` to the idle connections (closing those past the idle timeout), or
    /// closes it when it is closed already or `max_idle` wait.
    fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        let expired = self.take_expired(&mut idle, now);
        let kept = idle.len() < self.limits.max_idle;
        if kept {
            idle.push(Idle { sender, since: now });
        }
        drop(idle);
        drop(expired);
        if kept {
            self.freed.notify_one();
        }
    }
}

/// An upstream response body, streamed as it arrives; read to its end it returns its connection
/// to the pool (dropped earlier, the connection is dropped with it and closes).
pub(super) struct PooledBody {
    inner: hyper::body::Incoming,
    give_back: Option<(SendRequest<Body>, Arc<Pool>)>,
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

/// The pool against real upstreams: TCP listeners on 127.0.0.1 answering HTTP/1.1 by hand, so
/// each test decides when a response ends and when a connection closes, and counts connections.
#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// How the test upstream answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200 ok`, keep-alive.
        Ok,
        /// `200 abcd`, the head and `ab` at once and `cd` after 200 ms.
        Slow,
        /// `200 ok`, then the connection closes 20 ms later (an upstream's keep-alive timeout).
        OkThenClose,
    }

    struct TestUpstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn upstream(answer: Answer) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    while read_head(&mut stream).await && answer_one(&mut stream, answer).await {}
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        TestUpstream { addr, accepted, closed }
    }

    /// Reads one request head (the tests send no bodies); false at end of stream.
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    async fn answer_one(stream: &mut TcpStream, answer: Answer) -> bool {
        let written = match answer {
            Answer::Ok => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await,
            Answer::OkThenClose => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                return false;
            }
            Answer::Slow => {
                let head = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                head.and(stream.write_all(b"cd").await)
            }
        };
        written.is_ok()
    }

    fn limits() -> PoolLimits {
        PoolLimits {
            max_idle: 16,
            max_open: 16,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn pool(addr: std::net::SocketAddr, limits: PoolLimits) -> Arc<Pool> {
        Arc::new(Pool::new(addr.to_string().parse().unwrap(), limits))
    }

    fn get(addr: std::net::SocketAddr) -> axum::http::Request<Body> {
        axum::http::Request::get("/").header("host", addr.to_string()).body(Body::empty()).unwrap()
    }

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Waits up to 2 s for `condition`, which background tasks (connection I/O) make true.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_returned_connection_is_reused() {
        let up = upstream(Answer::Ok).await;
        let pool = pool(up.addr, limits());
        for _ in 0..3 {
            assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "one connection for three requests");
        assert_eq!((pool.idle(), pool.open()), (1, 1));
    }

    #[tokio::test]
    async fn a_connection_returns_to_the_pool_at_the_end_of_its_body() {
        let up = upstream(Answer::Slow).await;
        let pool = pool(up.addr, limits());
        let response = pool.send(get(up.addr)).await.unwrap();
        assert_eq!((pool.idle(), pool.open()), (0, 1), "in use while the body streams");
        assert_eq!(body_of(response).await, "abcd");
        assert_eq!((pool.idle(), pool.open()), (1, 1), "idle once the body was read to its end");
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "abcd");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dropped_unfinished_body_closes_its_connection() {
        let up = upstream(Answer::Slow).await;
        let pool = pool(up.addr, limits());
        drop(pool.send(get(up.addr)).await.unwrap());
        eventually("the upstream sees the connection close", || up.closed.load(Ordering::SeqCst) == 1).await;
        eventually("the pool frees its place", || pool.open() == 0).await;
        assert_eq!(pool.idle(), 0, "a half-read connection must not be reused");
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "abcd");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    /// The upstream closed an idle pooled connection, and the connection's task has not run
    /// since (this test's runtime is single-threaded), so the pool still takes it as open: the
    /// request handed to it comes back unsent and goes out again on a fresh connection. The
    /// stale connection runs over an in-memory pipe, whose close wakes its task at once.
    #[tokio::test]
    async fn a_request_refused_by_a_stale_pooled_connection_is_retried_on_a_fresh_one() {
        let up = upstream(Answer::Ok).await;
        let pool = pool(up.addr, limits());
        let (client_side, upstream_side) = tokio::io::duplex(4096);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_side)).await.unwrap();
        let slot = pool.reserve().unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
        // The connection's task runs until it waits for a request.
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.idle.lock().unwrap().push(Idle { sender, since: Instant::now() });
        drop(upstream_side);
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "the request went out on a fresh connection");
        eventually("the stale connection frees its place", || pool.open() == 1).await;
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        let up = upstream(Answer::OkThenClose).await;
        let pool = pool(up.addr, limits());
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        eventually("the upstream closes its side", || up.closed.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_past_the_idle_timeout_are_closed() {
        let up = upstream(Answer::Ok).await;
        let pool = pool(up.addr, PoolLimits { idle_timeout: Duration::from_millis(100), ..limits() });
        let (a, b) = tokio::join!(pool.send(get(up.addr)), pool.send(get(up.addr)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((body_of(a).await, body_of(b).await), ("ok".to_string(), "ok".to_string()));
        assert_eq!((pool.idle(), pool.open()), (2, 2));
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.evict_idle();
        assert_eq!(pool.idle(), 0);
        eventually("the upstream sees both close", || up.closed.load(Ordering::SeqCst) == 2).await;
        eventually("the pool frees their places", || pool.open() == 0).await;

        // Without the eviction pass, the next request does not take an expired connection.
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(body_of(pool.send(get(up.addr)).await.unwrap()).await, "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
        eventually("the expired one closes", || up.closed.load(Ordering::SeqCst) == 3).await;
    }

    #[tokio::test]
    async fn no_more_than_max_open_connections_are_opened_and_a_request_waits_for_one() {
        let up = upstream(Answer::Slow).await;
        let pool = pool(up.addr, PoolLimits { max_open: 2, ..limits() });
        let first = pool.send(get(up.addr)).await.unwrap();
        let second = pool.send(get(up.addr)).await.unwrap();
        let third = tokio::spawn({
            let pool = pool.clone();
            async move { body_of(pool.send(get(up.addr)).await.unwrap()).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "a third request must wait while two connections are in use");
        assert_eq!((pool.open(), up.accepted.load(Ordering::SeqCst)), (2, 2));
        assert_eq!(body_of(first).await, "abcd");
        assert_eq!(third.await.unwrap(), "abcd", "the returned connection serves the waiting request");
        assert_eq!(body_of(second).await, "abcd");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

        // A connection that closes (its body dropped unread) frees its place too.
        let first = pool.send(get(up.addr)).await.unwrap();
        let second = pool.send(get(up.addr)).await.unwrap();
        assert_eq!(pool.open(), 2);
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), pool.send(get(up.addr))).await.unwrap().unwrap();
        assert_eq!(body_of(third).await, "abcd");
        assert_eq!(body_of(second).await, "abcd");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3, "one fresh connection for the closed one");
    }
}
