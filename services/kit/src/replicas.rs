//! The replicas of a service that another service calls (`AUTH_SERVICE_URL=http://a,http://b`,
//! what `mfe up --replicas N` gives every process).
//!
//! The calls between services are few and short (payments and profile ask auth whether a user
//! exists; admin relays auth's user list), so this is the gateway's balancing rule without its
//! health checks: round robin over every replica, and a request whose connection fails is sent
//! once more, to the next replica. Only GET goes through here, so the retry cannot apply a
//! write twice. A dead replica therefore costs a failed connect (milliseconds on one machine),
//! never a failed call, while another replica answers.
//!
//! The URL list is parsed here and nowhere else: the gateway's routes read the same variables
//! with [`parse_urls`].

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

/// `http://a/, http://b,` → `[http://a, http://b]`: comma-separated base URLs, blanks dropped,
/// trailing `/` trimmed (paths are appended to them).
pub fn parse_urls(raw: &str) -> Vec<String> {
    raw.split(',').map(|u| u.trim().trim_end_matches('/')).filter(|u| !u.is_empty()).map(String::from).collect()
}

/// The base URLs of one service's replicas and where the rotation stands. Cheap to clone; the
/// clones share the rotation.
#[derive(Clone)]
pub struct Replicas {
    urls: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Replicas {
    /// The replicas of a comma-separated list ([`parse_urls`]). An empty list keeps one empty
    /// base URL, so a call fails with reqwest's own error naming the relative URL.
    pub fn parse(raw: &str) -> Self {
        let mut urls = parse_urls(raw);
        if urls.is_empty() {
            urls.push(String::new());
        }
        Self { urls: urls.into(), next: Arc::default() }
    }

    /// Every replica's base URL, in the configured order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// `GET {replica}{path}`, with `build` adding headers and the like. Round robin; on a
    /// connection failure (nothing was sent) once more at the next replica. The error is the
    /// last attempt's, with the replica's URL in it.
    pub async fn get(
        &self,
        http: &reqwest::Client,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let attempts = self.urls.len().min(2);
        let mut result = None;
        for k in 0..attempts {
            let base = &self.urls[(first + k) % self.urls.len()];
            match build(http.get(format!("{base}{path}"))).send().await {
                Err(e) if e.is_connect() && k + 1 < attempts => {
                    tracing::warn!(replica = %base, error = %e, "replica refused the connection; trying the next");
                    result = Some(Err(e));
                }
                other => return other,
            }
        }
        result.expect("at least one attempt")
    }
}

/// The list as configured, comma-separated (for messages).
impl fmt::Display for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.urls.iter()).finish()
    }
}

impl From<&str> for Replicas {
    fn from(raw: &str) -> Self {
        Self::parse(raw)
    }
}

impl From<String> for Replicas {
    fn from(raw: String) -> Self {
        Self::parse(&raw)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::{routing::get, Router};

    use super::*;

    /// A server answering `GET /who` with `name`, counting its calls.
    async fn replica(name: &'static str, calls: Arc<Mutex<Vec<&'static str>>>) -> String {
        let app = Router::new().route(
            "/who",
            get(move || {
                calls.lock().unwrap().push(name);
                async move { name }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// A port nobody listens on: bound, then closed.
    fn closed_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}")
    }

    async fn who(replicas: &Replicas, http: &reqwest::Client) -> Result<String, reqwest::Error> {
        replicas.get(http, "/who", |r| r).await?.text().await
    }

    #[test]
    fn a_list_is_split_trimmed_and_blanks_dropped() {
        assert_eq!(parse_urls(" http://a/ ,http://b,, "), ["http://a", "http://b"]);
        assert!(parse_urls(" , ").is_empty());
        assert_eq!(Replicas::parse("http://a/,http://b").to_string(), "http://a,http://b");
        assert_eq!(Replicas::parse("").urls(), [""], "one empty base, so a call fails loudly");
    }

    #[tokio::test]
    async fn calls_go_round_robin_over_every_replica() {
        let calls = Arc::default();
        let (a, b) = (replica("a", Arc::clone(&calls)).await, replica("b", Arc::clone(&calls)).await);
        let replicas = Replicas::parse(&format!("{a},{b}/"));
        let http = reqwest::Client::new();
        for _ in 0..4 {
            who(&replicas.clone(), &http).await.unwrap();
        }
        assert_eq!(*calls.lock().unwrap(), ["a", "b", "a", "b"], "clones share the rotation");
    }

    #[tokio::test]
    async fn a_refused_connection_is_tried_once_more_at_the_next_replica() {
        let calls = Arc::default();
        let live = replica("live", Arc::clone(&calls)).await;
        let replicas = Replicas::parse(&format!("{},{live}", closed_url()));
        let http = reqwest::Client::new();
        for _ in 0..3 {
            assert_eq!(who(&replicas, &http).await.unwrap(), "live", "no call fails while a replica answers");
        }
        assert_eq!(calls.lock().unwrap().len(), 3, "each call reached the live replica once");
    }

    #[tokio::test]
    async fn with_every_replica_dead_the_error_names_the_last_one_tried() {
        let (x, y) = (closed_url(), closed_url());
        let replicas = Replicas::parse(&format!("{x},{y}"));
        let err = who(&replicas, &reqwest::Client::new()).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(err.url().is_some_and(|u| u.as_str().starts_with(&y)), "{err}: tried {x} then {y}");
        // One replica: one attempt, no retry on itself.
        let err = who(&Replicas::parse(&x), &reqwest::Client::new()).await.unwrap_err();
        assert!(err.url().is_some_and(|u| u.as_str().starts_with(&x)), "{err}");
    }
}
