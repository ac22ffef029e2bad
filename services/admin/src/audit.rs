//! The audit log: one `audit_logs` row per event of the platform, written by consuming every
//! event (`#`) idempotently, and the filtered, paginated read of it.
//!
//! Every row written is announced as `admin.audit.created` (the admin dashboard's live feed,
//! `admin:audit-created` on the admins' sockets) through the outbox, in the row's own
//! transaction ([`record`]): a row and its announcement are never split. The announcement is
//! itself an event the audit consumer receives, and skips: auditing the audit trail's own
//! announcements would only echo them, and each echo would be announced again, forever.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::{idempotency, outbox, service_link::ServiceLink, types, Envelope, Handler, HandlerError};
use serde::Serialize;
use sqlx::{postgres::PgRow, PgConnection, PgPool, Row};

use mfe_kit::metrics::Metrics;

/// The consumer name recorded in `processed_events` (and on dead-lettered messages).
pub const CONSUMER: &str = "admin";

/// One row of `audit_logs` as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditLog {
    pub id: String,
    pub user_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub details: Option<serde_json::Value>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl AuditLog {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            action: row.try_get("action")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            details: row.try_get("details")?,
            ip_address: row.try_get("ip_address")?,
            user_agent: row.try_get("user_agent")?,
            created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
        })
    }

    /// The audit row of an event: id = event id (so an event is audited once whoever writes it
    /// first), action = event type, resource = the middle part of the type and its id in `data`,
    /// user = who acted (`userId`, `senderId` or `updatedBy`), details = `data`.
    pub fn of_event(env: &Envelope) -> Self {
        let data = &env.data;
        let text = |key: &str| data.get(key).and_then(|v| v.as_str()).map(String::from);
        let resource_type = env.event_type.split('.').nth(1).map(String::from);
        let resource_id = resource_type
            .as_deref()
            .and_then(|r| text(&format!("{r}Id")))
            .or_else(|| text("id"))
            .or_else(|| text("key"))
            .or_else(|| text("resourceId"));
        Self {
            id: env.id.to_string(),
            user_id: text("userId").or_else(|| text("senderId")).or_else(|| text("updatedBy")),
            action: env.event_type.clone(),
            resource_type,
            resource_id,
            details: Some(data.clone()),
            ip_address: text("ipAddress"),
            user_agent: text("userAgent"),
            created_at: env.timestamp,
        }
    }
}

/// Inserts `log` unless a row with its id exists; returns whether it was written.
pub async fn insert(conn: &mut PgConnection, log: &AuditLog) -> Result<bool, sqlx::Error> {
    Ok(insert_returning_time(conn, log).await?.is_some())
}

/// The insert of [`insert`]; `Some(created_at as stored)` (millisecond precision, rounded by
/// PostgreSQL) when it wrote the row.
async fn insert_returning_time(conn: &mut PgConnection, log: &AuditLog) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let stored: Option<NaiveDateTime> = sqlx::query_scalar(
        "INSERT INTO audit_logs (id, user_id, action, resource_type, resource_id, details, ip_address, user_agent, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING created_at",
    )
    .bind(&log.id)
    .bind(&log.user_id)
    .bind(&log.action)
    .bind(&log.resource_type)
    .bind(&log.resource_id)
    .bind(&log.details)
    .bind(&log.ip_address)
    .bind(&log.user_agent)
    .bind(log.created_at.naive_utc())
    .fetch_optional(conn)
    .await?;
    Ok(stored.map(|t| t.and_utc()))
}

/// The `source` of the events this service emits.
pub const EVENT_SOURCE: &str = "admin-service";

/// Inserts `log` (unless a row with its id exists) and, when it wrote one, puts its
/// `admin.audit.created` announcement in the outbox, in the caller's transaction. Returns
/// whether a row was written; the caller wakes the relay after its commit.
pub async fn record(
    conn: &mut PgConnection,
    log: &AuditLog,
    correlation_id: Option<String>,
) -> Result<bool, sqlx::Error> {
    let Some(created_at) = insert_returning_time(conn, log).await? else { return Ok(false) };
    // The row as `GET /api/admin/audit-logs` shows it, stored time included.
    let row = AuditLog { created_at, ..log.clone() };
    let data = serde_json::to_value(&row).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let env = Envelope::new(types::ADMIN_AUDIT_CREATED, EVENT_SOURCE, data).with_correlation_id(correlation_id);
    outbox::enqueue(conn, &env).await?;
    Ok(true)
}

