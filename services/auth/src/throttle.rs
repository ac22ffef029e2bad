//! Sign-in throttling in the service itself (nginx's rate limit can be bypassed by calling a
//! replica directly): after `AUTH_SIGNIN_MAX_FAILURES` failed sign-ins for one email, or
//! `AUTH_SIGNIN_MAX_FAILURES_PER_IP` from one client address, within
//! `AUTH_SIGNIN_WINDOW_SECS`, further sign-ins for that email (or from that address) answer
//! 429 with `Retry-After` until the window that started with the first failure ends. A
//! throttled attempt does not verify the password (no argon2 work, no oracle). A successful
//! sign-in clears the email's count (not the address's).
//!
//! Counters live in Redis (`signin-failures:<db>:email:<sha256>` / `…:ip:<addr>`, the email
//! hashed so Redis holds no addresses), so every replica shares them. While Redis does not
//! answer, each replica counts in its own memory with the same limits: the limit is then per
//! replica (N replicas allow N times as many attempts), which is still a limit, where failing
//! open would remove it and failing closed would lock everybody out.
//!
//! The per-email limit lets anyone lock an account's sign-in for one window by failing on
//! purpose; the window is short (15 minutes by default) and a signed-in session is not
//! affected (refresh keeps working).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mfe_kit::{config::ConfigError, revocation::within_budget};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

/// The limits: failures per email and per client address within the window; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_email: u32,
    pub per_ip: u32,
    pub window: Duration,
}

impl Limits {
    /// `AUTH_SIGNIN_MAX_FAILURES` (10), `AUTH_SIGNIN_MAX_FAILURES_PER_IP` (100),
    /// `AUTH_SIGNIN_WINDOW_SECS` (900, at least 1).
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            per_email: mfe_core::env::parse_env("AUTH_SIGNIN_MAX_FAILURES", 10u32)?,
            per_ip: mfe_core::env::parse_env("AUTH_SIGNIN_MAX_FAILURES_PER_IP", 100u32)?,
            window: mfe_core::env::parse_env_secs("AUTH_SIGNIN_WINDOW_SECS", Duration::from_secs(900))?
                .max(Duration::from_secs(1)),
        })
    }
}

/// The sign-in failure counters of one auth database (shared by its replicas).
#[derive(Clone)]
pub struct Throttle {
    limits: Limits,
    redis: Option<ConnectionManager>,
    /// Keys are prefixed with the database name, so services on different databases (tests)
    /// never share counters.
    namespace: String,
    /// The fallback while Redis does not answer: key → (failures, window end).
    local: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

/// The most keys the in-memory fallback holds; beyond, expired ones are dropped first, then
/// all (a flood of distinct emails must not grow memory without bound).
const LOCAL_MAX_KEYS: usize = 100_000;

impl Throttle {
    pub fn new(limits: Limits, redis: Option<ConnectionManager>, namespace: &str) -> Self {
        Self { limits, redis, namespace: namespace.to_string(), local: Arc::default() }
    }

    /// The counter keys of a sign-in for `email` (normalised) from `ip`, with their limits.
    fn keys(&self, email: &str, ip: Option<&str>) -> Vec<(String, u32)> {
        let mut keys = Vec::with_capacity(2);
        if self.limits.per_email > 0 {
            let hash = hex::encode(Sha256::digest(email.as_bytes()));
            keys.push((format!("signin-failures:{}:email:{hash}", self.namespace), self.limits.per_email));
        }
        if let (Some(ip), true) = (ip, self.limits.per_ip > 0) {
            keys.push((format!("signin-failures:{}:ip:{ip}", self.namespace), self.limits.per_ip));
        }
        keys
    }

