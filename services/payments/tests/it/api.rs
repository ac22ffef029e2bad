//! The payments API over real HTTP against a fresh database, the test stack's RabbitMQ and Redis.

use crate::common;

use std::time::Duration;

use crate::common::{spawn_app, test_settings, EventLog};
use mfe_kit::Role;
use serde_json::{json, Value};

#[tokio::test]
async fn a_created_payment_is_listed_and_fetched_by_its_sender() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (sender, token) = app.user(Role::Customer);
    let recipient = uuid::Uuid::new_v4().to_string();

    let response = app
        .create_payment(
            &token,
            &json!({"amount": "12.50", "currency": "EUR", "type": "scheduled", "recipientId": recipient,
                    "description": "rent", "metadata": {"invoice": 7}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["senderId"], sender.as_str());
    assert_eq!(created["recipientId"], recipient.as_str());
    assert_eq!(created["amount"], "12.5", "amounts travel as decimal strings");
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["type"], "scheduled");
    assert_eq!(created["metadata"]["invoice"], 7);
    let id = created["id"].as_str().unwrap();

    let (ids, next) = app.list_ids(&token, "").await;
    assert_eq!(ids, vec![id.to_string()]);
    assert_eq!(next, None);

    let response = app.get_payment(&token, id).await;
    assert_eq!(response.status(), 200);
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fetched, created);
    assert_eq!(app.transaction_rows(id).await, vec!["pending"]);
    app.teardown().await;
}

#[tokio::test]
async fn another_users_payment_is_not_found_while_its_recipient_and_admins_see_it() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, sender) = app.user(Role::Customer);
    let (recipient_id, recipient) = app.user(Role::Vendor);
    let (_, stranger) = app.user(Role::Customer);
    let (_, admin) = app.user(Role::Admin);
    let response = app.create_payment(&sender, &json!({"amount": 5, "recipientId": recipient_id})).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let response = app.get_payment(&stranger, &id).await;
    assert_eq!(response.status(), 404);
    let missing = app.get_payment(&stranger, "no-such-payment").await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "a hidden payment answers exactly like a missing one"
    );
    assert!(app.list_ids(&stranger, "").await.0.is_empty());
    assert_eq!(app.change_status(&stranger, &id, "cancelled").await.status(), 404);

    assert_eq!(app.get_payment(&recipient, &id).await.status(), 200);
    assert_eq!(app.list_ids(&recipient, "").await.0, vec![id.clone()]);
    assert_eq!(app.get_payment(&admin, &id).await.status(), 200);
    assert!(app.list_ids(&admin, "").await.0.contains(&id));
    app.teardown().await;
}

#[tokio::test]
async fn zero_negative_five_decimal_and_unknown_currency_payments_are_rejected_with_422() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, token) = app.user(Role::Customer);
    for body in [
        json!({"amount": "0"}),
        json!({"amount": 0}),
        json!({"amount": "-3.00"}),
        json!({"amount": -3}),
        json!({"amount": "1.23456"}),
        json!({"amount": 1.23456}),
        json!({}),
        json!({"amount": "10", "currency": "usd"}),
        json!({"amount": "10", "currency": "ABC"}),
        json!({"amount": "10", "type": "weekly"}),
    ] {
        let response = app.create_payment(&token, &body).await;
        assert_eq!(response.status(), 422, "{body} should be refused");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "validation_failed");
    }
    assert!(app.list_ids(&token, "").await.0.is_empty(), "nothing refused was stored");
    assert_eq!(app.create_payment(&token, &json!({"amount": "1.2345"})).await.status(), 201);
    app.teardown().await;
}

#[tokio::test]
async fn an_illegal_status_transition_is_rejected_with_409_and_changes_nothing() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, sender) = app.user(Role::Customer);
    let (_, admin) = app.user(Role::Admin);
    let id = app.create_ok(&sender, "40").await["id"].as_str().unwrap().to_string();

    assert_eq!(app.change_status(&admin, &id, "completed").await.status(), 409, "pending cannot complete directly");
    assert_eq!(app.change_status(&admin, &id, "processing").await.status(), 200);
    assert_eq!(app.change_status(&admin, &id, "processing").await.status(), 409, "no change to the same status");
    assert_eq!(app.change_status(&admin, &id, "failed").await.status(), 200);
    let response = app.change_status(&admin, &id, "completed").await;
    assert_eq!(response.status(), 409, "failed is final");
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "conflict");
    assert_eq!(app.change_status(&admin, &id, "refunded").await.status(), 422, "unknown status");

    let payment: Value = app.get_payment(&sender, &id).await.json().await.unwrap();
    assert_eq!(payment["status"], "failed");
    assert_eq!(app.transaction_rows(&id).await, vec!["pending", "processing", "failed"]);
    app.teardown().await;
}

