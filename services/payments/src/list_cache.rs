//! The Redis cache of payment lists, invalidated by tag (the kit's tagged entries,
//! [`mfe_kit::cache::Cache::get_tagged`]).
//!
//! A list page is cached under the viewer's tag (`user:<id>`, or `all` for admins) and a key
//! naming the cursor and the limit. Every write bumps the tags of the sender, the recipient and
//! `all`, so every page showing the payment is stale at once. A hit is one Redis round trip and
//! sends the stored JSON as it is: a page is serialised once, when it is filled. Redis is a cache
//! only: any failure is a miss, never an error.

use std::time::Duration;

use mfe_kit::{
    cache::{Cache, TaggedLookup},
    metrics::Metrics,
};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::store::{Payment, Scope};

/// The name of the cache in keys and hit/miss metrics.
pub const CACHE_NAME: &str = "payments-list";

/// One answer of `GET /api/payments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPage {
    pub data: Vec<Payment>,
    pub next_cursor: Option<String>,
}

/// Where one page lives in the cache, and the tag version read before the database was.
#[derive(Debug, Clone)]
pub struct PageSlot {
    tag: String,
    key: String,
    version: u64,
}

#[derive(Clone)]
pub struct ListCache {
    pages: Cache,
    /// A per-database prefix of the tags, so apps spawned side by side in tests (each with its
    /// own database) never see each other's pages.
    namespace: String,
}

impl ListCache {
    pub fn new(conn: ConnectionManager, ttl: Duration, metrics: Metrics, namespace: impl Into<String>) -> Self {
        Self { pages: Cache::new(CACHE_NAME, conn, ttl, metrics), namespace: namespace.into() }
    }

    fn tag(&self, scope: &Scope) -> String {
        match scope {
            Scope::User(id) => format!("{}:user:{id}", self.namespace),
            Scope::All => format!("{}:all", self.namespace),
        }
    }

    /// The cached JSON of a page (`Ok`), or the slot to fill after reading the database (`Err`);
    /// `Err(None)` when Redis is unreachable (the request then neither reads nor fills the
    /// cache, so a stale page cannot be written).
    pub async fn get(&self, scope: &Scope, cursor: Option<&str>, limit: i64) -> Result<String, Option<PageSlot>> {
        let tag = self.tag(scope);
        let key = format!("c{}:l{limit}", cursor.unwrap_or("-"));
        match self.pages.get_tagged(&tag, &key).await {
            Some(TaggedLookup { body: Some(body), .. }) => Ok(body),
            Some(TaggedLookup { version, body: None }) => Err(Some(PageSlot { tag, key, version })),
            None => Err(None),
        }
    }

    /// Stores the JSON of a page read after [`ListCache::get`] gave `slot`.
    pub async fn put(&self, slot: &PageSlot, json: &str) {
        self.pages.set_tagged(&slot.tag, &slot.key, slot.version, json).await
    }

    /// Makes every cached page showing `payment` stale: its sender's, its recipient's and the
    /// admins' `all` list (one round trip).
    pub async fn invalidate(&self, payment: &Payment) {
        let mut tags = vec![self.tag(&Scope::User(payment.sender_id.clone())), self.tag(&Scope::All)];
        if let Some(r) = &payment.recipient_id {
            tags.push(self.tag(&Scope::User(r.clone())));
        }
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        self.pages.invalidate_tags(&tags).await
    }
}
