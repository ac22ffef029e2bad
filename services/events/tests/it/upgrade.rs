//! Recreating a service queue declared by an older version (no single active consumer) on a
//! real RabbitMQ: a service still consumes it as it is, the upgrade refuses while it does, then
//! recreates it with every message kept — those it held and those published during the
//! upgrade — and a second run finds it current.

use crate::common::*;
use mfe_events::topology::{self, subscription_plan, SINGLE_ACTIVE_CONSUMER};
use mfe_events::upgrade::{holding_plan, holding_queue_name};
use mfe_events::{types, Envelope, HubError, QueueUpgrade, Subscription};
use std::collections::BTreeSet;
use std::time::Duration;

/// The plan of `sub` as a version before the single active consumer declared it.
fn old_plan(cfg: &mfe_events::HubConfig, sub: &Subscription) -> topology::Plan {
    let mut plan = subscription_plan(cfg, sub);
    assert!(plan.queues[0].arguments.remove(SINGLE_ACTIVE_CONSUMER).is_some());
    plan
}

fn event(i: usize) -> Envelope {
    Envelope::new(
        types::PAYMENTS_PAYMENT_CREATED,
        "payments-service",
        serde_json::json!({"paymentId": format!("p{i}")}),
    )
}

/// Every envelope id left in `queue`, in queue order (taken and acked).
async fn drain(hub: &mfe_events::Hub, queue: &str) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    while let Some(m) = hub.get(queue).await.unwrap() {
        ids.push(m.envelope().expect("an envelope").id);
    }
    ids
}

#[tokio::test]
async fn an_old_queue_is_recreated_with_one_active_consumer_and_no_message_lost() {
    let _broker = shared_broker().await;
    let p = prefix();
    let cfg = hub_config(&p);
    let hub = connect(cfg.clone()).await;
    let sub = Subscription::durable("admin", &["#"]).isolated(&p);
    hub.declare(&topology::base_plan(&cfg)).await.unwrap();
    hub.declare(&old_plan(&cfg, &sub)).await.unwrap();

    // The new code still consumes the old queue (as it is, with a warning) ...
    let (seen, handle) = record_ids(&hub, &sub).await;
    let first = event(0);
    hub.publish(&first).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || seen.lock().unwrap().contains(&first.id)).await, "consumed");
    // ... and the upgrade will not delete a queue somebody reads.
    match hub.upgrade_queue(&sub).await {
        Err(HubError::QueueInUse { consumers: 1, .. }) => {}
        other => panic!("expected QueueInUse with one consumer, got {other:?}"),
    }
    handle.cancel().await;

    let before: Vec<Envelope> = (1..=50).map(event).collect();
    for e in &before {
        hub.publish(e).await.unwrap();
    }
    // Events keep coming while the upgrade runs.
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 100..300 {
                let e = event(i);
                hub.publish(&e).await.unwrap();
                ids.push(e.id);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outcome = hub.upgrade_queue(&sub).await.expect("upgrade");
    assert!(matches!(outcome, QueueUpgrade::Recreated { moved } if moved >= 50), "{outcome:?}");
    let during = publisher.await.unwrap();
    assert!(!hub.queue_exists(&holding_queue_name(&sub.queue)).await.unwrap(), "the holding queue is gone");

    // The queue now has the argument: declaring it as the code does is accepted, and again
    // the upgrade finds nothing to do.
    hub.declare(&subscription_plan(&cfg, &sub)).await.expect("the queue is declared as the code declares it");
    assert_eq!(hub.upgrade_queue(&sub).await.unwrap(), QueueUpgrade::Current { moved: 0 });

    // Nothing lost: every event from before and during the upgrade is in the queue; the ones
    // held before it keep their order.
    let left = drain(&hub, &sub.queue).await;
    let got: BTreeSet<_> = left.iter().copied().collect();
    let missing: Vec<_> =
        before.iter().map(|e| e.id).chain(during.iter().copied()).filter(|id| !got.contains(id)).collect();
    assert!(missing.is_empty(), "{} event(s) lost by the upgrade", missing.len());
    let held: Vec<_> = left.iter().filter(|id| before.iter().any(|e| e.id == **id)).copied().collect();
    let mut dedup = held.clone();
    dedup.dedup();
    assert_eq!(dedup, before.iter().map(|e| e.id).collect::<Vec<_>>(), "the held events keep their order");
    cleanup(&hub, &[sub]).await;
}

#[tokio::test]
async fn an_upgrade_stopped_half_way_is_finished_by_the_next_run() {
    let _broker = shared_broker().await;
    let p = prefix();
    let cfg = hub_config(&p);
    let hub = connect(cfg.clone()).await;
    let sub = Subscription::durable("profile", &[types::AUTH_USER_REGISTERED]).isolated(&p);
    hub.declare(&topology::base_plan(&cfg)).await.unwrap();
    // What a run killed after step 3 leaves: the new queue, and the holding queue, still bound
    // and holding events.
    hub.declare(&subscription_plan(&cfg, &sub)).await.unwrap();
    let hold = holding_queue_name(&sub.queue);
    hub.declare(&holding_plan(&cfg, &sub)).await.unwrap();
    let e = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"userId": "u1"}));
    hub.publish(&e).await.unwrap();

    assert_eq!(hub.upgrade_queue(&sub).await.unwrap(), QueueUpgrade::Current { moved: 1 });
    assert!(!hub.queue_exists(&hold).await.unwrap(), "the holding queue is gone");
    // The event reached both queues (the holding queue was still bound): it is there twice,
    // which the consumer's inbox applies once.
    assert_eq!(drain(&hub, &sub.queue).await, vec![e.id, e.id]);
    cleanup(&hub, &[sub]).await;
}