#[tokio::test]
async fn the_sender_may_cancel_a_payment_but_not_complete_it() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, sender) = app.user(Role::Customer);
    let id = app.create_ok(&sender, "9.99").await["id"].as_str().unwrap().to_string();
    assert_eq!(app.change_status(&sender, &id, "processing").await.status(), 403);
    let response = app.change_status(&sender, &id, "cancelled").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "cancelled");
    app.teardown().await;
}

#[tokio::test]
async fn every_status_change_writes_a_transaction_row_and_publishes_exactly_one_event() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let events = EventLog::start("payments.#").await;
    let app = spawn_app().await;
    let (sender_id, sender) = app.user(Role::Customer);
    let (_, admin) = app.user(Role::Admin);
    let recipient = uuid::Uuid::new_v4().to_string();
    let response =
        app.create_payment(&sender, &json!({"amount": "250.0001", "currency": "GBP", "recipientId": recipient})).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.change_status(&admin, &id, "processing").await.status(), 200);
    let response = app.change_status(&admin, &id, "completed").await;
    assert_eq!(response.status(), 200);
    assert!(response.json::<Value>().await.unwrap()["completedAt"].is_string());

    assert_eq!(app.transaction_rows(&id).await, vec!["pending", "processing", "completed"]);
    let seen = events.wait_for(&id, 3, Duration::from_secs(20)).await;
    assert_eq!(seen, vec!["payments.payment.created", "payments.payment.updated", "payments.payment.completed"]);
    let last = events.for_payment(&id).pop().unwrap();
    assert_eq!(last.data["senderId"], sender_id.as_str());
    assert_eq!(last.data["recipientId"], recipient.as_str());
    assert_eq!(last.data["amount"], "250.0001");
    assert_eq!(last.data["currency"], "GBP");
    assert_eq!(last.data["status"], "completed");
    assert_eq!(last.source, "payments-service");
    assert!(last.correlation_id.is_some(), "events carry the request's correlation id");

    // A failure has its own event type.
    let id = app.create_ok(&sender, "1").await["id"].as_str().unwrap().to_string();
    app.change_status(&admin, &id, "processing").await;
    app.change_status(&admin, &id, "failed").await;
    let seen = events.wait_for(&id, 3, Duration::from_secs(20)).await;
    assert_eq!(seen, vec!["payments.payment.created", "payments.payment.updated", "payments.payment.failed"]);
    events.hub.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_cached_list_shows_a_new_payment_immediately_after_the_write() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    assert!(app.state.service.cache.is_some(), "the test stack's Redis must be reachable (REDIS_URL)");
    let (_, sender) = app.user(Role::Customer);
    let (recipient_id, recipient) = app.user(Role::Customer);
    let first = app.create_ok(&sender, "1").await["id"].as_str().unwrap().to_string();

    // Fill the cache for both viewers, and read once more so the page is served from Redis.
    assert_eq!(app.list_ids(&sender, "").await.0, vec![first.clone()]);
    assert_eq!(app.list_ids(&sender, "").await.0, vec![first.clone()]);
    assert!(app.list_ids(&recipient, "").await.0.is_empty());
    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("cache_hits_total") && l.contains("payments-list") && !l.ends_with(" 0")),
        "the second read was a cache hit:\n{metrics}"
    );

    let response = app.create_payment(&sender, &json!({"amount": "2", "recipientId": recipient_id})).await;
    let second = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(app.list_ids(&sender, "").await.0, vec![second.clone(), first.clone()]);
    assert_eq!(app.list_ids(&recipient, "").await.0, vec![second.clone()], "the recipient's page is invalidated too");

    let (_, admin) = app.user(Role::Admin);
    app.change_status(&admin, &second, "cancelled").await;
    let page: Value = app.list_payments(&sender, "").await.json().await.unwrap();
    assert_eq!(page["data"][0]["status"], "cancelled", "a status change invalidates the page");
    app.teardown().await;
}

