//! payments_db access: every query of the service, each write in one transaction together with
//! its `payment_transactions` row and its outbox event.

use std::{str::FromStr, sync::LazyLock};

use chrono::{DateTime, NaiveDateTime, Utc};
use mfe_events::{outbox, types, Envelope};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{postgres::PgRow, PgConnection, PgPool, Row};

use crate::domain::{check_transition, IllegalTransition, PaymentStatus, PaymentType};

/// The `source` of every event this service emits.
pub const EVENT_SOURCE: &str = "payments-service";

/// One payment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub id: String,
    pub sender_id: String,
    pub recipient_id: Option<String>,
    /// A string in JSON (`"12.5"`), never a float.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub status: PaymentStatus,
    #[serde(rename = "type")]
    pub payment_type: PaymentType,
    pub description: Option<String>,
    pub psp_transaction_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One row of `payment_transactions`: the history of a payment's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentTransaction {
    pub id: String,
    pub payment_id: String,
    pub status: PaymentStatus,
    pub status_message: Option<String>,
    pub psp_transaction_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The columns of [`Payment`], enums as text (see [`PaymentStatus`]).
const PAYMENT_COLUMNS: &str = "id, sender_id, recipient_id, amount, currency, status::text AS status, \
     type::text AS type, description, psp_transaction_id, metadata, created_at, updated_at, completed_at";

fn decode_err(column: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_string(), source: e.to_string().into() }
}

impl Payment {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        let payment_type: String = row.try_get("type")?;
        Ok(Self {
            id: row.try_get("id")?,
            sender_id: row.try_get("sender_id")?,
            recipient_id: row.try_get("recipient_id")?,
            amount: row.try_get::<Decimal, _>("amount")?.normalize(),
            currency: row.try_get("currency")?,
            status: PaymentStatus::from_str(&status).map_err(|e| decode_err("status", e))?,
            payment_type: PaymentType::from_str(&payment_type).map_err(|e| decode_err("type", e))?,
            description: row.try_get("description")?,
            psp_transaction_id: row.try_get("psp_transaction_id")?,
            metadata: row.try_get("metadata")?,
            created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
            updated_at: row.try_get::<NaiveDateTime, _>("updated_at")?.and_utc(),
            completed_at: row.try_get::<Option<NaiveDateTime>, _>("completed_at")?.map(|t| t.and_utc()),
        })
    }

    /// The `data` of every payment event: enough for the gateway to route it and for the admin
    /// service to audit it without calling back.
    pub fn event_data(&self) -> serde_json::Value {
        serde_json::json!({
            "paymentId": self.id,
            "senderId": self.sender_id,
            "recipientId": self.recipient_id,
            "amount": self.amount.to_string(),
            "currency": self.currency,
            "status": self.status,
            "type": self.payment_type,
        })
    }

    /// Whether `user_id` sent or receives this payment.
    pub fn involves(&self, user_id: &str) -> bool {
        self.sender_id == user_id || self.recipient_id.as_deref() == Some(user_id)
    }
}

/// What a client asked to create, already validated.
#[derive(Debug, Clone)]
pub struct NewPayment {
    pub sender_id: String,
    pub recipient_id: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    pub payment_type: PaymentType,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// Why a status change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StatusChangeError {
    #[error("payment not found")]
    NotFound,
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Where a page of a list starts (newest first); the kit's keyset cursor.
pub use mfe_kit::pagination::Cursor;

/// Whose payments a list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Payments the user sent or receives.
    User(String),
    /// Every payment (admins).
    All,
}

/// The current time at the precision of `timestamp(3)`, so the value written is the value read
/// back (cursors compare exactly).
fn now_millis() -> NaiveDateTime {
    let now = Utc::now();
    DateTime::<Utc>::from_timestamp_millis(now.timestamp_millis()).expect("now is representable").naive_utc()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn insert_transaction(
    conn: &mut PgConnection,
    payment: &Payment,
    message: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment_transactions (id, payment_id, status, status_message, psp_transaction_id, created_at) \
         VALUES ($1, $2, $3::\"PaymentStatus\", $4, $5, $6)",
    )
    .bind(new_id())
    .bind(&payment.id)
    .bind(payment.status.as_str())
    .bind(message)
    .bind(&payment.psp_transaction_id)
    .bind(payment.updated_at.naive_utc())
    .execute(conn)
    .await?;
    Ok(())
}

async fn enqueue(
    conn: &mut PgConnection,
    payment: &Payment,
    event_type: &str,
    correlation_id: Option<String>,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::new(event_type, EVENT_SOURCE, payment.event_data()).with_correlation_id(correlation_id);
    // The service wakes its own relay after the commit (see mfe_events::outbox).
    outbox::enqueue(conn, &envelope).await?;
    Ok(envelope)
}

/// The statement of [`create`]; its parameters are bound in order there.
static CREATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH payment AS ( \
           INSERT INTO payments (id, sender_id, recipient_id, amount, currency, status, type, description, metadata, \
             created_at, updated_at) \
           VALUES ($1, $2, $3, $4, $5, 'pending', $6::\"PaymentType\", $7, $8, $9, $9) RETURNING id), \
         history AS ( \
           INSERT INTO payment_transactions (id, payment_id, status, status_message, created_at) \
           SELECT $10, id, 'pending', 'payment created', $9 FROM payment), \
         event AS ({}) \
         SELECT 1 FROM payment",
        outbox::outbox_insert(11)
    )
});

