//! Dead letters and the tail against a real RabbitMQ (the test stack of test.env), each test
//! under its own `mfe.test.<uuid>.*` names: listing leaves the queue intact, a replay reaches
//! the failing consumer only and its inbox keeps the effect once, purge, a second scan refused
//! while one runs, and the tail's own temporary queue.

use crate::common::*;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use mfe_events::{handler_fn, idempotency, types, DeadLetterFilter, Envelope, HandlerError, HubError, Subscription};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

type Runs = Arc<Mutex<HashMap<Uuid, usize>>>;

fn count(runs: &Runs, id: Uuid) -> usize {
    runs.lock().unwrap().get(&id).copied().unwrap_or(0)
}

fn by(consumer: Option<&str>, event_type: Option<&str>, id: Option<&str>) -> DeadLetterFilter {
    DeadLetterFilter {
        consumer: consumer.map(String::from),
        event_type: event_type.map(String::from),
        id: id.map(String::from),
    }
}

async fn wait_for_dead_letters(hub: &mfe_events::Hub, n: usize) -> mfe_events::DeadLetterList {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = hub.dead_letters(&DeadLetterFilter::default(), 1000).await.expect("list dead letters");
        if list.dead_letters.len() >= n || tokio::time::Instant::now() >= deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_reaches_only_its_failing_consumer_and_takes_effect_once() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let db = ScratchDb::create().await;

    // profile: fails with a retryable error until "fixed"; once fixed, claims the event id in
    // its inbox in the same transaction as its effect.
    let profile = Subscription::durable("profile", &["auth.#"]).isolated(&p);
    let fixed = Arc::new(AtomicBool::new(false));
    let (profile_runs, profile_effects): (Runs, Runs) = Default::default();
    let (f, r, e, pool) = (fixed.clone(), profile_runs.clone(), profile_effects.clone(), db.pool.clone());
    let h1 = hub
        .subscribe(
            profile.clone(),
            handler_fn(move |env: Envelope| {
                let (f, r, e, pool) = (f.clone(), r.clone(), e.clone(), pool.clone());
                async move {
                    *r.lock().unwrap().entry(env.id).or_default() += 1;
                    if !f.load(Ordering::SeqCst) {
                        return Err(HandlerError::retry("profile store unavailable"));
                    }
                    let mut tx = pool.begin().await?;
                    if idempotency::claim(&mut tx, "profile", env.id).await? {
                        tx.commit().await?;
                        *e.lock().unwrap().entry(env.id).or_default() += 1;
                    }
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe profile");
    // payments: healthy, sees every auth event once.
    let payments = Subscription::durable("payments", &["auth.#"]).isolated(&p);
    let payments_runs: Runs = Default::default();
    let pr = payments_runs.clone();
    let h2 = hub
        .subscribe(
            payments.clone(),
            handler_fn(move |env: Envelope| {
                let pr = pr.clone();
                async move {
                    *pr.lock().unwrap().entry(env.id).or_default() += 1;
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe payments");
    // admin: rejects logins as malformed (fatal, straight to the DLQ), takes the rest.
    let admin = Subscription::durable("admin", &["auth.#"]).isolated(&p);
    let admin_runs: Runs = Default::default();
    let ar = admin_runs.clone();
    let h3 = hub
        .subscribe(
            admin.clone(),
            handler_fn(move |env: Envelope| {
                let ar = ar.clone();
                async move {
                    *ar.lock().unwrap().entry(env.id).or_default() += 1;
                    if env.event_type == types::AUTH_USER_LOGIN {
                        return Err(HandlerError::fatal("malformed login record"));
                    }
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe admin");

    let registered = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"userId": "u-1"}))
        .with_correlation_id(Some("req-dlq-1".into()));
    let login = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", serde_json::json!({"userId": "u-1"}));
    hub.publish(&registered).await.unwrap();
    hub.publish(&login).await.unwrap();

    let list = wait_for_dead_letters(&hub, 3).await;
    assert_eq!(list.dead_letters.len(), 3, "profile ×2 and admin ×1 dead-lettered: {:?}", list.dead_letters);
    assert_eq!(list.total, 3);
    let of = |consumer: &str, id: Uuid| {
        list.dead_letters
            .iter()
            .find(|d| d.consumer == consumer && d.id == id.to_string())
            .unwrap_or_else(|| panic!("no dead letter of {consumer} for {id}: {:?}", list.dead_letters))
            .clone()
    };
    let dl = of("profile", registered.id);
    assert_eq!(dl.event_type, types::AUTH_USER_REGISTERED);
    assert_eq!(dl.reason, "profile store unavailable");
    assert_eq!(dl.attempts, 4, "one delivery and three retries");
    assert_eq!(dl.queue, profile.queue);
    assert_eq!(dl.correlation_id.as_deref(), Some("req-dlq-1"));
    assert_eq!(dl.source.as_deref(), Some("auth-service"));
    assert_eq!(dl.envelope["data"]["userId"], "u-1");
    let (first, dead) = (dl.first_failure.expect("first failure recorded"), dl.dead_lettered_at.unwrap());
    assert!(dead > first && (dead - first).num_milliseconds() >= 600, "retries took 100+200+400 ms: {first} → {dead}");
    let dl = of("admin", login.id);
    assert_eq!(
        (dl.reason.as_str(), dl.attempts, dl.queue.as_str()),
        ("malformed login record", 1, admin.queue.as_str())
    );
    of("profile", login.id);

    // Listing leaves every message where it was, in the same order.
    let again = hub.dead_letters(&DeadLetterFilter::default(), 1000).await.unwrap();
    let ids = |l: &mfe_events::DeadLetterList| {
        l.dead_letters.iter().map(|d| (d.id.clone(), d.consumer.clone(), d.position)).collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&list), "a listing changes nothing");
    // Filters.
    let profile_only = hub.dead_letters(&by(Some("profile"), None, None), 1000).await.unwrap();
    assert_eq!(profile_only.dead_letters.len(), 2);
    let logins = hub.dead_letters(&by(None, Some("auth.user.login"), None), 1000).await.unwrap();
    assert_eq!(logins.dead_letters.len(), 2);
    let pattern = hub.dead_letters(&by(None, Some("auth.*.registered"), None), 1000).await.unwrap();
    assert_eq!(pattern.dead_letters.len(), 1);
    let limited = hub.dead_letters(&DeadLetterFilter::default(), 2).await.unwrap();
    assert_eq!((limited.dead_letters.len(), limited.truncated), (2, true));
    let nobody = hub.dead_letters(&by(None, None, Some(&Uuid::new_v4().to_string())), 1000).await.unwrap();
    assert!(nobody.dead_letters.is_empty());

    // Fix profile, replay its dead letters only.
    fixed.store(true, Ordering::SeqCst);
    let report = hub.replay_dead_letters(&by(Some("profile"), None, None)).await.expect("replay");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.replayed.len(), 2);
    assert!(report.replayed.iter().all(|r| r.consumer == "profile" && r.queue == profile.queue));
    assert!(
        eventually(Duration::from_secs(10), || count(&profile_effects, registered.id) == 1
            && count(&profile_effects, login.id) == 1)
        .await,
        "profile processed both replayed events: {:?}",
        profile_effects.lock().unwrap()
    );
    // Let any stray copy arrive before counting what everyone else saw.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&profile_runs, registered.id), 5, "4 failed runs, then the replay");
    assert_eq!((count(&payments_runs, registered.id), count(&payments_runs, login.id)), (1, 1), "payments untouched");
    assert_eq!((count(&admin_runs, registered.id), count(&admin_runs, login.id)), (1, 1), "admin untouched");
    let left = hub.dead_letters(&DeadLetterFilter::default(), 1000).await.unwrap();
    assert_eq!(left.dead_letters.len(), 1, "only admin's dead letter is left: {:?}", left.dead_letters);
    assert_eq!(
        (left.dead_letters[0].consumer.as_str(), left.dead_letters[0].id.clone()),
        ("admin", login.id.to_string())
    );

    // At least once: a copy left in the DLQ after its replay was confirmed (a crash before the
    // ack) is replayed again, and the inbox keeps the effect once.
    let mut headers = FieldTable::default();
    for (k, v) in
        [("x-failed-consumer", "profile"), ("x-failed-queue", profile.queue.as_str()), ("x-death-reason", "x")]
    {
        headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
    let props = mfe_events::hub::envelope_properties(&registered).with_headers(headers);
    let body = serde_json::to_vec(&registered).unwrap();
    let cfg = hub.config().clone();
    hub.publish_raw(&cfg.dlx, &cfg.dlq, &body, props).await.expect("a copy back in the DLQ");
    let report = hub.replay_dead_letters(&by(Some("profile"), None, Some(&registered.id.to_string()))).await.unwrap();
    assert_eq!(report.replayed.len(), 1);
    assert!(eventually(Duration::from_secs(10), || count(&profile_runs, registered.id) == 6).await, "the copy ran");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&profile_effects, registered.id), 1, "the duplicate had no second effect");
    assert_eq!(count(&payments_runs, registered.id), 1, "payments still untouched");

    h1.cancel().await;
    h2.cancel().await;
    h3.cancel().await;
    cleanup(&hub, &[profile, payments, admin]).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_dead_letter_whose_queue_is_gone_stays_and_purge_removes_what_it_is_told_to() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("profile", &["payments.#"]).isolated(&p);
    let h = hub
        .subscribe(sub.clone(), handler_fn(|_e: Envelope| async { Err(HandlerError::fatal("unknown payment shape")) }))
        .await
        .unwrap();
    let envs: Vec<Envelope> = ["created", "created", "failed"]
        .iter()
        .map(|t| Envelope::new(format!("payments.payment.{t}"), "payments-service", serde_json::json!({})))
        .collect();
    for env in &envs {
        hub.publish(env).await.unwrap();
    }
    assert_eq!(wait_for_dead_letters(&hub, 3).await.dead_letters.len(), 3);
    h.cancel().await;

    // The consumer's queue is deleted: the replay reports it and the dead letters stay.
    let ch = hub.raw_channel().await.unwrap();
    ch.queue_delete(&sub.queue, Default::default()).await.unwrap();
    let report = hub.replay_dead_letters(&by(None, Some("payments.payment.failed"), None)).await.unwrap();
    assert!(report.replayed.is_empty());
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].error.contains("does not exist"), "{}", report.failed[0].error);
    assert!(report.failed[0].error.contains(&sub.queue), "{}", report.failed[0].error);
    assert_eq!(hub.dead_letters(&DeadLetterFilter::default(), 100).await.unwrap().dead_letters.len(), 3);

    // Purge by id removes just that one; purge of everything empties the queue.
    let one = envs[0].id.to_string();
    let purged = hub.purge_dead_letters(&by(None, None, Some(&one))).await.unwrap();
    assert_eq!((purged.purged, purged.total), (1, 3));
    let left = hub.dead_letters(&DeadLetterFilter::default(), 100).await.unwrap();
    assert_eq!(left.dead_letters.len(), 2);
    assert!(left.dead_letters.iter().all(|d| d.id != one));
    let purged = hub.purge_dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(purged.purged, 2);
    assert!(hub.dead_letters(&DeadLetterFilter::default(), 100).await.unwrap().dead_letters.is_empty());
    cleanup(&hub, &[sub]).await;
}

#[tokio::test]
async fn a_second_reader_of_the_dead_letter_queue_is_refused_rather_than_shown_half_of_it() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    let sub = Subscription::durable("admin", &["#"]).isolated(&p);
    let h =
        hub.subscribe(sub.clone(), handler_fn(|_e: Envelope| async { Err(HandlerError::fatal("no")) })).await.unwrap();
    hub.publish(&Envelope::new(types::ADMIN_CONFIG_UPDATED, "admin-service", serde_json::json!({}))).await.unwrap();
    assert_eq!(wait_for_dead_letters(&hub, 1).await.dead_letters.len(), 1);
    // Another consumer holds the queue (as a scan in progress does).
    let ch = hub.raw_channel().await.unwrap();
    let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let _holder = ch.basic_consume(&hub.config().dlq, "holder", opts, FieldTable::default()).await.unwrap();
    let err = hub.dead_letters(&DeadLetterFilter::default(), 10).await.expect_err("refused");
    assert!(matches!(err, HubError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("try again"), "{err}");
    let _ = ch.close(200, "done").await;
    // Once the holder is gone its message is back and readable.
    assert_eq!(wait_for_dead_letters(&hub, 1).await.dead_letters.len(), 1);
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
}

#[tokio::test]
async fn a_tail_sees_the_matching_events_on_its_own_queue_which_goes_away_with_it() {
    let _broker = shared_broker().await;
    let p = prefix();
    let hub = connect(hub_config(&p)).await;
    // A consumer so the publishes are routable whatever the tail binds.
    let sub = Subscription::durable("admin", &["#"]).isolated(&p);
    let h = hub.subscribe(sub.clone(), handler_fn(|_e: Envelope| async { Ok(()) })).await.unwrap();
    let mut tail = hub.tail(&["auth.#".to_string()]).await.expect("tail");
    let queue = tail.queue().to_string();
    assert!(queue.starts_with(&format!("{p}.events.tail.")), "{queue}");
    let skipped = Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({}));
    let seen = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", serde_json::json!({"userId": "u-9"}));
    hub.publish(&skipped).await.unwrap();
    hub.publish(&seen).await.unwrap();
    let got =
        tokio::time::timeout(Duration::from_secs(5), tail.next()).await.expect("an event in time").unwrap().unwrap();
    assert_eq!(got.routing_key, types::AUTH_USER_LOGIN);
    assert_eq!(got.envelope.as_ref().map(|e| e.id), Some(seen.id), "the payment event is not bound");
    assert!(tokio::time::timeout(Duration::from_millis(300), tail.next()).await.is_err(), "nothing else arrives");
    tail.close().await;
    let ch = hub.raw_channel().await.unwrap();
    let gone = ch
        .queue_declare(&queue, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await;
    assert!(gone.is_err(), "the tail's queue is deleted with it");
    h.cancel().await;
    cleanup(&hub, &[sub]).await;
}
