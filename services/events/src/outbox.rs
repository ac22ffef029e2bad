//! The transactional outbox: a service writes its event in the same transaction as the
//! business change ([`enqueue`]); an [`OutboxRelay`] publishes pending rows in creation order
//! with publisher confirms and stamps `published_at`. A broker outage only delays events:
//! rows stay pending and the relay keeps trying.
//!
//! The writer wakes its own relay after the commit ([`RelayHandle::notify`], through
//! [`crate::service_link::ServiceLink::notify`] in a service); relays of other processes (replicas
//! on the same database) find the rows on their next poll. There is no `NOTIFY`: PostgreSQL
//! serialises the commits of transactions that sent one (a global lock is held until the commit
//! record is flushed), so with `NOTIFY` on every write each commit waits for its own fsync in
//! turn and no two commits share one; without it, concurrent commits are flushed together (group
//! commit).
//!
//! Delivery is at least once (a confirm lost with the connection means a republish), which
//! the consumers' [`crate::idempotency`] absorbs.
//!
//! Replicas of a service run one relay each over the same table, and one of them publishes at
//! a time: a round starts by taking a transaction-level advisory lock ([`RELAY_LOCK`]); a relay
//! that finds it held lets the holder publish and tries again [`BUSY_RETRY`] later. Two relays
//! claiming disjoint rows (`FOR UPDATE SKIP LOCKED` alone) would never publish a row twice at
//! once, but could publish a payment's `processing` ahead of its `created` still held by the
//! other: the lock keeps the outbox's order across replicas, the way a single active consumer
//! keeps a queue's, and a crashed holder's lock ends with its connection.

use crate::envelope::Envelope;
use crate::error::HubError;
use crate::hub::Hub;
use sqlx::{PgConnection, PgPool};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

/// The `INSERT` of one outbox row with its parameters numbered from `first`: the event id, its
/// type and [`stored_envelope`]. For services that fold it into a larger statement (a
/// data-modifying `WITH`); [`enqueue`] runs it alone. `clock_timestamp()`, not `now()`: events
/// of one transaction keep their order (`now()` is the transaction's start, the same for all).
pub fn outbox_insert(first: usize) -> String {
    let (id, key, envelope) = (first, first + 1, first + 2);
    format!(
        "INSERT INTO event_outbox (id, routing_key, envelope, created_at) \
         VALUES (${id}, ${key}, ${envelope}, clock_timestamp())"
    )
}

/// The envelope as `event_outbox.envelope` keeps it: the published body plus the trace context
/// the relay sends as a header (it is not part of the published body; it waits here).
pub fn stored_envelope(env: &Envelope) -> Result<serde_json::Value, sqlx::Error> {
    let mut envelope = serde_json::to_value(env).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    if let (Some(tp), Some(obj)) = (&env.traceparent, envelope.as_object_mut()) {
        obj.insert(crate::trace::TRACEPARENT.into(), serde_json::Value::String(tp.clone()));
    }
    Ok(envelope)
}

/// Writes `env` to `event_outbox`; call it with `&mut *tx` inside the business transaction, and
/// wake the relay after the commit (see the module docs).
pub async fn enqueue(conn: &mut PgConnection, env: &Envelope) -> Result<(), sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| outbox_insert(1));
    sqlx::query(&SQL).bind(env.id).bind(&env.event_type).bind(stored_envelope(env)?).execute(conn).await?;
    Ok(())
}

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows published per round (their confirms are in flight together).
    pub batch: i64,
    /// Pause between polls when nothing woke the relay.
    pub poll_interval: Duration,
    /// Longest pause after failed rounds (doubling from `poll_interval`).
    pub max_backoff: Duration,
    /// How long `shutdown` keeps trying to flush pending rows.
    pub shutdown_flush: Duration,
    /// After a round that published something, how long the relay lets new rows gather
    /// before the next one. Under a steady stream of writes this turns one relay transaction
    /// per event into one per handful (at 500 writes/s, about five per round with 10 ms),
    /// for at most this much extra delivery delay; a lone event after a quiet spell goes out
    /// at once.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 200,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            shutdown_flush: Duration::from_secs(5),
            linger: Duration::from_millis(10),
        }
    }
}

/// The advisory lock a relay round holds (`pg_try_advisory_xact_lock`): one publishing relay
/// per outbox table (per database), whatever the number of replicas.
pub const RELAY_LOCK: i64 = 0x6d66_655f_6f75_7462; // "mfe_outb"

/// How soon a relay that found another one publishing tries again: short, so rows its own
/// process wrote do not wait a whole poll interval when the holder's round ends.
pub const BUSY_RETRY: Duration = Duration::from_millis(20);

/// What one relay round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Published this many rows (0: none pending).
    Published(usize),
    /// Another relay holds [`RELAY_LOCK`]; nothing was read.
    Busy,
}

/// Publishes outbox rows; see the module docs.
pub struct OutboxRelay;

/// The running relay: wake it after a commit, or shut it down.
#[derive(Clone)]
pub struct RelayHandle {
    wake: Arc<Notify>,
    stop: CancellationToken,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl RelayHandle {
    /// Wakes the relay now (after committing a transaction that enqueued events).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Flushes pending rows (best effort, bounded by `shutdown_flush`) and stops.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.wake.notify_one();
        if let Some(task) = self.done.lock().await.take() {
            let _ = task.await;
        }
    }
}