/// The broker link, set once it exists (it is built from the handler), to wake the relay after
/// a commit that announced a row; until then the relay's own poll picks the rows up.
pub type RelayWake = Arc<OnceLock<ServiceLink>>;

/// Writes the audit row of every consumed event, once per event id.
#[derive(Clone)]
pub struct AuditHandler {
    pub db: PgPool,
    pub metrics: Metrics,
    pub wake: RelayWake,
}

impl Handler for AuditHandler {
    async fn handle(&self, env: Envelope) -> Result<(), HandlerError> {
        // The audit trail's own announcements: see the module docs.
        if env.event_type == types::ADMIN_AUDIT_CREATED {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        if !idempotency::claim(&mut tx, CONSUMER, env.id).await? {
            tracing::debug!(event_id = %env.id, "event already audited; skipping the redelivery");
            return Ok(());
        }
        let announced = record(&mut tx, &AuditLog::of_event(&env), env.correlation_id.clone()).await?;
        tx.commit().await?;
        self.metrics.event_consumed(&env.event_type);
        if announced {
            self.metrics.event_published(types::ADMIN_AUDIT_CREATED);
            if let Some(link) = self.wake.get() {
                link.notify();
            }
        }
        Ok(())
    }
}

/// The filters of `GET /api/admin/audit-logs`; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Where a page starts (newest first); the kit's keyset cursor.
pub use mfe_kit::pagination::Cursor;

/// Up to `limit` rows matching `filter` after `cursor`, newest first, and the next cursor.
pub async fn list(
    pool: &PgPool,
    filter: &AuditFilter,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<AuditLog>, Option<Cursor>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, user_id, action, resource_type, resource_id, details, ip_address, user_agent, created_at \
         FROM audit_logs \
         WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR action = $2) \
           AND ($3::text IS NULL OR resource_type = $3) AND ($4::text IS NULL OR resource_id = $4) \
           AND ($5::timestamp IS NULL OR created_at >= $5) AND ($6::timestamp IS NULL OR created_at <= $6) \
           AND ($7::timestamp IS NULL OR (created_at, id) < ($7, $8)) \
         ORDER BY created_at DESC, id DESC LIMIT $9",
    )
    .bind(&filter.user_id)
    .bind(&filter.action)
    .bind(&filter.resource_type)
    .bind(&filter.resource_id)
    .bind(filter.from.map(|t| t.naive_utc()))
    .bind(filter.to.map(|t| t.naive_utc()))
    .bind(cursor.map(|c| c.created_at))
    .bind(cursor.map(|c| c.id.as_str()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let mut logs = rows.iter().map(AuditLog::from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if logs.len() as i64 > limit {
        logs.truncate(limit as usize);
        logs.last().map(|l| Cursor::after(l.created_at, &l.id))
    } else {
        None
    };
    Ok((logs, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payment_event_is_audited_against_its_payment_and_sender() {
        let env = Envelope::new(
            "payments.payment.created",
            "payments-service",
            json!({"paymentId": "p1", "senderId": "u1", "amount": "5"}),
        );
        let log = AuditLog::of_event(&env);
        assert_eq!(log.id, env.id.to_string());
        assert_eq!(log.action, "payments.payment.created");
        assert_eq!((log.resource_type.as_deref(), log.resource_id.as_deref()), (Some("payment"), Some("p1")));
        assert_eq!(log.user_id.as_deref(), Some("u1"));
        assert_eq!(log.details, Some(env.data.clone()));
    }

    #[test]
    fn a_config_event_is_audited_against_its_key_and_editor() {
        let env =
            Envelope::new("admin.config.updated", "admin-service", json!({"key": "fees.rate", "updatedBy": "a1"}));
        let log = AuditLog::of_event(&env);
        assert_eq!((log.resource_type.as_deref(), log.resource_id.as_deref()), (Some("config"), Some("fees.rate")));
        assert_eq!(log.user_id.as_deref(), Some("a1"));
    }
}
