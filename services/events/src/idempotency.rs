//! Consumers process an event id once: [`claim`] records it in the handler's own transaction.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records that `consumer` handles `event_id`, inside the caller's transaction. `false` means
/// it was already processed (a redelivery): skip the work and let the handler return `Ok`.
/// When the transaction rolls back, the claim goes with it, so a failed attempt can retry.
pub async fn claim(conn: &mut PgConnection, consumer: &str, event_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// True when `consumer` already processed `event_id` (read-only; use [`claim`] to process).
pub async fn is_processed(conn: &mut PgConnection, consumer: &str, event_id: Uuid) -> Result<bool, sqlx::Error> {
    let row: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2")
        .bind(consumer)
        .bind(event_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}
