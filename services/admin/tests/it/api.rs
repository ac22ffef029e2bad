//! The admin API over real HTTP against fresh databases, the test stack's RabbitMQ and Redis,
//! and the real payments and auth services where a test needs them.

use crate::common;

use std::time::Duration;

use crate::common::{fresh_database, spawn_app, spawn_with, test_settings, token};
use admin_service::audit::AuditHandler;
use mfe_events::{Envelope, Handler, Hub, HubConfig};
use mfe_kit::{JwtKeys, Role};
use serde_json::{json, Value};

const ROUTES: &[&str] = &[
    "/api/admin/users",
    "/api/admin/audit-logs",
    "/api/admin/config",
    "/api/admin/config/some.key",
    "/api/admin/system/health",
];

#[tokio::test]
async fn admin_endpoints_answer_401_without_a_token_and_403_for_customers_and_vendors() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, customer) = app.user(Role::Customer);
    let (_, vendor) = app.user(Role::Vendor);
    let client = reqwest::Client::new();
    for route in ROUTES {
        let anonymous = client.get(format!("{}{route}", app.address)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{route} without a token");
        assert_eq!(app.get(&customer, route).await.status(), 403, "{route} as CUSTOMER");
        assert_eq!(app.get(&vendor, route).await.status(), 403, "{route} as VENDOR");
    }
    let put = app.put_config(&customer, "fees.rate", &json!({"value": 1})).await;
    assert_eq!(put.status(), 403);
    assert_eq!(put.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    app.teardown().await;
}

/// Spawns the real payments service on its own fresh database.
async fn spawn_payments() -> (String, JwtKeys) {
    let mut settings = payments_service::Settings::from_env().expect("payments settings");
    let (url, _) = fresh_database("PAYMENTS_DATABASE_URL", &payments_service::MIGRATOR).await;
    settings.service.port = 0;
    settings.service.database_url = url;
    settings.psp_step = None;
    settings.db_pool_size = 4;
    let keys = JwtKeys::new(settings.service.jwt_secret.expose());
    let app = payments_service::Application::build(settings).await.expect("build the payments app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    (address, keys)
}

#[tokio::test]
async fn creating_a_payment_produces_an_audit_log_row_in_admin_db_through_the_bus() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let admin = spawn_app().await;
    let (payments, keys) = spawn_payments().await;
    let (sender_id, sender) = token(&keys, Role::Customer);
    let response = reqwest::Client::new()
        .post(format!("{payments}/api/payments"))
        .bearer_auth(&sender)
        .json(&json!({"amount": "19.99", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let payment_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let (_, admin_token) = admin.user(Role::Admin);
    let rows = admin.wait_for_audit(&admin_token, &format!("?resourceId={payment_id}"), Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1, "exactly one audit row for the payment: {rows:?}");
    let row = &rows[0];
    assert_eq!(row["action"], "payments.payment.created");
    assert_eq!(row["resourceType"], "payment");
    assert_eq!(row["userId"], sender_id.as_str());
    assert_eq!(row["details"]["amount"], "19.99");
    assert_eq!(row["details"]["currency"], "EUR");

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE resource_id = $1")
        .bind(&payment_id)
        .fetch_one(&admin.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the row lives in the admin service's own database");
    admin.teardown().await;
}

#[tokio::test]
async fn a_redelivered_event_is_audited_once() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let hub = Hub::connect(HubConfig::from_env().expect("event hub configuration").with_connection_name("admin-tests"))
        .await
        .expect("test broker");
    let env =
        Envelope::new("auth.user.login", "auth-service", json!({"userId": "u-redelivered", "ipAddress": "10.0.0.9"}));
    hub.publish(&env).await.expect("publish once");
    hub.publish(&env).await.expect("publish the same event again");
    let (_, admin) = app.user(Role::Admin);
    let rows = app.wait_for_audit(&admin, "?userId=u-redelivered", Duration::from_secs(20)).await;
    // Give the second copy time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE id = $1")
        .bind(env.id.to_string())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_eq!(rows[0]["id"], env.id.to_string());
    assert_eq!(rows[0]["action"], "auth.user.login");
    assert_eq!(rows[0]["ipAddress"], "10.0.0.9");
    hub.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn a_config_change_is_stored_announced_on_the_bus_and_audited_once() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let recorder = mfe_testkit::events::EventRecorder::start("admin-test", &["admin.config.updated"]).await;
    let app = spawn_app().await;
    let (admin_id, admin) = app.user(Role::Admin);
    let key = format!("fees.rate-{}", uuid::Uuid::new_v4().simple());

    assert_eq!(app.get(&admin, &format!("/api/admin/config/{key}")).await.status(), 404);
    let response = app.put_config(&admin, &key, &json!({"value": {"percent": 1.5}, "description": "card fee"})).await;
    assert_eq!(response.status(), 200);
    let response = app.put_config(&admin, &key, &json!({"value": {"percent": 2}})).await;
    assert_eq!(response.status(), 200);
    let entry = app.get_json(&admin, &format!("/api/admin/config/{key}")).await;
    assert_eq!(entry["value"], json!({"percent": 2}));
    assert_eq!(entry["description"], "card fee", "an update without a description keeps the old one");
    assert_eq!(entry["updatedBy"], admin_id.as_str());
    let all = app.get_json(&admin, "/api/admin/config").await;
    assert!(all["data"].as_array().unwrap().iter().any(|e| e["key"] == key.as_str()));
    assert_eq!(app.put_config(&admin, "bad key", &json!({"value": 1})).await.status(), 422);
    assert_eq!(app.put_config(&admin, &key, &json!({"description": "no value"})).await.status(), 422);

    // Both changes reach the bus...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mine = || recorder.events().into_iter().filter(|e| e.data["key"] == key.as_str()).collect::<Vec<_>>();
    while mine().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = mine();
    assert_eq!(events.len(), 2, "one admin.config.updated per change");
    assert_eq!(events[1].data["previousValue"], json!({"percent": 1.5}));
    assert_eq!(events[1].data["updatedBy"], admin_id.as_str());

    // ...and each is audited exactly once, although the admin service also consumes its own event.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = app.get_json(&admin, &format!("/api/admin/audit-logs?resourceType=config&resourceId={key}")).await;
    let rows = rows["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["action"] == "admin.config.updated" && r["userId"] == admin_id.as_str()));
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert!(rows.iter().all(|r| ids.contains(&r["id"].as_str().unwrap().to_string())), "audit ids are event ids");
    recorder.hub.close().await;
    app.teardown().await;
}

#[tokio::test]
async fn audit_logs_filter_by_user_action_resource_and_time_and_page_newest_first() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let handler = AuditHandler { db: app.db.clone(), metrics: app.state.metrics.clone(), wake: Default::default() };
    let user = format!("filter-user-{}", uuid::Uuid::new_v4().simple());
    let t0 = chrono::Utc::now() - chrono::Duration::hours(3);
    let mut ids = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 { "payments.payment.created" } else { "auth.user.login" };
        let mut env = Envelope::new(kind, "test", json!({"userId": user, "paymentId": format!("p{i}")}));
        env.timestamp = t0 + chrono::Duration::minutes(30 * i);
        handler.handle(env.clone()).await.expect("audit an event");
        ids.push(env.id.to_string());
    }
    let (_, admin) = app.user(Role::Admin);
    let q = |extra: &str| format!("/api/admin/audit-logs?userId={user}{extra}");
    let ids_of = |page: &Value| {
        page["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };

    let all = app.get_json(&admin, &q("")).await;
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(ids_of(&all), newest_first);
    let logins = app.get_json(&admin, &q("&action=auth.user.login")).await;
    assert_eq!(ids_of(&logins), vec![ids[3].clone(), ids[1].clone()]);
    let payments = app.get_json(&admin, &q("&resourceType=payment")).await;
    assert_eq!(ids_of(&payments).len(), 3);
    let from = (t0 + chrono::Duration::minutes(45)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let to = (t0 + chrono::Duration::minutes(100)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let window = app.get_json(&admin, &q(&format!("&from={from}&to={to}"))).await;
    assert_eq!(ids_of(&window), vec![ids[3].clone(), ids[2].clone()]);

    let first = app.get_json(&admin, &q("&limit=2")).await;
    let cursor = first["nextCursor"].as_str().expect("a next page").to_string();
    let second = app.get_json(&admin, &q(&format!("&limit=2&cursor={cursor}"))).await;
    assert_eq!([ids_of(&first), ids_of(&second)].concat(), newest_first[..4].to_vec());
    assert_eq!(app.get(&admin, &q("&from=yesterday")).await.status(), 400);
    app.teardown().await;
}

#[tokio::test]
async fn system_health_lists_every_service_with_its_state() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (payments, _) = spawn_payments().await;
    let (mut settings, name) = test_settings().await;
    // Two payments replicas: the live one, then one that is down.
    settings.service.urls.payments = format!("{payments},{}", common::dead_url().await).into();
    let app = spawn_with(settings, name).await;
    let (_, admin) = app.user(Role::Admin);
    let report = app.get_json(&admin, "/api/admin/system/health").await;
    let services = report["services"].as_array().unwrap();
    let names: Vec<&str> = services.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gateway", "auth", "payments", "payments-2", "admin", "profile"], "a row per replica");
    let payments_row = services.iter().find(|s| s["name"] == "payments").unwrap();
    assert_eq!(payments_row["status"], "up", "{payments_row}");
    assert_eq!(payments_row["httpStatus"], 200);
    assert_eq!(payments_row["report"]["service"], "payments");
    let auth_row = services.iter().find(|s| s["name"] == "auth").unwrap();
    assert_eq!(auth_row["status"], "down");
    assert!(auth_row["error"].is_string());
    assert_eq!(report["status"], "degraded");
    let second = services.iter().find(|s| s["name"] == "payments-2").unwrap();
    assert_eq!(second["status"], "down", "{second}");
    assert_eq!(report["summary"], "1/6 services up");
    app.teardown().await;
}

#[tokio::test]
async fn users_are_listed_through_the_auth_service_and_its_outage_is_a_503() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (mut auth_cfg, auth_db) = {
        let mut cfg = mfe_kit::config::ServiceConfig::from_env(mfe_core::Service::Auth).unwrap();
        let (url, name) = fresh_database("AUTH_DATABASE_URL", &auth_service::MIGRATOR).await;
        cfg.database_url = url;
        (cfg, name)
    };
    auth_cfg.port = 0;
    let auth_settings = auth_service::Settings::for_service(auth_cfg).expect("auth settings");
    let auth = auth_service::Application::build(auth_settings).await.expect("build the auth app");
    let auth_url = format!("http://127.0.0.1:{}", auth.port());
    tokio::spawn(auth.run_until_stopped());
    let email = format!("listed-{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = reqwest::Client::new()
        .post(format!("{auth_url}/api/auth/signup"))
        .json(&json!({"email": email, "password": "correct-horse-battery-9", "name": "Listed User"}))
        .send()
        .await
        .unwrap();
    assert!(signup.status().is_success(), "signup: {}", signup.text().await.unwrap_or_default());

    let (mut settings, name) = test_settings().await;
    // A dead replica first: the list still comes, from the next one.
    settings.service.urls.auth = format!("{},{auth_url}", common::dead_url().await).into();
    let app = spawn_with(settings, name).await;
    let (_, admin) = app.user(Role::Admin);
    let page = app.get_json(&admin, "/api/admin/users?limit=100").await;
    assert!(page.to_string().contains(&email), "the new user is listed: {page}");
    app.teardown().await;
    common::drop_database("AUTH_DATABASE_URL", &auth_db).await;

    let down = spawn_app().await;
    let (_, admin) = down.user(Role::Admin);
    let response = down.get(&admin, "/api/admin/users").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("auth service"));
    down.teardown().await;
}

#[tokio::test]
async fn a_config_body_over_the_kit_limit_is_refused_with_413_even_for_an_admin() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let app = spawn_app().await;
    let (_, admin) = app.user(Role::Admin);
    let body = json!({"value": "x".repeat(mfe_kit::server::MAX_BODY_BYTES as usize + 1)});
    let response = reqwest::Client::new()
        .put(format!("{}/api/admin/config/fees.rate", app.address))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");
    app.teardown().await;
}
