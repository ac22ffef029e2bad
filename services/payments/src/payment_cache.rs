//! The Redis cache of single payments: `payment:{id}` for one minute, the seed's key and
//! lifetime (seed §4.2 cache key patterns, SPEC §13).
//!
//! A payment changes while it is read (its status moves under the provider and the admins), so
//! the entries are the kit's versioned records ([`mfe_kit::cache::Cache::put_versioned`]), the
//! version being the payment's `updated_at` in milliseconds, which every write moves strictly
//! forward ([`crate::store::change_status`]):
//! - a read that misses fills the entry with what it read;
//! - every write of the payment, after its commit and before it answers, puts the new record
//!   (write-through rather than a delete, which would let a reader that read before the commit
//!   fill the old record back for a whole minute);
//! - an older record never replaces a newer one, so of two puts arriving out of order the
//!   newer wins.
//!
//! A read after a write's answer therefore never sees the record from before it. Redis is a
//! cache only: a failed lookup is a miss, a failed put is logged and the entry (if any) lives
//! out its minute.

use std::time::Duration;

use mfe_kit::{cache::Cache, metrics::Metrics};
use redis::aio::ConnectionManager;

use crate::store::Payment;

/// The name of the cache: its keys are `payment:{id}`, its counters `cache="payment"`.
pub const CACHE_NAME: &str = "payment";

/// How long an entry lives (the seed's 1 min).
pub const PAYMENT_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct PaymentCache {
    entries: Cache,
}

impl PaymentCache {
    pub fn new(conn: ConnectionManager, metrics: Metrics) -> Self {
        Self { entries: Cache::new(CACHE_NAME, conn, PAYMENT_CACHE_TTL, metrics) }
    }

    /// The cached payment `id` (a hit or a miss is counted).
    pub async fn get(&self, id: &str) -> Option<Payment> {
        self.entries.get_versioned(id).await
    }

    /// Stores `payment` unless a newer version of it is cached; after a read's miss and after
    /// every committed write.
    pub async fn put(&self, payment: &Payment) {
        self.entries.put_versioned(&payment.id, payment.updated_at.timestamp_millis(), payment).await;
    }
}
