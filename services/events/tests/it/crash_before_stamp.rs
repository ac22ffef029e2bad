//! At-least-once, end to end: a relay that dies after the broker confirmed an event but before
//! its `published_at` stamp committed leaves the row pending; the next relay publishes it again
//! with the same event id, and an idempotent consumer acts on it once.
//!
//! The crash is real, not a row edited by hand: the relay runs its ordinary round; a lock held
//! by the test (`SHARE` on `event_outbox`, which lets the relay's `SELECT … FOR UPDATE` through
//! but not its `UPDATE`) holds it between the broker's confirm and the stamp, and its database
//! session is then terminated — what PostgreSQL sees when a relay process is killed there (its
//! transaction aborts, the row locks go). Runs on the test stack's broker and auth_db server.

use crate::common::*;
use mfe_events::outbox::{self, RelayError};
use mfe_events::{handler_fn, idempotency, types, Envelope, HandlerError, Subscription};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONSUMER: &str = "crash-test";

#[tokio::test]
async fn a_republished_event_keeps_its_id_and_its_consumer_acts_on_it_once() {
    let _broker = shared_broker().await;
    let db = ScratchDb::create().await;
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL)").execute(&db.pool).await.unwrap();
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("payments", &["payments.#"]).isolated(&p);

    // The consumer as the services write one: claim the id and act in one transaction.
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let (seen, pool) = (deliveries.clone(), db.pool.clone());
    let consumer = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |env: Envelope| {
                let (seen, pool) = (seen.clone(), pool.clone());
                async move {
                    seen.lock().unwrap().push(env.id);
                    let mut tx = pool.begin().await?;
                    if idempotency::claim(&mut tx, CONSUMER, env.id).await? {
                        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                            .bind(env.id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok::<(), HandlerError>(())
                }
            }),
        )
        .await
        .unwrap();

    let env = Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({"n": 1}));
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &env).await.unwrap();
    tx.commit().await.unwrap();

    // The relay of a process that is about to die: its own pool, like its own process.
    let doomed = PgPoolOptions::new().max_connections(1).connect_with(db.pool.connect_options().as_ref().clone()).await;
    let doomed = doomed.unwrap();
    let mut blocker = db.pool.acquire().await.unwrap().detach();
    let mut block = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE event_outbox IN SHARE MODE").execute(&mut *block).await.unwrap();
    let round = tokio::spawn({
        let (pool, hub) = (doomed.clone(), hub.clone());
        async move { outbox::relay_once(&pool, &hub, 10).await }
    });

    // Published and confirmed: the consumer has it...
    assert!(eventually(Duration::from_secs(20), || deliveries.lock().unwrap().len() == 1).await, "first delivery");
    // ...while the relay waits to stamp it. Then it dies there.
    let mut relay_pid = None;
    for _ in 0..200 {
        relay_pid = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'UPDATE event_outbox SET published_at%'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if relay_pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay_pid = relay_pid.expect("the relay waits to stamp the confirmed event");
    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(relay_pid).fetch_one(&db.pool).await.unwrap();
    assert!(killed, "the relay's session is terminated");
    let result = tokio::time::timeout(Duration::from_secs(20), round).await.expect("the round ends").unwrap();
    assert!(matches!(result, Err(RelayError::Db(_))), "the round died before its stamp: {result:?}");
    block.rollback().await.unwrap();
    drop(blocker);
    doomed.close().await;
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 1, "the confirmed event is still pending");

    // A new relay publishes it again, with the same id; the consumer drops the second.
    assert_eq!(outbox::relay_once(&db.pool, &hub, 10).await.unwrap(), 1);
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 0);
    assert!(eventually(Duration::from_secs(20), || deliveries.lock().unwrap().len() == 2).await, "second delivery");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*deliveries.lock().unwrap(), vec![env.id, env.id], "delivered twice, both times with its id");
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects").fetch_one(&db.pool).await.unwrap();
    assert_eq!(effects, 1, "the consumer acted once");
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2")
        .bind(CONSUMER)
        .bind(env.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(claims, 1, "one processed_events row");

    consumer.cancel().await;
    cleanup(&hub, &[sub]).await;
    db.drop_db().await;
}
