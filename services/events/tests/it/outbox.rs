//! The outbox relay and idempotent consumption against real PostgreSQL and RabbitMQ.

use crate::common::*;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use mfe_events::outbox::{self, OutboxRelay};
use mfe_events::{idempotency, types, Envelope, Subscription};
use std::time::Duration;

#[tokio::test]
async fn an_event_id_is_claimed_once_per_consumer_and_a_rolled_back_claim_does_not_count() {
    let _broker = shared_broker().await;
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
    let _broker = shared_broker().await;
    let db = ScratchDb::create().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("payments", &["payments.#"]).isolated(&p);
    let (seen, h) = record_ids(&hub, &sub).await;

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

#[tokio::test]
async fn two_relays_on_one_outbox_publish_every_row_once() {
    let _broker = shared_broker().await;
    // Two replicas of a service: two relays over the same table, woken together, batch after
    // batch. One publishes at a time (the relay lock), so no row goes out twice and the
    // outbox's order holds across both.
    let db = ScratchDb::create().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("payments", &["payments.#"]).isolated(&p);
    let (seen, h) = record_ids(&hub, &sub).await;
    // Small batches, no linger: the two relays' rounds interleave as much as they can.
    let cfg = outbox::RelayConfig { batch: 5, linger: Duration::ZERO, ..Default::default() };
    let a = OutboxRelay::spawn_with(db.pool.clone(), hub.clone(), cfg.clone());
    let b = OutboxRelay::spawn_with(db.pool.clone(), hub.clone(), cfg);
    let mut ids = Vec::new();
    for round in 0..20 {
        let mut tx = db.pool.begin().await.unwrap();
        for i in 0..25 {
            let env = Envelope::new(
                types::PAYMENTS_PAYMENT_CREATED,
                "payments-service",
                serde_json::json!({"round": round, "n": i}),
            );
            outbox::enqueue(&mut tx, &env).await.unwrap();
            ids.push(env.id);
        }
        tx.commit().await.unwrap();
        a.notify();
        b.notify();
    }
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().len() >= ids.len()).await, "all 500 delivered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = seen.lock().unwrap().clone();
    assert_eq!(delivered.len(), ids.len(), "no row published twice");
    assert!(delivered == ids, "published in commit order across both relays");
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 0);

    // While another session holds the relay lock, a round reads nothing and says so.
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(outbox::RELAY_LOCK).execute(&mut *holder).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(
        &mut tx,
        &Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox::relay_round(&db.pool, &hub, 10).await.unwrap(), outbox::Round::Busy);
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 1);
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(outbox::RELAY_LOCK).execute(&mut *holder).await.unwrap();
    drop(holder);
    assert!(
        eventually(Duration::from_secs(10), || seen.lock().unwrap().len() == ids.len() + 1).await,
        "then published"
    );
    a.shutdown().await;
    b.shutdown().await;
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
    db.drop_db().await;
}

/// The order in which each event was published for the last time (what idempotent consumers
/// end up acting on when duplicates are dropped, and what a FIFO replay must preserve).
fn last_publication_order(seen: &[uuid::Uuid]) -> Vec<uuid::Uuid> {
    let mut order: Vec<uuid::Uuid> = Vec::new();
    for id in seen {
        order.retain(|x| x != id);
        order.push(*id);
    }
    order
}

#[tokio::test]
async fn a_failed_publish_stops_the_relay_round_so_later_events_never_overtake_it() {
    let _broker = shared_broker().await;
    let db = ScratchDb::create().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("payments", &["payments.#"]).isolated(&p);
    let (seen, h) = record_ids(&hub, &sub).await;
    // A queue that refuses every message bound to one event type: the broker nacks that
    // publish (and only that one) while the events around it are confirmed.
    let blocker = format!("{p}.blocker");
    let ch = hub.raw_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(&blocker, QueueDeclareOptions { auto_delete: true, ..Default::default() }, args).await.unwrap();
    ch.queue_bind(
        &blocker,
        &hub.config().exchange,
        types::PAYMENTS_PAYMENT_FAILED,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let kinds = [
        types::PAYMENTS_PAYMENT_CREATED,
        types::PAYMENTS_PAYMENT_FAILED,
        types::PAYMENTS_PAYMENT_CREATED,
        types::PAYMENTS_PAYMENT_UPDATED,
    ];
    let envs: Vec<Envelope> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| Envelope::new(*k, "payments-service", serde_json::json!({"n": i})))
        .collect();
    let ids: Vec<uuid::Uuid> = envs.iter().map(|e| e.id).collect();
    let mut tx = db.pool.begin().await.unwrap();
    for env in &envs {
        outbox::enqueue(&mut tx, env).await.unwrap();
    }
    tx.commit().await.unwrap();

    let err = outbox::relay_once(&db.pool, &hub, 200).await.expect_err("the nacked publish fails the round");
    assert!(
        matches!(&err, outbox::RelayError::Publish { id, .. } if *id == ids[1]),
        "the round reports the nacked event: {err}"
    );
    let rows: Vec<(uuid::Uuid, bool, i32)> =
        sqlx::query_as("SELECT id, published_at IS NOT NULL, attempts FROM event_outbox ORDER BY created_at, id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let marked: Vec<uuid::Uuid> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(marked, ids[..1], "only the events before the failed one count as published");
    let attempts: Vec<i32> = rows.iter().map(|r| r.2).collect();
    assert_eq!(attempts, [0, 1, 0, 0], "the failure is recorded on the failed event only");

    // The broker takes it again: the next round publishes the failed event, then the rest.
    ch.queue_delete(&blocker, QueueDeleteOptions::default()).await.unwrap();
    assert_eq!(outbox::relay_once(&db.pool, &hub, 200).await.unwrap(), 3);
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 0);
    assert!(
        eventually(Duration::from_secs(10), || seen.lock().unwrap().ends_with(&ids[1..])).await,
        "the second round delivers the failed event and then the ones after it: {:?} (ids {ids:?})",
        seen.lock().unwrap()
    );
    assert_eq!(
        last_publication_order(&seen.lock().unwrap()),
        ids,
        "no event is last published ahead of an earlier one"
    );
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
    db.drop_db().await;
}
