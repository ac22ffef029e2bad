//! `payment:{id}` on the real Redis of the test stack: the key and lifetime of the seed, a hit
//! and a miss counted, and no read after a write (API, payment provider, concurrent readers)
//! ever served the record from before it.

use std::time::Duration;

use crate::common::{spawn_app, spawn_with, test_settings, TestApp};
use mfe_kit::Role;
use serde_json::Value;

async fn redis() -> redis::aio::MultiplexedConnection {
    let url = mfe_core::env::get("REDIS_URL");
    redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// The value of the sample of `metric` whose labels include `label`.
fn sample(text: &str, metric: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn payment(app: &TestApp, token: &str, id: &str) -> Value {
    let response = app.get_payment(token, id).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_payment_is_cached_under_payment_id_for_one_minute_and_counted_by_route_template() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    assert!(app.state.service.cache.is_some(), "the test stack's Redis must be reachable (REDIS_URL)");
    let (_, token) = app.user(Role::Customer);
    let id = app.create_ok(&token, "4.20").await["id"].as_str().unwrap().to_string();
    let key = format!("payment:{id}");
    let mut conn = redis().await;
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(!exists, "a create caches nothing: nothing can have cached the new id");

    let first = payment(&app, &token, &id).await; // a miss, filling the entry
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!((55..=60).contains(&ttl), "{key} lives 1 min, TTL is {ttl}");
    let body: String = redis::cmd("HGET").arg(&key).arg("body").query_async(&mut conn).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), first, "the entry is the payment as served");
    let second = payment(&app, &token, &id).await; // a hit
    assert_eq!(first, second, "a hit serves the same JSON as the database");

    let (_, metrics) = app.get_text("/metrics").await;
    assert_eq!(sample(&metrics, "cache_misses_total", r#"cache="payment""#), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "cache_hits_total", r#"cache="payment""#), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "cache_hit_ratio", r#"cache="payment""#), Some(0.5), "{metrics}");
    assert_eq!(
        sample(&metrics, "http_requests_total", r#"method="GET",path="/api/payments/{id}",status="200""#),
        Some(2.0),
        "{metrics}"
    );
    assert!(!metrics.contains(&id), "no raw id in any label:\n{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_read_after_a_status_change_never_serves_the_old_record_even_under_concurrent_reads() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, sender) = app.user(Role::Customer);
    let (_, admin) = app.user(Role::Admin);
    let mut ids = Vec::new();
    for amount in ["7", "8", "9"] {
        let id = app.create_ok(&sender, amount).await["id"].as_str().unwrap().to_string();
        assert_eq!(payment(&app, &sender, &id).await["status"], "pending");
        ids.push(id);
    }

    // Readers hammer the payments the whole time, each filling an entry on a miss with what it
    // read, possibly just before a commit.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let urls: Vec<String> = ids.iter().map(|id| format!("{}/api/payments/{id}", app.address)).collect();
            let (client, token, stop) = (reqwest::Client::new(), sender.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 5_000 {
                    let _ = client.get(&urls[reads % urls.len()]).bearer_auth(&token).send().await;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for (id, outcome) in ids.iter().zip(["completed", "failed", "cancelled"]) {
        for status in ["processing", outcome] {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(app.change_status(&admin, id, status).await.status(), 200, "to {status}");
            for _ in 0..20 {
                assert_eq!(payment(&app, &sender, id).await["status"], status, "a read after the change to {status}");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 10, "the readers ran beside the writes ({reads} reads)");
    // Settled: what Redis holds is each payment's last write.
    let mut conn = redis().await;
    for (id, outcome) in ids.iter().zip(["completed", "failed", "cancelled"]) {
        let body: String =
            redis::cmd("HGET").arg(format!("payment:{id}")).arg("body").query_async(&mut conn).await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], outcome);
    }
    app.teardown().await;
}

#[tokio::test]
async fn a_fill_with_a_record_read_before_a_write_never_replaces_the_written_one() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, sender) = app.user(Role::Customer);
    let id = app.create_ok(&sender, "9").await["id"].as_str().unwrap().to_string();
    // A reader reads the database...
    let before = payments_service::store::get(&app.db, &id).await.unwrap().unwrap();
    // ...the sender cancels (committed, written through)...
    assert_eq!(app.change_status(&sender, &id, "cancelled").await.status(), 200);
    // ...and the reader, late, fills the entry with what it read.
    app.state.service.cache.as_ref().unwrap().payments.put(&before).await;
    assert_eq!(payment(&app, &sender, &id).await["status"], "cancelled");
    app.teardown().await;
}

#[tokio::test]
async fn the_payment_providers_status_changes_reach_a_cached_payment() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (mut settings, name) = test_settings().await;
    settings.psp_step = Some(Duration::from_millis(150));
    let app = spawn_with(settings, name).await;
    let (_, token) = app.user(Role::Customer);
    let id = app.create_ok(&token, "3").await["id"].as_str().unwrap().to_string();
    // Read (and so cached) while pending; the provider then moves it twice in the background.
    let mut seen = vec![payment(&app, &token, &id).await["status"].as_str().unwrap().to_string()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.last().map(String::as_str) != Some("completed") {
        assert!(tokio::time::Instant::now() < deadline, "never saw completed through the cache: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let status = payment(&app, &token, &id).await["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
    }
    assert_eq!(seen, vec!["pending", "processing", "completed"]);
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(sample(&metrics, "cache_hits_total", r#"cache="payment""#).unwrap_or(0.0) >= 1.0, "{metrics}");
    app.teardown().await;
}
