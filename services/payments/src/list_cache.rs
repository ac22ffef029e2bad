//! The Redis cache of payment lists, invalidated by tag (the kit's tagged entries,
//! [`mfe_kit::cache::Cache::get_tagged`]).
//!
//! A list page is cached under the viewer's tag (`user:<id>`, or `all` for admins) and a key
//! naming the cursor and the limit. Every write bumps the tags of the sender, the recipient and
//! `all`, so every page showing the payment is stale at once; a create does it beside its
//! database write ([`PageWrite`]), so Redis is not one more round trip before the answer. A hit
//! is one Redis round trip and sends the stored JSON as it is: a page is serialised once, when it
//! is filled. Redis is a cache only: any failure is a miss, never an error.

use std::{future::Future, time::Duration};

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
            // A write of this list is in flight: read the database, fill nothing.
            Some(TaggedLookup { writing: true, .. }) => Err(None),
            Some(TaggedLookup { version, body: None, .. }) => Err(Some(PageSlot { tag, key, version })),
            None => Err(None),
        }
    }

    /// Stores the JSON of a page read after [`ListCache::get`] gave `slot`.
    pub async fn put(&self, slot: &PageSlot, json: &str) {
        self.pages.set_tagged(&slot.tag, &slot.key, slot.version, json).await
    }

    /// The tags of every page that can show a payment from `sender` to `recipient`: the
    /// sender's, the recipient's and the admins' `all` list.
    fn tags_of(&self, sender: &str, recipient: Option<&str>) -> Vec<String> {
        let mut tags = vec![self.tag(&Scope::User(sender.to_string())), self.tag(&Scope::All)];
        if let Some(r) = recipient {
            tags.push(self.tag(&Scope::User(r.to_string())));
        }
        tags
    }

    /// Makes every cached page showing `payment` stale, after its write committed (one round
    /// trip).
    pub async fn invalidate(&self, payment: &Payment) {
        let tags = self.tags_of(&payment.sender_id, payment.recipient_id.as_deref());
        self.pages.invalidate_tags(&tags).await
    }

    /// Makes the pages that can show a payment from `sender` to `recipient` stale and
    /// unfillable, for a writer that knows them before writing (a create): run it beside the
    /// database write, and drop the [`PageWrite`] it gives after the commit (see
    /// [`mfe_kit::cache::Cache`]). The tags are taken now, so the future borrows nothing.
    pub fn begin_write(
        &self,
        sender: &str,
        recipient: Option<&str>,
    ) -> impl Future<Output = PageWrite> + Send + 'static {
        let (pages, tags) = (self.pages.clone(), self.tags_of(sender, recipient));
        async move {
            // Made before the begin is sent: a request dropped midway still ends its write.
            let write = PageWrite { pages, tags };
            write.pages.begin_tagged_write(&write.tags).await;
            write
        }
    }
}

/// A write of some list pages in flight; see [`ListCache::begin_write`]. Dropping it ends the
/// write in a task of its own, off the answer's path, also when the request was dropped midway
/// (the client went away).
pub struct PageWrite {
    pages: Cache,
    tags: Vec<String>,
}

impl Drop for PageWrite {
    /// After the write committed or failed: the pages move on and can be filled again.
    fn drop(&mut self) {
        let (pages, tags) = (self.pages.clone(), std::mem::take(&mut self.tags));
        tokio::spawn(async move { pages.end_tagged_write(&tags).await });
    }
}
