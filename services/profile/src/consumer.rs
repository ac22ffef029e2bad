//! `auth.user.registered` → an empty profile. The event id is claimed in `processed_events` in
//! the same transaction as the insert, so a redelivered event changes nothing.

use mfe_events::{idempotency, Envelope, Handler, HandlerError};
use mfe_kit::{cache::Cache, metrics::Metrics};
use sqlx::PgPool;

use crate::CONSUMER;

/// The handler of `auth.user.registered`.
#[derive(Clone)]
pub struct UserRegistered {
    pub db: PgPool,
    /// The profile cache; `None` without Redis.
    pub cache: Option<Cache>,
    pub metrics: Metrics,
}

impl Handler for UserRegistered {
    async fn handle(&self, env: Envelope) -> Result<(), HandlerError> {
        let Some(user_id) = env.data.get("userId").and_then(|v| v.as_str()).map(str::to_string) else {
            // Retrying cannot fix a malformed event: straight to the dead-letter queue.
            return Err(HandlerError::fatal(format!("event {} has no data.userId", env.id)));
        };
        let mut tx = self.db.begin().await?;
        if !idempotency::claim(&mut tx, CONSUMER, env.id).await? {
            tracing::debug!(event_id = %env.id, "auth.user.registered already processed");
            return Ok(());
        }
        let now = chrono::Utc::now().naive_utc();
        sqlx::query(
            "INSERT INTO user_profiles (id, user_id, preferences, created_at, updated_at)
             VALUES ($1, $2, '{}'::jsonb, $3, $3) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(cache) = &self.cache {
            cache.delete(&user_id).await;
        }
        self.metrics.event_consumed(&env.event_type);
        tracing::info!(user_id, event_id = %env.id, correlation_id = ?env.correlation_id, "profile created");
        Ok(())
    }
}