    /// How long a sign-in for `email` from `ip` must wait, or `None` when it may go on.
    pub async fn retry_after(&self, email: &str, ip: Option<&str>) -> Option<Duration> {
        let keys = self.keys(email, ip);
        if keys.is_empty() {
            return None;
        }
        if let Some(conn) = &self.redis {
            let mut pipe = redis::pipe();
            for (key, _) in &keys {
                pipe.get(key).cmd("PTTL").arg(key);
            }
            let mut conn = conn.clone();
            match within_budget(pipe.query_async::<Vec<(Option<u32>, i64)>>(&mut conn)).await {
                Ok(counts) => {
                    return keys
                        .iter()
                        .zip(counts)
                        .filter(|((_, limit), (count, _))| count.unwrap_or(0) >= *limit)
                        .map(|(_, (_, pttl))| Duration::from_millis(pttl.max(1000) as u64))
                        .max();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis cannot answer the sign-in counters; counting in this replica")
                }
            }
        }
        let now = Instant::now();
        let local = self.local.lock().expect("throttle lock");
        keys.iter()
            .filter_map(|(key, limit)| match local.get(key) {
                Some((count, end)) if *end > now && count >= limit => Some(*end - now),
                _ => None,
            })
            .max()
    }

    /// Counts a failed sign-in for `email` from `ip`.
    pub async fn failed(&self, email: &str, ip: Option<&str>) {
        let keys = self.keys(email, ip);
        if keys.is_empty() {
            return;
        }
        if let Some(conn) = &self.redis {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (key, _) in &keys {
                // The window starts with the first failure; INCR keeps the expiry.
                pipe.cmd("SET").arg(key).arg(0).arg("EX").arg(self.limits.window.as_secs().max(1)).arg("NX").ignore();
                pipe.incr(key, 1).ignore();
            }
            let mut conn = conn.clone();
            match within_budget(pipe.query_async::<()>(&mut conn)).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "redis cannot count a failed sign-in; counting in this replica"),
            }
        }
        let now = Instant::now();
        let mut local = self.local.lock().expect("throttle lock");
        if local.len() >= LOCAL_MAX_KEYS {
            local.retain(|_, (_, end)| *end > now);
            if local.len() >= LOCAL_MAX_KEYS {
                local.clear();
            }
        }
        for (key, _) in keys {
            let entry = local.entry(key).or_insert((0, now + self.limits.window));
            if entry.1 <= now {
                *entry = (0, now + self.limits.window);
            }
            entry.0 += 1;
        }
    }

    /// Clears the failures of `email` after a successful sign-in.
    pub async fn succeeded(&self, email: &str) {
        let keys = self.keys(email, None);
        let Some((key, _)) = keys.into_iter().next().filter(|_| self.limits.per_email > 0) else { return };
        if let Some(conn) = &self.redis {
            let mut conn = conn.clone();
            if let Err(e) = within_budget(redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn)).await {
                tracing::warn!(error = %e, "redis cannot clear the sign-in failures of an email");
            }
        }
        self.local.lock().expect("throttle lock").remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_email: u32, per_ip: u32) -> Limits {
        Limits { per_email, per_ip, window: Duration::from_secs(60) }
    }

    #[tokio::test]
    async fn without_redis_each_replica_counts_per_email_and_per_address() {
        let throttle = Throttle::new(limits(3, 5), None, "unit");
        for _ in 0..2 {
            throttle.failed("ann@example.com", Some("10.0.0.1")).await;
        }
        assert_eq!(throttle.retry_after("ann@example.com", Some("10.0.0.1")).await, None, "2 of 3");
        throttle.failed("ann@example.com", Some("10.0.0.1")).await;
        let wait = throttle.retry_after("ann@example.com", Some("10.0.0.9")).await.expect("email over its limit");
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60), "{wait:?}");
        assert_eq!(throttle.retry_after("bob@example.com", Some("10.0.0.9")).await, None);
        // Two more failures from 10.0.0.1 on other emails reach the address's limit of 5.
        throttle.failed("c@example.com", Some("10.0.0.1")).await;
        throttle.failed("d@example.com", Some("10.0.0.1")).await;
        assert!(throttle.retry_after("bob@example.com", Some("10.0.0.1")).await.is_some(), "address over its limit");
        throttle.succeeded("ann@example.com").await;
        assert_eq!(throttle.retry_after("ann@example.com", Some("10.0.0.9")).await, None, "cleared by a success");
    }

    #[tokio::test]
    async fn zero_turns_a_limit_off() {
        let throttle = Throttle::new(limits(0, 0), None, "unit");
        for _ in 0..20 {
            throttle.failed("ann@example.com", Some("10.0.0.1")).await;
        }
        assert_eq!(throttle.retry_after("ann@example.com", Some("10.0.0.1")).await, None);
    }
}