/// Inserts a pending payment, its first transaction row and its `payments.payment.created`
/// event, all or nothing: one statement (a data-modifying `WITH`), so one round trip and one
/// commit without `BEGIN`/`COMMIT`. The payment is built here, so the event is too.
pub async fn create(pool: &PgPool, new: NewPayment, correlation_id: Option<String>) -> Result<Payment, sqlx::Error> {
    create_on(&mut *pool.acquire().await?, new, correlation_id).await
}

/// [`create`] on a connection the caller holds (the handler times the pool's acquire apart).
pub async fn create_on(
    conn: &mut PgConnection,
    new: NewPayment,
    correlation_id: Option<String>,
) -> Result<Payment, sqlx::Error> {
    let now = now_millis().and_utc();
    let payment = Payment {
        id: new_id(),
        sender_id: new.sender_id,
        recipient_id: new.recipient_id,
        amount: new.amount.normalize(),
        currency: new.currency,
        status: PaymentStatus::Pending,
        payment_type: new.payment_type,
        description: new.description,
        psp_transaction_id: None,
        metadata: new.metadata,
        created_at: now,
        updated_at: now,
        completed_at: None,
    };
    let envelope = Envelope::new(types::PAYMENTS_PAYMENT_CREATED, EVENT_SOURCE, payment.event_data())
        .with_correlation_id(correlation_id);
    sqlx::query(&CREATE_SQL)
        .bind(&payment.id)
        .bind(&payment.sender_id)
        .bind(&payment.recipient_id)
        .bind(payment.amount)
        .bind(&payment.currency)
        .bind(payment.payment_type.as_str())
        .bind(&payment.description)
        .bind(&payment.metadata)
        .bind(now.naive_utc())
        .bind(new_id())
        .bind(envelope.id)
        .bind(&envelope.event_type)
        .bind(outbox::stored_envelope(&envelope)?)
        .execute(conn)
        .await?;
    Ok(payment)
}

/// The payment `id`, whoever owns it (callers check visibility).
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<Payment>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(Payment::from_row).transpose()
}

/// Up to `limit` payments of `scope` after `cursor`, newest first, and the cursor of the next
/// page when there is one.
pub async fn list(
    pool: &PgPool,
    scope: &Scope,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<Payment>, Option<Cursor>), sqlx::Error> {
    // One statement for every case: NULL parameters switch the filters off.
    let user = match scope {
        Scope::User(u) => Some(u.as_str()),
        Scope::All => None,
    };
    let rows = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments \
         WHERE ($1::text IS NULL OR sender_id = $1 OR recipient_id = $1) \
           AND ($2::timestamp IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(user)
    .bind(cursor.map(|c| c.created_at))
    .bind(cursor.map(|c| c.id.as_str()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let mut payments = rows.iter().map(Payment::from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if payments.len() as i64 > limit {
        payments.truncate(limit as usize);
        payments.last().map(|p| Cursor::after(p.created_at, &p.id))
    } else {
        None
    };
    Ok((payments, next))
}

/// Moves payment `id` to `status` if the state machine allows it, writing a transaction row and
/// exactly one event in the same transaction. The row is locked first, so two concurrent
/// changes cannot both pass the check.
pub async fn change_status(
    pool: &PgPool,
    id: &str,
    status: PaymentStatus,
    message: Option<&str>,
    psp_transaction_id: Option<&str>,
    correlation_id: Option<String>,
) -> Result<(Payment, Payment), StatusChangeError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StatusChangeError::NotFound)?;
    let before = Payment::from_row(&row)?;
    check_transition(before.status, status)?;
    // Strictly after the previous write, even within one millisecond or behind a clock step:
    // `updated_at` is the version of the cached record (`payment:{id}`, [`crate::payment_cache`]),
    // so a write must never keep it.
    let now = now_millis().max(before.updated_at.naive_utc() + chrono::Duration::milliseconds(1));
    let completed_at = (status == PaymentStatus::Completed).then_some(now);
    let row = sqlx::query(&format!(
        "UPDATE payments SET status = $2::\"PaymentStatus\", updated_at = $3, \
         completed_at = COALESCE($4, completed_at), psp_transaction_id = COALESCE($5, psp_transaction_id) \
         WHERE id = $1 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(now)
    .bind(completed_at)
    .bind(psp_transaction_id)
    .fetch_one(&mut *tx)
    .await?;
    let after = Payment::from_row(&row)?;
    insert_transaction(&mut tx, &after, message).await?;
    enqueue(&mut tx, &after, status.event_type(), correlation_id).await?;
    tx.commit().await?;
    Ok((before, after))
}

/// The status history of payment `id`, oldest first.
pub async fn transactions(pool: &PgPool, id: &str) -> Result<Vec<PaymentTransaction>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, payment_id, status::text AS status, status_message, psp_transaction_id, created_at \
         FROM payment_transactions WHERE payment_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(PaymentTransaction {
                id: row.try_get("id")?,
                payment_id: row.try_get("payment_id")?,
                status: PaymentStatus::from_str(&status).map_err(|e| decode_err("status", e))?,
                status_message: row.try_get("status_message")?,
                psp_transaction_id: row.try_get("psp_transaction_id")?,
                created_at: row.try_get::<NaiveDateTime, _>("created_at")?.and_utc(),
            })
        })
        .collect()
}
