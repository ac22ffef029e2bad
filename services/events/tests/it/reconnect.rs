//! Broker outages: the only tests that stop the shared test broker (briefly), so they are
//! kept to one. The hub must reconnect, re-declare, resume its consumer, and the outbox must
//! deliver every event written while the broker was down.

use crate::common::*;
use mfe_events::outbox::{self, OutboxRelay};
use mfe_events::{types, Envelope, Subscription};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn after_a_broker_outage_the_hub_reconnects_resumes_its_consumer_and_the_outbox_delivers_everything() {
    let _broker = exclusive_broker().await;
    let db = ScratchDb::create().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("profile", &[types::AUTH_USER_REGISTERED]).isolated(&p);
    let (seen, h) = record_ids(&hub, &sub).await;
    let relay = OutboxRelay::spawn(db.pool.clone(), hub.clone());

    let before = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"n": "before"}));
    hub.publish(&before).await.unwrap();

    mfe_infra(&["stop", "rabbitmq"]);
    assert!(eventually(Duration::from_secs(10), || !hub.is_connected()).await, "the hub notices the outage");
    // Business writes go on while the broker is down.
    let mut during = Vec::new();
    for i in 0..20 {
        let env = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"n": i}));
        let mut tx = db.pool.begin().await.unwrap();
        outbox::enqueue(&mut tx, &env).await.unwrap();
        tx.commit().await.unwrap();
        relay.notify();
        during.push(env.id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 20, "nothing is marked sent while the broker is down");
    mfe_infra(&["start", "rabbitmq"]);

    assert!(eventually(Duration::from_secs(30), || hub.is_connected()).await, "the hub reconnects");
    assert!(
        eventually(Duration::from_secs(30), || seen.lock().unwrap().len() >= 21).await,
        "the resumed consumer receives the events written during the outage; got {}",
        seen.lock().unwrap().len()
    );
    let after = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"n": "after"}));
    hub.publish(&after).await.expect("publishing works after the reconnect");
    assert!(eventually(Duration::from_secs(10), || seen.lock().unwrap().contains(&after.id)).await);

    let got: Vec<uuid::Uuid> = seen.lock().unwrap().clone();
    let unique: HashSet<_> = got.iter().collect();
    for id in during.iter().chain([&before.id]) {
        assert!(unique.contains(id), "event {id} was lost");
    }
    assert_eq!(outbox::pending_count(&db.pool).await.unwrap(), 0);
    relay.shutdown().await;
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_broker_restart_persistence_loses_no_confirmed_event() {
    let _broker = exclusive_broker().await;
    let p = prefix();
    let s = mfe_events::Scenarios::new(connect(hub_config(&p)).await, p);
    let o = s.broker_restart(500, &MfeInfra).await.expect("broker restart scenario");
    assert!(o.passed, "{}: {}", o.name, o.detail);
    assert_eq!(o.metrics["lost"], 0);
    assert!(s.cleanup().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_outbox_broker_outage_delivers_every_event_committed_while_the_broker_was_down() {
    let _broker = exclusive_broker().await;
    let db = ScratchDb::create().await;
    let p = prefix();
    let s = mfe_events::Scenarios::new(connect(hub_config(&p)).await, p);
    let o = s.outbox_outage(&db.pool, &MfeInfra).await.expect("outbox outage scenario");
    assert!(o.passed, "{}: {}", o.name, o.detail);
    assert_eq!((o.metrics["delivered"].as_u64(), o.metrics["lost"].as_u64()), (Some(100), Some(0)));
    assert!(s.cleanup().await);
    db.drop_db().await;
}
