//! The Redis cache of payment lists, invalidated by tag.
//!
//! A list page is cached under a key naming the viewer, the cursor, the limit *and the current
//! version of the viewer's tag* (`user:<id>`, or `all` for admins). Every write bumps the tags of
//! the sender, the recipient and `all` (`INCR`), so every page cached before the write is never
//! read again and expires with its TTL. That invalidates all pages of a user with one command,
//! without scanning keys. Redis is a cache only: any failure is a miss, never an error.

use std::time::Duration;

use mfe_kit::{cache::Cache, metrics::Metrics};
use redis::{aio::ConnectionManager, AsyncCommands};
use serde::{Deserialize, Serialize};

use crate::store::{Payment, Scope};

/// The name of the cache in keys and hit/miss metrics.
pub const CACHE_NAME: &str = "payments-list";

/// One cached answer of `GET /api/payments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPage {
    pub data: Vec<Payment>,
    pub next_cursor: Option<String>,
}

#[derive(Clone)]
pub struct ListCache {
    pages: Cache,
    conn: ConnectionManager,
    /// A per-process prefix for the tag keys, so apps spawned side by side in tests (each with
    /// its own database) never see each other's versions or pages.
    namespace: String,
}

fn tag(scope: &Scope) -> String {
    match scope {
        Scope::User(id) => format!("user:{id}"),
        Scope::All => "all".to_string(),
    }
}

impl ListCache {
    pub fn new(conn: ConnectionManager, ttl: Duration, metrics: Metrics, namespace: impl Into<String>) -> Self {
        Self { pages: Cache::new(CACHE_NAME, conn.clone(), ttl, metrics), conn, namespace: namespace.into() }
    }

    fn version_key(&self, tag: &str) -> String {
        format!("{CACHE_NAME}:{}:version:{tag}", self.namespace)
    }

    async fn version(&self, scope: &Scope) -> Option<u64> {
        let mut conn = self.conn.clone();
        match conn.get::<_, Option<u64>>(self.version_key(&tag(scope))).await {
            Ok(v) => Some(v.unwrap_or(0)),
            Err(e) => {
                tracing::warn!(error = %e, "redis get of a list cache version failed; not caching");
                None
            }
        }
    }

    /// The key of one page at the tag's current version; `None` when Redis is unreachable (the
    /// request then neither reads nor fills the cache, so a stale page cannot be written).
    pub async fn page_key(&self, scope: &Scope, cursor: Option<&str>, limit: i64) -> Option<String> {
        let version = self.version(scope).await?;
        Some(format!("{}:{}:v{version}:c{}:l{limit}", self.namespace, tag(scope), cursor.unwrap_or("-")))
    }

    pub async fn get(&self, key: &str) -> Option<PaymentPage> {
        self.pages.get(key).await
    }

    pub async fn put(&self, key: &str, page: &PaymentPage) {
        self.pages.set(key, page).await
    }

    /// Makes every cached page showing `payment` stale: its sender's, its recipient's and the
    /// admins' `all` list.
    pub async fn invalidate(&self, payment: &Payment) {
        let mut tags = vec![tag(&Scope::User(payment.sender_id.clone())), tag(&Scope::All)];
        if let Some(r) = &payment.recipient_id {
            tags.push(tag(&Scope::User(r.clone())));
        }
        let mut pipe = redis::pipe();
        for t in &tags {
            pipe.incr(self.version_key(t), 1).ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            // The pages then live until their TTL: say so, since lists may lag until then.
            tracing::error!(error = %e, payment_id = %payment.id, "cannot invalidate cached payment lists; they may be stale until their ttl");
        }
    }
}