#[tokio::test]
async fn list_pages_run_newest_first_and_the_cursor_neither_skips_nor_repeats() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, token) = app.user(Role::Customer);
    let mut created = Vec::new();
    for i in 1..=7 {
        created.push(app.create_ok(&token, &i.to_string()).await["id"].as_str().unwrap().to_string());
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    loop {
        let (ids, next) = app.list_ids(&token, &query).await;
        assert!(ids.len() <= 3);
        seen.extend(ids);
        match next {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    assert_eq!(app.list_payments(&token, "?limit=0").await.status(), 400);
    assert_eq!(app.list_payments(&token, "?cursor=nonsense").await.status(), 400);
    app.teardown().await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_rejected_with_401() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/payments", app.address))
        .json(&json!({"amount": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.list_payments("not-a-jwt", "").await.status(), 401);
    app.teardown().await;
}

#[tokio::test]
async fn health_and_business_metrics_are_served() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, token) = app.user(Role::Customer);
    app.create_payment(&token, &json!({"amount": "10.25", "currency": "JPY", "type": "recurring"})).await;
    app.create_payment(&token, &json!({"amount": "0.75", "currency": "JPY", "type": "recurring"})).await;
    let (_, metrics) = app.get_text("/metrics").await;
    let line = |prefix: &str| metrics.lines().find(|l| l.starts_with(prefix)).map(String::from);
    let created = line("payments_created_total").expect("payments_created_total exported");
    assert!(
        created.contains(r#"type="recurring""#) && created.contains(r#"status="pending""#) && created.ends_with(" 2")
    );
    let amount = line("payments_amount_total").expect("payments_amount_total exported");
    assert!(amount.contains(r#"currency="JPY""#) && amount.ends_with(" 11"), "{amount}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.get_text("/health").await;
        let report: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["dependencies"]["database"]["status"], "up");
        // Ready (200) from the start: without the broker it is `degraded`, not down.
        assert_eq!(status, 200, "{body}");
        if report["status"] == "ok" {
            assert_eq!(report["dependencies"]["broker"]["status"], "up");
            break;
        }
        assert_eq!(report["status"], "degraded", "{body}");
        assert!(tokio::time::Instant::now() < deadline, "health never became ok: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.teardown().await;
}

#[tokio::test]
async fn the_psp_stub_completes_a_payment_when_configured_and_says_so_in_events() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let events = EventLog::start("payments.#").await;
    let (mut settings, name) = test_settings().await;
    settings.psp_step = Some(Duration::from_millis(100));
    let app = common::spawn_with(settings, name).await;
    let (_, token) = app.user(Role::Customer);
    let id = app.create_ok(&token, "3").await["id"].as_str().unwrap().to_string();
    let seen = events.wait_for(&id, 3, Duration::from_secs(20)).await;
    assert_eq!(seen, vec!["payments.payment.created", "payments.payment.updated", "payments.payment.completed"]);
    let payment: Value = app.get_payment(&token, &id).await.json().await.unwrap();
    assert_eq!(payment["status"], "completed");
    assert!(payment["pspTransactionId"].as_str().is_some_and(|p| p.starts_with("psp_")));
    assert_eq!(app.transaction_rows(&id).await, vec!["pending", "processing", "completed"]);
    events.hub.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_create_body_over_the_kit_limit_is_refused_with_413_and_nothing_is_stored() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, token) = app.user(Role::Customer);
    let limit = mfe_kit::server::MAX_BODY_BYTES as usize;
    // Valid JSON, but larger than the limit: the description alone is over it.
    let body = json!({"amount": "1.00", "currency": "USD", "description": "x".repeat(limit + 1)});
    let response = app.create_payment(&token, &body).await;
    assert_eq!(response.status(), 413, "an oversized body is refused before it is parsed");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
    let (ids, _) = app.list_ids(&token, "").await;
    assert!(ids.is_empty(), "nothing was created from the refused body: {ids:?}");
    app.teardown().await;
}
