//! The hub against a real RabbitMQ (the test stack of test.env): publish/consume, confirm
//! failures, retries and dead-lettering.

use crate::common::*;
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions};
use lapin::types::AMQPValue;
use mfe_events::{handler_fn, types, Envelope, HandlerError, HubError, Subscription};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_published_event_reaches_only_the_subscribers_bound_to_its_type() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let profile = Subscription::durable("profile", &[types::AUTH_USER_REGISTERED]).isolated(&p);
    let payments = Subscription::durable("payments", &["payments.#"]).isolated(&p);
    let got_profile = Arc::new(Mutex::new(Vec::new()));
    let got_payments = Arc::new(AtomicUsize::new(0));
    let g = got_profile.clone();
    let h1 = hub
        .subscribe(
            profile.clone(),
            handler_fn(move |env: Envelope| {
                let g = g.clone();
                async move {
                    g.lock().unwrap().push(env);
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe profile");
    let n = got_payments.clone();
    let h2 = hub
        .subscribe(
            payments.clone(),
            handler_fn(move |_env: Envelope| {
                let n = n.clone();
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe payments");

    let env = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"userId": "u-1"}))
        .with_correlation_id(Some("req-42".into()));
    hub.publish(&env).await.expect("confirmed publish");

    assert!(
        eventually(Duration::from_secs(5), || got_profile.lock().unwrap().len() == 1).await,
        "profile got the event"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(got_profile.lock().unwrap()[0], env, "the envelope arrives unchanged");
    assert_eq!(got_payments.load(Ordering::SeqCst), 0, "payments is not bound to auth events");
    h1.cancel().await;
    h2.cancel().await;
    cleanup(&hub, &[profile, payments]).await;
}

#[tokio::test]
async fn a_publish_the_broker_cannot_take_fails_with_a_clear_error() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;

    // No queue bound: the broker returns the mandatory message with its confirm.
    let env = Envelope::new(types::ADMIN_CONFIG_UPDATED, "admin-service", serde_json::json!({}));
    let err = hub.publish(&env).await.expect_err("an unroutable publish is an error");
    assert!(matches!(err, HubError::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains("unroutable"), "{err}");

    // The exchange is gone: the broker closes the channel with NOT_FOUND instead of confirming.
    let ch = hub.raw_channel().await.unwrap();
    ch.exchange_delete(&hub.config().exchange, ExchangeDeleteOptions::default()).await.unwrap();
    let err = hub.publish(&env).await.expect_err("a publish to a missing exchange is an error");
    assert!(err.to_string().contains("NOT_FOUND") || err.to_string().contains("not found"), "{err}");

    // The hub recovers: a new publish channel once the exchange exists again.
    mfe_events::topology::declare(&ch, hub.config()).await.unwrap();
    let sub = Subscription::durable("admin", &["#"]).isolated(&p);
    let h = hub.subscribe(sub.clone(), handler_fn(|_e: Envelope| async { Ok(()) })).await.unwrap();
    hub.publish(&env).await.expect("publishing works again after the channel error");
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
}

fn header_str(props: &lapin::BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn header_int(props: &lapin::BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some((*n).into()),
        _ => None,
    }
}

#[tokio::test]
async fn a_handler_that_always_fails_is_retried_three_times_with_backoff_then_dead_lettered_with_the_reason() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let failing = Subscription::durable("payments", &["auth.#"]).isolated(&p);
    let healthy = Subscription::durable("profile", &["auth.#"]).isolated(&p);
    let attempts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let a = attempts.clone();
    let h1 = hub
        .subscribe(
            failing.clone(),
            handler_fn(move |_env: Envelope| {
                let a = a.clone();
                async move {
                    a.lock().unwrap().push(Instant::now());
                    Err(HandlerError::retry("ledger unavailable"))
                }
            }),
        )
        .await
        .unwrap();
    let healthy_runs = Arc::new(AtomicUsize::new(0));
    let hr = healthy_runs.clone();
    let h2 = hub
        .subscribe(
            healthy.clone(),
            handler_fn(move |_env: Envelope| {
                let hr = hr.clone();
                async move {
                    hr.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();

    let env = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", serde_json::json!({"userId": "u-2"}));
    hub.publish(&env).await.unwrap();

    let ch = hub.raw_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(m) = ch.basic_get(&hub.config().dlq, BasicGetOptions::default()).await.unwrap() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the DLQ; attempts so far: {}",
            attempts.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    dead.delivery.acker.ack(BasicAckOptions::default()).await.unwrap();
    let props = &dead.delivery.properties;
    assert_eq!(header_str(props, "x-death-reason").as_deref(), Some("ledger unavailable"));
    assert_eq!(header_str(props, "x-failed-consumer").as_deref(), Some("payments"));
    assert_eq!(header_int(props, "x-attempts"), Some(4), "one delivery and three retries");
    let body: Envelope = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body.id, env.id);

    let times = attempts.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "handler runs");
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    for (gap, want) in gaps.iter().zip([100u128, 200, 400]) {
        assert!(*gap >= want - 10 && *gap < want + 1000, "retry gaps {gaps:?} should follow 100/200/400 ms");
    }
    assert_eq!(healthy_runs.load(Ordering::SeqCst), 1, "the other consumer saw the event once, never the retries");
    h1.cancel().await;
    h2.cancel().await;
    cleanup(&hub, &[failing, healthy]).await;
}

#[tokio::test]
async fn a_fatal_handler_error_goes_straight_to_the_dead_letter_queue() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("admin", &["#"]).isolated(&p);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let h = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |_env: Envelope| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Err(HandlerError::fatal("malformed audit entry"))
                }
            }),
        )
        .await
        .unwrap();
    hub.publish(&Envelope::new(types::ADMIN_AUDIT_CREATED, "admin-service", serde_json::json!({}))).await.unwrap();
    let ch = hub.raw_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        if let Some(m) = ch.basic_get(&hub.config().dlq, BasicGetOptions::default()).await.unwrap() {
            break m;
        }
        assert!(Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(header_int(&dead.delivery.properties, "x-attempts"), Some(1));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
}

// Several worker threads, as in the services: lapin's own tasks may run in any order there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_acks_settle_every_handled_event_once_even_with_retries_in_between() {
    let _broker = shared_broker().await;
    let p = prefix();
    let mut cfg = hub_config(&p);
    cfg.prefetch = 20; // acks go out in batches of up to 5
    let hub = connect(cfg).await;
    let sub = Subscription::durable("acks", &["payments.#"]).isolated(&p);
    let handled = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failed_once = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (h, f) = (handled.clone(), failed_once.clone());
    let handle = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |env: Envelope| {
                let (h, f) = (h.clone(), f.clone());
                async move {
                    let seq = env.data["seq"].as_u64().unwrap();
                    // Every 7th event fails once, so moves to the retry queue interleave with
                    // batched acks of the others.
                    if seq.is_multiple_of(7) && f.lock().unwrap().insert(seq) {
                        return Err(HandlerError::retry("fails once"));
                    }
                    h.lock().unwrap().push(seq);
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe");
    let envs: Vec<Envelope> = (0..300u64)
        .map(|seq| Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({"seq": seq})))
        .collect();
    for r in hub.publish_batch(&envs).await {
        r.expect("confirmed publish");
    }
    assert!(
        eventually(Duration::from_secs(20), || handled.lock().unwrap().len() >= 300).await,
        "handled {} of 300",
        handled.lock().unwrap().len()
    );
    // Let any stray redelivery (a channel failed by a bad ack would bring them all back) arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.cancel().await;
    let mut seen = handled.lock().unwrap().clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 300, "every event handled");
    assert_eq!(handled.lock().unwrap().len(), 300, "no event handled twice: no ack was lost or refused");
    // Cancelling closed the consumer's channel: anything left unacked would be back in the queue.
    let ch = hub.raw_channel().await.unwrap();
    let q = ch
        .queue_declare(
            &sub.queue,
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .expect("the queue exists");
    assert_eq!(q.message_count(), 0, "every handled event was acked");
    cleanup(&hub, &[sub]).await;
}

#[tokio::test]
async fn two_replicas_of_a_service_queue_consume_one_at_a_time_in_publication_order() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("admin", &["payments.#"]).isolated(&p);
    let (first, first_handle) = record_ids(&hub, &sub).await;
    let (second, second_handle) = record_ids(&hub, &sub).await;
    let envs: Vec<Envelope> = (0..40)
        .map(|i| Envelope::new(types::PAYMENTS_PAYMENT_UPDATED, "payments-service", serde_json::json!({"i": i})))
        .collect();
    for e in &envs[..20] {
        hub.publish(e).await.unwrap();
    }
    let total = |a: &Arc<Mutex<Vec<uuid::Uuid>>>, b: &Arc<Mutex<Vec<uuid::Uuid>>>| {
        a.lock().unwrap().len() + b.lock().unwrap().len()
    };
    assert!(eventually(Duration::from_secs(10), || total(&first, &second) >= 20).await, "delivered");
    // One consumer is active and has every event, in order; the other waits.
    let ids: Vec<_> = envs.iter().map(|e| e.id).collect();
    assert_eq!(*first.lock().unwrap(), ids[..20], "the first consumer is the active one");
    assert!(second.lock().unwrap().is_empty(), "the waiting consumer got nothing");

    // When the active one goes, the other takes over where it stopped.
    first_handle.cancel().await;
    for e in &envs[20..] {
        hub.publish(e).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(10), || second.lock().unwrap().len() >= 20).await, "taken over");
    assert_eq!(*second.lock().unwrap(), ids[20..]);
    second_handle.cancel().await;
    cleanup(&hub, &[sub]).await;
}
