//! The denylist of ended sessions: what makes logout end an access token before it expires.
//!
//! Access tokens stay stateless JWTs, but each one auth issues carries `sid`, the session
//! (refresh-token family) it belongs to. Whenever auth ends sessions (logout, a device revoked,
//! logout-others, a refresh token reused and its family revoked) it writes
//! `session-revoked:<sid>` to Redis, after its commit, living as long as an access token can
//! (its lifetime plus the leeway); every service's extractor ([`crate::auth::AuthUser`], through
//! [`crate::JwtKeys::authenticate`]) looks the `sid` of each token up there: one `EXISTS` per
//! authenticated request on the shared Redis, so every replica of every service sees a logout
//! at once.
//!
//! # While Redis is down: fail open
//! A check Redis cannot answer accepts the token, with a warning and
//! `access_token_revocation_unchecked_total{op="check"}`; a write that fails is logged as an
//! error and counted (`op="revoke"`), and the refresh tokens are revoked in the database all the
//! same. Refusing every token instead would log every user of every service out for the length
//! of a Redis outage, when Redis is otherwise a cache the platform runs without. The cost is
//! bounded: an access token lives 15 minutes, and the session cannot be refreshed once revoked.
//! A service that found Redis unreachable at start runs without the denylist until restarted
//! (it says so at start-up). Tokens without `sid` (issued before sessions were tracked) are
//! never denied; they expire within 15 minutes of the upgrade.

use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use redis::{aio::ConnectionManager, AsyncCommands};

/// The longest a denylist lookup or write waits for Redis before giving up (fail open): a
/// Redis that hangs (or a client reconnecting) must not hold every authenticated request.
pub const REDIS_BUDGET: Duration = Duration::from_millis(300);

/// `op` bounded by [`REDIS_BUDGET`], a timeout reported like a Redis error.
pub async fn within_budget<T>(op: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(REDIS_BUDGET, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", REDIS_BUDGET.as_millis())),
    }
}

/// The Redis key of an ended session.
pub fn key(session_id: &str) -> String {
    format!("session-revoked:{session_id}")
}

/// The denylist on the shared Redis. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    conn: ConnectionManager,
    unchecked: IntCounterVec,
}

impl Revocations {
    /// The denylist on `conn`, counting what it could not check in `registry` (a service's
    /// [`crate::metrics::Metrics::registry`], the gateway's own).
    pub fn new(conn: ConnectionManager, registry: &prometheus::Registry) -> Self {
        let unchecked = IntCounterVec::new(
            Opts::new(
                "access_token_revocation_unchecked_total",
                "session denylist lookups (op=check, token accepted) or writes (op=revoke) Redis did not answer",
            ),
            &["op"],
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(unchecked.clone())) {
            tracing::debug!(error = %e, "metric not registered");
        }
        Self { conn, unchecked }
    }

    /// The denylist on `redis` (a service's connection, [`crate::startup::Dependencies::redis`]);
    /// `None`, with a warning, when Redis was unreachable at start.
    pub fn for_redis(redis: Option<ConnectionManager>, registry: &prometheus::Registry) -> Option<Self> {
        if redis.is_none() {
            tracing::warn!("redis unreachable at start: access tokens of ended sessions are accepted until they expire (no session denylist until restarted)");
        }
        redis.map(|conn| Self::new(conn, registry))
    }

    /// Whether session `session_id` was ended; `false` (accepted) when Redis does not answer.
    pub async fn is_revoked(&self, session_id: &str) -> bool {
        let mut conn = self.conn.clone();
        match within_budget(conn.exists::<_, bool>(key(session_id))).await {
            Ok(revoked) => revoked,
            Err(e) => {
                self.unchecked.with_label_values(&["check"]).inc();
                tracing::warn!(error = %e, "redis cannot answer the session denylist; accepting the access token (fail open)");
                false
            }
        }
    }

    /// Ends `session_ids` for `ttl` (the longest an access token of theirs can still be
    /// valid). Returns whether Redis stored them; a failure is logged and counted.
    pub async fn revoke(&self, session_ids: &[String], ttl: Duration) -> bool {
        if session_ids.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for sid in session_ids {
            pipe.set_ex(key(sid), 1, ttl.as_secs().max(1)).ignore();
        }
        let mut conn = self.conn.clone();
        match within_budget(pipe.query_async::<()>(&mut conn)).await {
            Ok(()) => true,
            Err(e) => {
                self.unchecked.with_label_values(&["revoke"]).inc();
                tracing::error!(error = %e, sessions = session_ids.len(), "cannot write the session denylist; the access tokens of these sessions stay valid until they expire");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn revocations() -> (Revocations, crate::metrics::Metrics) {
        let url = mfe_core::env::get("REDIS_URL");
        let conn = crate::cache::connect_redis(&url).await.unwrap_or_else(|e| {
            panic!("redis at {url} unreachable ({e}) — start the test stack: `mfe infra start` with test.env loaded")
        });
        let metrics = crate::metrics::Metrics::new("kit-test");
        (Revocations::new(conn, metrics.registry()), metrics)
    }

    #[tokio::test]
    async fn a_revoked_session_is_denied_for_the_ttl_and_others_are_not() {
        let (revocations, _) = revocations().await;
        let (ended, other) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
        assert!(!revocations.is_revoked(&ended).await);
        assert!(revocations.revoke(std::slice::from_ref(&ended), Duration::from_secs(30)).await);
        assert!(revocations.is_revoked(&ended).await);
        assert!(!revocations.is_revoked(&other).await);
        let mut conn = revocations.conn.clone();
        let ttl: i64 = redis::cmd("TTL").arg(key(&ended)).query_async(&mut conn).await.unwrap();
        assert!((25..=30).contains(&ttl), "lives as long as an access token can, got {ttl}");
    }

    #[tokio::test]
    async fn authenticate_refuses_a_token_of_an_ended_session_and_verify_does_not_look() {
        let (revocations, _) = revocations().await;
        let keys = crate::JwtKeys::new("a-test-secret-that-is-long-enough-for-hs256")
            .with_revocations(Some(revocations.clone()));
        let sid = uuid::Uuid::new_v4().to_string();
        let (token, _) =
            keys.issue_for_session("u1", crate::Role::Customer, Duration::from_secs(60), None, &sid).unwrap();
        assert!(keys.authenticate(&token).await.is_ok());
        revocations.revoke(std::slice::from_ref(&sid), Duration::from_secs(30)).await;
        assert_eq!(keys.authenticate(&token).await, Err(crate::jwt::JwtError::Revoked));
        assert!(keys.verify(&token).is_ok(), "verify checks the signature only");
    }
}
