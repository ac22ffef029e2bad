//! Health checks of the upstreams: a failed `GET /health` marks an upstream down, and the proxy
//! answers 503 for it without trying it until a check passes again.

use std::{sync::atomic::Ordering, time::Duration};

use axum::{body::Body, http::header};

use super::Proxy;

impl Proxy {
    /// Starts one background task per upstream polling `GET /health` every `interval` (the first
    /// poll after one interval), and closes the idle connections past the pool's idle timeout on the
    /// same beat. Returns the tasks so the application can stop them.
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
                        upstream.pool.evict_idle();
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
}
