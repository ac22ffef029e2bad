//! Whether the user of a token still has an account, for the writes that must not happen on
//! behalf of nobody (a payment created, a profile changed): a validly signed token names a
//! user id, but the signature says nothing about whether that user exists (deleted since, or
//! minted by a holder of `JWT_SECRET` for an id that never existed).
//!
//! The check asks the auth service, the owner of the users: first auth's own cache in the
//! shared Redis (`user:{id}`, which auth fills on every lookup, 5 minutes), then
//! `GET /api/auth/users/{id}` with a service token ([`crate::JwtKeys::issue_service`], valid
//! one minute), round robin over auth's replicas ([`crate::replicas`]). 404 → 401 `the account of this token no longer exists`. When auth cannot answer
//! (down, timing out after 2 s, any other status) the write goes on — fail open, with a warning
//! and `account_checks_unanswered_total` — so that payments and profile keep taking writes
//! while auth is down, as they do while Redis or the broker is; the token is still a validly
//! signed, unexpired, not revoked one.
//!
//! Reads are not checked: a token of a user that does not exist sees only what belongs to that
//! id, which is nothing.

use std::time::Duration;

use prometheus::{IntCounter, Opts};
use redis::{aio::ConnectionManager, AsyncCommands};

use crate::{auth::AuthUser, error::ApiError, jwt::JwtKeys, metrics::Metrics, replicas::Replicas};

/// How long a call to auth may take before the check gives up (and the write goes on).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The account check of one service. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    service: &'static str,
    auth: Replicas,
    keys: JwtKeys,
    redis: Option<ConnectionManager>,
    http: reqwest::Client,
    unanswered: IntCounter,
}

/// What auth said about a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Exists,
    Unknown,
    /// Auth could not answer (the check fails open).
    Unanswered,
}

impl Accounts {
    /// The check of `service` against the auth service's replicas (`AUTH_SERVICE_URL`),
    /// reading auth's user cache on `redis` first when given.
    pub fn new(
        service: &'static str,
        auth: Replicas,
        keys: JwtKeys,
        redis: Option<ConnectionManager>,
        metrics: &Metrics,
    ) -> Self {
        let unanswered = IntCounter::with_opts(Opts::new(
            "account_checks_unanswered_total",
            "account checks the auth service did not answer (the write went on)",
        ))
        .expect("valid metric");
        metrics.register(Box::new(unanswered.clone()));
        let http = reqwest::Client::builder().timeout(LOOKUP_TIMEOUT).build().expect("a plain http client builds");
        Self { service, auth, keys, redis, http, unanswered }
    }

    /// What auth knows of `user_id`.
    pub async fn lookup(&self, user_id: &str) -> Lookup {
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let key = format!("user:{user_id}");
            if let Ok(true) = crate::revocation::within_budget(conn.exists::<_, bool>(key)).await {
                return Lookup::Exists;
            }
        }
        let token = match self.keys.issue_service(self.service, Duration::from_secs(60)) {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a service token for the account check");
                return self.unanswered();
            }
        };
        let path = format!("/api/auth/users/{}", percent_encode(user_id));
        match self.auth.get(&self.http, &path, |r| r.bearer_auth(&token)).await {
            Ok(res) if res.status().is_success() => Lookup::Exists,
            Ok(res) if res.status() == reqwest::StatusCode::NOT_FOUND => Lookup::Unknown,
            Ok(res) => {
                tracing::warn!(status = %res.status(), "the auth service refused the account check; letting the write go on");
                self.unanswered()
            }
            Err(e) => {
                tracing::warn!(error = %e, "the auth service did not answer the account check; letting the write go on");
                self.unanswered()
            }
        }
    }

    fn unanswered(&self) -> Lookup {
        self.unanswered.inc();
        Lookup::Unanswered
    }

    /// 401 when auth says the caller's account does not exist; see the module doc.
    pub async fn require(&self, user: &AuthUser) -> Result<(), ApiError> {
        match self.lookup(user.id()).await {
            Lookup::Unknown => {
                tracing::info!(user_id = user.id(), "write refused: the token's account does not exist");
                Err(ApiError::Unauthorized("the account of this token no longer exists".into()))
            }
            Lookup::Exists | Lookup::Unanswered => Ok(()),
        }
    }
}

/// `id` as one path segment (ids are UUIDs; anything else is escaped, never a new path).
fn percent_encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{extract::Path, http::StatusCode, routing::get, Router};

    use super::*;
    use crate::auth::Caller;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    /// A stand-in for auth's `GET /api/auth/users/{id}`: `known` exists, anything else is 404;
    /// records who called.
    async fn fake_auth(seen: Arc<Mutex<Vec<String>>>) -> String {
        let keys = JwtKeys::new(SECRET);
        let app = Router::new()
            .route(
                "/api/auth/users/{id}",
                get(move |caller: Caller, Path(id): Path<String>| {
                    let seen = seen.clone();
                    async move {
                        if let Caller::Service(name) = caller {
                            seen.lock().unwrap().push(name);
                        }
                        if id == "known" {
                            StatusCode::OK
                        } else {
                            StatusCode::NOT_FOUND
                        }
                    }
                }),
            )
            .with_state(keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    #[tokio::test]
    async fn auth_is_asked_with_a_service_token_and_an_unknown_user_is_refused() {
        let seen = Arc::default();
        let url = fake_auth(Arc::clone(&seen)).await;
        let keys = JwtKeys::new(SECRET);
        let accounts = Accounts::new("payments", url.into(), keys.clone(), None, &Metrics::new("kit-test"));
        assert_eq!(accounts.lookup("known").await, Lookup::Exists);
        assert_eq!(accounts.lookup("ghost").await, Lookup::Unknown);
        assert_eq!(seen.lock().unwrap().as_slice(), ["payments", "payments"], "called as the service");
        let (token, claims) = keys.issue("ghost", crate::Role::Customer, Duration::from_secs(60), None).unwrap();
        assert!(!token.is_empty());
        let err = accounts.require(&AuthUser(claims)).await.unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(ref m) if m.contains("no longer exists")), "{err:?}");
    }

    #[tokio::test]
    async fn while_auth_does_not_answer_the_write_goes_on_and_is_counted() {
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let metrics = Metrics::new("kit-test");
        let keys = JwtKeys::new(SECRET);
        let accounts =
            Accounts::new("payments", format!("http://127.0.0.1:{port}").into(), keys.clone(), None, &metrics);
        let (_, claims) = keys.issue("anyone", crate::Role::Customer, Duration::from_secs(60), None).unwrap();
        assert!(accounts.require(&AuthUser(claims)).await.is_ok(), "fail open");
        assert!(
            metrics.render().contains("account_checks_unanswered_total{service=\"kit-test\"} 1"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn an_id_stays_one_path_segment() {
        assert_eq!(percent_encode("a1-b2"), "a1-b2");
        assert_eq!(percent_encode("../admin?x"), "..%2Fadmin%3Fx");
    }
}
