//! System configuration (`system_config`): read, and set with its `admin.config.updated` event
//! and its audit row in the same transaction.

use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::{outbox, types, Envelope};
use serde::Serialize;
use sqlx::{postgres::PgRow, PgPool, Row};

use crate::audit::{self, AuditLog};

pub use crate::audit::EVENT_SOURCE;

/// One configuration entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigEntry {
    pub key: String,
    pub value: serde_json::Value,
    pub description: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Option<String>,
}

impl ConfigEntry {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            key: row.try_get("key")?,
            value: row.try_get("value")?,
            description: row.try_get("description")?,
            updated_at: row.try_get::<NaiveDateTime, _>("updated_at")?.and_utc(),
            updated_by: row.try_get("updated_by")?,
        })
    }
}

/// Keys are 1-128 characters of letters, digits, `.`, `_` and `-` (e.g. `payments.max_amount`).
pub fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

const COLUMNS: &str = "key, value, description, updated_at, updated_by";

pub async fn all(pool: &PgPool) -> Result<Vec<ConfigEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM system_config ORDER BY key")).fetch_all(pool).await?;
    rows.iter().map(ConfigEntry::from_row).collect()
}

pub async fn get(pool: &PgPool, key: &str) -> Result<Option<ConfigEntry>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM system_config WHERE key = $1"))
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(ConfigEntry::from_row).transpose()
}

/// Who changed a setting and from where, for the audit row.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user_id: String,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub correlation_id: Option<String>,
}

/// Sets `key` to `value` (creating it if needed). In one transaction: the upsert, the
/// `admin.config.updated` event in the outbox, and its audit row (same id as the event, so the
/// consumer seeing the event later does not audit it twice) with its `admin.audit.created`.
pub async fn set(
    pool: &PgPool,
    key: &str,
    value: serde_json::Value,
    description: Option<String>,
    actor: &Actor,
) -> Result<ConfigEntry, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let previous: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT value FROM system_config WHERE key = $1 FOR UPDATE")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    let row = sqlx::query(&format!(
        "INSERT INTO system_config (id, key, value, description, updated_at, updated_by) \
         VALUES ($1, $2, $3, $4, (now() AT TIME ZONE 'utc'), $5) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
           description = COALESCE(EXCLUDED.description, system_config.description), \
           updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by \
         RETURNING {COLUMNS}"
    ))
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(key)
    .bind(&value)
    .bind(&description)
    .bind(&actor.user_id)
    .fetch_one(&mut *tx)
    .await?;
    let entry = ConfigEntry::from_row(&row)?;
    let env = Envelope::new(
        types::ADMIN_CONFIG_UPDATED,
        EVENT_SOURCE,
        serde_json::json!({
            "key": entry.key,
            "value": entry.value,
            "previousValue": previous,
            "updatedBy": actor.user_id,
        }),
    )
    .with_correlation_id(actor.correlation_id.clone());
    outbox::enqueue(&mut tx, &env).await?;
    let mut log = AuditLog::of_event(&env);
    log.ip_address = actor.ip_address.clone();
    log.user_agent = actor.user_agent.clone();
    audit::record(&mut tx, &log, actor.correlation_id.clone()).await?;
    tx.commit().await?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_short_dotted_names() {
        assert!(valid_key("payments.max_amount"));
        assert!(valid_key("feature-x"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key(&"k".repeat(129)));
    }
}
