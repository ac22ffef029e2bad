//! The outbox relay and idempotent consumption against real PostgreSQL and RabbitMQ.

mod common;

use common::*;
use mfe_events::outbox::{self, OutboxRelay};
use mfe_events::{handler_fn, idempotency, types, Envelope, Subscription};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn an_event_id_is_claimed_once_per_consumer_and_a_rolled_back_claim_does_not_count() {
    let db = ScratchDb::create().await;
    let id = uuid::Uuid::new_v4();

    let mut tx = db.pool.begin().await.unwrap();
    assert!(idempotency::claim(&mut tx, "profile", id).await.unwrap());
    tx.rollback().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    assert!(
        idempotency::claim(&mut tx, "profile", id).await.unwrap(),
        "a rolled-back claim leaves the event unprocessed"
    );
    tx.commit().await.unwrap();

    let mut conn = db.pool.acquire().await.unwrap();
    assert!(!idempotency::claim(&mut conn, "profile", id).await.unwrap(), "the same consumer sees a duplicate");
    assert!(idempotency::claim(&mut conn, "admin", id).await.unwrap(), "another consumer processes it independently");
    assert!(idempotency::is_processed(&mut conn, "profile", id).await.unwrap());
    drop(conn);
    db.drop_db().await;
}

#[tokio::test]
async fn the_relay_publishes_committed_outbox_rows_in_order_and_marks_them_sent() {
    let db = ScratchDb::create().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("payments", &["payments.#"]).isolated(&p);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |env: Envelope| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push(env.id);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();

    // One committed business transaction with 50 events, and one rolled back.
    let envs: Vec<Envelope> = (0..50)
        .map(|i| Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({"n": i})))
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    for env in &envs {
        outbox::enqueue(&mut tx, env).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &Envelope::new(types::PAYMENTS_PAYMENT_FAILED, "payments-service", serde_json::json!({})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let relay = OutboxRelay::spawn(db.pool.clone(), hub.clone());
    relay.notify();
    assert!(eventually(Duration::from_secs(10), || seen.lock().unwrap().len() >= 50).await, "all 50 events delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<uuid::Uuid> = envs.iter().map(|e| e.id).collect();
    assert_eq!(*seen.lock().unwrap(), ids, "delivered once each, in commit order; the rolled-back event never");
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 0, "every row is stamped published_at");
    relay.shutdown().await;
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
    db.drop_db().await;
}