impl OutboxRelay {
    /// Starts a relay with the default pacing.
    pub fn spawn(pool: PgPool, hub: Hub) -> RelayHandle {
        Self::spawn_with(pool, hub, RelayConfig::default())
    }

    pub fn spawn_with(pool: PgPool, hub: Hub, cfg: RelayConfig) -> RelayHandle {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay_loop(pool, hub, cfg, wake.clone(), stop.clone()));
        RelayHandle { wake, stop, done: Arc::new(tokio::sync::Mutex::new(Some(task))) }
    }
}

async fn relay_loop(pool: PgPool, hub: Hub, cfg: RelayConfig, wake: Arc<Notify>, stop: CancellationToken) {
    let mut pause = cfg.poll_interval;
    loop {
        if stop.is_cancelled() {
            let flush = async {
                loop {
                    match relay_round(&pool, &hub, cfg.batch).await {
                        Ok(Round::Published(0)) | Err(_) => break,
                        Ok(Round::Published(_)) => {}
                        Ok(Round::Busy) => tokio::time::sleep(BUSY_RETRY).await,
                    }
                }
            };
            let _ = tokio::time::timeout(cfg.shutdown_flush, flush).await;
            return;
        }
        match relay_round(&pool, &hub, cfg.batch).await {
            Ok(Round::Busy) => {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(BUSY_RETRY) => {}
                }
                continue;
            }
            Ok(Round::Published(n)) if n as i64 >= cfg.batch => {
                pause = cfg.poll_interval;
                continue;
            }
            Ok(Round::Published(n)) => {
                pause = cfg.poll_interval;
                if n > 0 && !cfg.linger.is_zero() {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(cfg.linger) => {}
                    }
                }
            }
            Err(e) => {
                warn!("outbox relay: {e}; retrying in {pause:?}");
                pause = (pause * 2).min(cfg.max_backoff);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Why a relay round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox: database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox: publishing event {id}: {source}")]
    Publish {
        id: Uuid,
        #[source]
        source: HubError,
    },
}

/// [`relay_round`], counting a busy round as nothing published.
pub async fn relay_once(pool: &PgPool, hub: &Hub, batch: i64) -> Result<usize, RelayError> {
    Ok(match relay_round(pool, hub, batch).await? {
        Round::Published(n) => n,
        Round::Busy => 0,
    })
}

/// Publishes one batch of pending rows, oldest first, unless another relay is publishing
/// ([`Round::Busy`]). The first failed publish ends the round (the rows after it stay pending),
/// so events of one outbox are published in order.
pub async fn relay_round(pool: &PgPool, hub: &Hub, batch: i64) -> Result<Round, RelayError> {
    let mut tx = pool.begin().await?;
    let (mine,): (bool,) =
        sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)").bind(RELAY_LOCK).fetch_one(&mut *tx).await?;
    if !mine {
        return Ok(Round::Busy);
    }
    // Stamping `published_at` need not wait for its own flush of the WAL: lost in a crash, it
    // only means the rows are published again (delivery is at least once anyway). The business
    // writes keep synchronous commits; the relay's commits then ride on their flushes instead of
    // adding one each round.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT id, envelope FROM event_outbox WHERE published_at IS NULL \
         ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(Round::Published(0));
    }
    let mut envs = Vec::with_capacity(rows.len());
    let mut broken = Vec::new();
    for (id, value) in rows {
        let traceparent = value.get(crate::trace::TRACEPARENT).and_then(|v| v.as_str()).map(str::to_string);
        match serde_json::from_value::<Envelope>(value) {
            Ok(mut env) => {
                env.traceparent = traceparent;
                envs.push(env)
            }
            Err(e) => broken.push((id, format!("undecodable envelope: {e}"))),
        }
    }
    // Events of one outbox go out in order: the first failure ends the round. The rows after
    // it stay pending even when the broker confirmed them (they were sent pipelined), so the
    // next round republishes them after the failed one; consumers' idempotency absorbs the
    // duplicates, and no event is ever published for the last time ahead of an earlier one.
    let results = hub.publish_batch(&envs).await;
    let mut published = Vec::new();
    let mut first_error = None;
    for (env, result) in envs.iter().zip(results) {
        if first_error.is_some() {
            break;
        }
        match result {
            Ok(()) => published.push(env.id),
            // Nobody consumes this type (no queue bound): the broker accepted it; retrying
            // cannot deliver it, so it counts as published and the reason is kept.
            Err(e @ HubError::Unroutable { .. }) => {
                published.push(env.id);
                broken.push((env.id, e.to_string()));
            }
            Err(e) => {
                broken.push((env.id, e.to_string()));
                first_error.get_or_insert(RelayError::Publish { id: env.id, source: e });
            }
        }
    }
    sqlx::query("UPDATE event_outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&published)
        .execute(&mut *tx)
        .await?;
    for (id, reason) in &broken {
        sqlx::query("UPDATE event_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(Round::Published(published.len())),
    }
}

/// Rows still waiting to be published.
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM event_outbox WHERE published_at IS NULL").fetch_one(pool).await?;
    Ok(n)
}
