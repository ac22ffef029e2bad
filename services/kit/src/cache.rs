//! A small Redis cache of JSON values with a TTL. Redis is a cache only: every failure is
//! logged and treated as a miss, so a Redis outage slows requests down but never fails them.

use std::time::Duration;

use redis::{aio::ConnectionManager, AsyncCommands};
use serde::{de::DeserializeOwned, Serialize};

use crate::metrics::Metrics;

/// A named cache (`name` labels the hit/miss counters and prefixes the keys).
#[derive(Clone)]
pub struct Cache {
    name: &'static str,
    conn: ConnectionManager,
    ttl: Duration,
    metrics: Metrics,
}

impl Cache {
    pub fn new(name: &'static str, conn: ConnectionManager, ttl: Duration, metrics: Metrics) -> Self {
        Self { name, conn, ttl, metrics }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}:{key}", self.name)
    }

    /// The cached value of `key`, counting a hit or a miss.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut conn = self.conn.clone();
        let raw: Result<Option<String>, _> = conn.get(self.full_key(key)).await;
        let value = match raw {
            Ok(Some(s)) => serde_json::from_str(&s).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(cache = self.name, error = %e, "redis get failed; treating as a miss");
                None
            }
        };
        match value {
            Some(_) => self.metrics.cache_hit(self.name),
            None => self.metrics.cache_miss(self.name),
        }
        value
    }

    /// Stores `value` under `key` for the cache's TTL.
    pub async fn set<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(json) = serde_json::to_string(value) else { return };
        let mut conn = self.conn.clone();
        let result: Result<(), _> = conn.set_ex(self.full_key(key), json, self.ttl.as_secs().max(1)).await;
        if let Err(e) = result {
            tracing::warn!(cache = self.name, error = %e, "redis set failed");
        }
    }

    /// Removes `key`; called after every write of the cached record.
    pub async fn delete(&self, key: &str) {
        let mut conn = self.conn.clone();
        let result: Result<(), _> = conn.del(self.full_key(key)).await;
        if let Err(e) = result {
            tracing::warn!(cache = self.name, error = %e, "redis delete failed; the entry expires with its ttl");
        }
    }
}

/// Connects to Redis with a connection manager that reconnects on its own. Connection and
/// response timeouts are short, so a stalled Redis costs a request milliseconds, not seconds.
pub async fn connect_redis(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config).await
}
