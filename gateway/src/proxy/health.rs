//! Health checks of the upstreams: a failed `GET /health` takes a replica out of its route's
//! rotation, and the next passing one puts it back; while no replica of a route is in, the
//! proxy answers 503 for it without trying.

use std::time::Duration;

use axum::{body::Body, http::header};

use super::Proxy;

impl Proxy {
    /// Starts one background task per replica polling `GET /health` every `interval` (the first
    /// poll after one interval), and closes the idle connections past the pool's idle timeout on
    /// the same beat. Returns the tasks so the application can stop them.
    pub fn spawn_health_checks(&self, interval: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for upstream in self.upstreams.iter() {
            for replica in upstream.replicas.iter() {
                let (upstream, replica, metrics) = (upstream.clone(), replica.clone(), self.metrics.clone());
                tasks.push(tokio::spawn(async move {
                    let check_timeout = interval.min(Duration::from_secs(2));
                    loop {
                        tokio::time::sleep(interval).await;
                        replica.pool.evict_idle();
                        let req = axum::http::Request::get("/health")
                            .header(header::HOST, replica.host.clone())
                            .body(Body::empty())
                            .expect("valid request");
                        let healthy = match tokio::time::timeout(check_timeout, replica.pool.send(req)).await {
                            Ok(Ok(resp)) => !resp.status().is_server_error(),
                            _ => false,
                        };
                        upstream.set_up(&replica, healthy, "failed its health check", &metrics);
                    }
                }));
            }
        }
        tasks
    }
}
