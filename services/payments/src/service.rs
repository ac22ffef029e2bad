//! The use cases of the service — create a payment, change its status, read payments and
//! their history — on [`PaymentsService`], which holds everything they touch. The HTTP
//! handlers ([`crate::routes`]) parse, call one of these and map the answer; the payment
//! provider stub ([`crate::psp`]) calls [`PaymentsService::change_status`] like they do.

use std::time::Instant;

use mfe_events::service_link::ServiceLink;
use mfe_kit::{metrics::Metrics, ApiError};
use sqlx::PgPool;

use crate::{
    domain::PaymentStatus,
    list_cache::{ListCache, PaymentPage},
    metrics::BusinessMetrics,
    payment_cache::PaymentCache,
    psp::Psp,
    store::{self, Cursor, NewPayment, Payment, PaymentTransaction, Scope, StatusChangeError},
};

/// The Redis caches of the service: list pages and single payments.
#[derive(Clone)]
pub struct Caches {
    /// List pages, invalidated by per-user tags.
    pub pages: ListCache,
    /// `payment:{id}`, written through on every write.
    pub payments: PaymentCache,
}

/// The payments use cases and what they need; cheap to clone.
#[derive(Clone)]
pub struct PaymentsService {
    pub db: PgPool,
    /// `None` when Redis was unreachable at start: everything is read from the database.
    pub cache: Option<Caches>,
    /// The outbox relay (woken after every write) and the broker connection.
    pub broker: ServiceLink,
    pub metrics: Metrics,
    pub business: BusinessMetrics,
    /// The payment provider stub, when `PSP_AUTO_COMPLETE_MS` is set.
    pub psp: Option<Psp>,
}

impl PaymentsService {
    /// Creates a pending payment with its history row and `payments.payment.created` event,
    /// and hands it to the payment provider stub when there is one.
    pub async fn create(&self, new: NewPayment, correlation_id: String) -> Result<Payment, sqlx::Error> {
        // The list pages showing the payment go stale in Redis while the database writes it, not
        // after: the answer waits for the slower of the two instead of both in turn.
        let begin = self.cache.as_ref().map(|c| c.pages.begin_write(&new.sender_id, new.recipient_id.as_deref()));
        let started = Instant::now();
        let write = async {
            let mut conn = self.db.acquire().await?;
            let acquired = Instant::now();
            let payment = store::create_on(&mut conn, new, Some(correlation_id.clone())).await?;
            Ok::<_, sqlx::Error>((acquired, acquired.elapsed(), payment))
        };
        let invalidate = async {
            let pages = match begin {
                Some(begin) => Some(begin.await),
                None => None,
            };
            (pages, started.elapsed())
        };
        let (written, (pages, cache_time)) = tokio::join!(write, invalidate);
        drop(pages);
        let (acquired, db_time, payment) = written?;
        self.broker.notify();
        self.business.create_phase("acquire", acquired - started);
        self.business.create_phase("db", db_time);
        self.business.create_phase("cache", cache_time);
        self.business.payment_created(
            payment.payment_type.as_str(),
            payment.status.as_str(),
            &payment.currency,
            payment.amount,
        );
        self.metrics.event_published(mfe_events::types::PAYMENTS_PAYMENT_CREATED);
        tracing::info!(payment_id = %payment.id, sender_id = %payment.sender_id, amount = %payment.amount, currency = %payment.currency, "payment created");
        if let Some(psp) = &self.psp {
            psp.start(self.clone(), payment.id.clone(), Some(correlation_id));
        }
        Ok(payment)
    }

    /// Moves a payment to `status` (see [`store::change_status`]) and does the after-write work.
    pub async fn change_status(
        &self,
        id: &str,
        status: PaymentStatus,
        message: Option<&str>,
        psp_transaction_id: Option<&str>,
        correlation_id: Option<String>,
    ) -> Result<Payment, StatusChangeError> {
        let (before, after) =
            store::change_status(&self.db, id, status, message, psp_transaction_id, correlation_id).await?;
        self.after_write(&after).await;
        self.business.status_changed(status.as_str());
        self.metrics.event_published(status.event_type());
        tracing::info!(payment_id = %id, from = %before.status, to = %after.status, "payment status changed");
        Ok(after)
    }

    /// After a committed write of `payment`: stale list pages out and the new record into
    /// `payment:{id}` (both at once), relay woken.
    async fn after_write(&self, payment: &Payment) {
        if let Some(cache) = &self.cache {
            tokio::join!(cache.pages.invalidate(payment), cache.payments.put(payment));
        }
        self.broker.notify();
    }

    /// One page of `scope`'s payments after `cursor` (its text as the client sent it, and
    /// decoded), as the JSON the API answers: from the cache, else from the database (and then
    /// cached). Serialised once: the same text is cached and sent.
    pub async fn list(
        &self,
        scope: &Scope,
        cursor_text: Option<&str>,
        cursor: Option<&Cursor>,
        limit: i64,
    ) -> Result<String, ApiError> {
        let pages = self.cache.as_ref().map(|c| &c.pages);
        let slot = match pages {
            Some(pages) => match pages.get(scope, cursor_text, limit).await {
                Ok(json) => return Ok(json),
                Err(slot) => slot,
            },
            None => None,
        };
        let (data, next) = store::list(&self.db, scope, cursor, limit).await?;
        let page = PaymentPage { data, next_cursor: next.map(|c| c.encode()) };
        let json = serde_json::to_string(&page)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising a payment page: {e}")))?;
        if let (Some(pages), Some(slot)) = (pages, &slot) {
            pages.put(slot, &json).await;
        }
        Ok(json)
    }

    /// The payment `id`, whoever owns it (callers check visibility), read through
    /// `payment:{id}` (a missing payment is not cached: a create needs no invalidation).
    pub async fn get(&self, id: &str) -> Result<Option<Payment>, sqlx::Error> {
        let records = self.cache.as_ref().map(|c| &c.payments);
        if let Some(records) = records {
            if let Some(payment) = records.get(id).await {
                return Ok(Some(payment));
            }
        }
        let payment = store::get(&self.db, id).await?;
        if let (Some(records), Some(payment)) = (records, &payment) {
            records.put(payment).await;
        }
        Ok(payment)
    }

    /// The status history of payment `id`, oldest first.
    pub async fn transactions(&self, id: &str) -> Result<Vec<PaymentTransaction>, sqlx::Error> {
        store::transactions(&self.db, id).await
    }
}
