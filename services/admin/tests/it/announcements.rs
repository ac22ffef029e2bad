//! End to end over real sockets: the real admin service behind the real gateway, the test
//! stack's PostgreSQL and RabbitMQ in between.
//! - `POST /api/admin/announcements` through the gateway → outbox → `events` exchange → the
//!   gateway's bridge → `notification:new` on every socket (the `broadcast` room);
//! - every audit row the admin service writes (its own announcement, an event it consumed) →
//!   `admin.audit.created` → `admin:audit-created` on the admins' sockets only, and the audit
//!   log never records its own announcements.
//!
//! Each test runs on its own topology (`mfe.test.<uuid>.events`): every admin service consumes
//! every event, so an admin of a test running beside this one would audit (and announce) this
//! test's events too, in its own database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{dead_url, spawn_with, test_settings};
use futures::StreamExt;
use mfe_events::{handler_fn, types, Envelope, Hub, HubConfig, Subscription};
use mfe_gateway::{Application as Gateway, GatewayConfig, Route};
use mfe_kit::{JwtKeys, Role};
use serde_json::{json, Value};
use tokio_tungstenite::{connect_async, tungstenite::Message, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A topology of the test's own on the test stack's broker.
fn isolated_hub() -> HubConfig {
    let prefix = format!("mfe.test.{}", uuid::Uuid::new_v4().simple());
    HubConfig::from_env()
        .expect("event hub configuration")
        .isolated(&prefix)
        .with_connection_name(format!("{prefix}.admin-test"))
}

/// Records every event of `patterns` on `cfg`'s exchange.
async fn recorder(cfg: &HubConfig, patterns: &[&str]) -> (Hub, Arc<Mutex<Vec<Envelope>>>) {
    let hub = Hub::connect(cfg.clone()).await.unwrap_or_else(|e| panic!("{e} — {}", mfe_testkit::START_HINT));
    let seen: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let sink = seen.clone();
    let handle = hub
        .subscribe(
            Subscription::exclusive("recorder", patterns),
            handler_fn(move |e: Envelope| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(e);
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe the recorder");
    std::mem::forget(handle); // lives until the hub closes
    (hub, seen)
}

/// A gateway routing `/api/admin` to `admin` (everything else to nothing), with its bridge
/// consuming `events`.
async fn spawn_gateway(admin: &str, keys_secret: mfe_core::Secret, events: HubConfig) -> u16 {
    let dead = dead_url().await;
    let cfg = GatewayConfig {
        host: "127.0.0.1".into(),
        port: 0,
        routes: mfe_core::SERVICES
            .iter()
            .map(|s| {
                Route::new(s.name, s.route_prefix, if s.service == mfe_core::Service::Admin { admin } else { &dead })
            })
            .collect(),
        jwt_secret: keys_secret,
        events: Some(events),
        upstream_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(3600),
        ws_ping_interval: Duration::from_secs(30),
        ws_pong_timeout: Duration::from_secs(10),
        ws_send_queue: 256,
        front: mfe_gateway::config::FrontDoor::default(),
        workers: 0,
    };
    let mut gw = Gateway::build(cfg).await.expect("the gateway builds");
    assert!(gw.wait_for_events(Duration::from_secs(15)).await, "the gateway's bridge never consumed — is RabbitMQ up?");
    let port = gw.port();
    tokio::spawn(gw.run_until(std::future::pending()));
    port
}

async fn socket(port: u16, keys: &JwtKeys, role: Role) -> Socket {
    let user = uuid::Uuid::new_v4().to_string();
    let (token, _) = keys.issue(&user, role, Duration::from_secs(600), None).unwrap();
    let (mut s, resp) = connect_async(format!("ws://127.0.0.1:{port}/ws?token={token}")).await.expect("upgrade");
    assert_eq!(resp.status(), 101);
    let ack = next_json(&mut s, Duration::from_secs(5)).await.expect("an ack");
    assert_eq!(ack["type"], "connection:ack");
    assert!(ack["payload"]["rooms"].as_array().unwrap().iter().any(|r| r == "broadcast"), "{ack}");
    s
}

async fn next_json(s: &mut Socket, max: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Err(_) | Ok(None) => return None,
            Ok(Some(frame)) => {
                if let Message::Text(t) = frame.expect("a valid frame") {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
            }
        }
    }
}

/// Every message of `kind` whose payload has `field == value` arriving within `wait` (the
/// sockets also see the events of tests running in parallel).
async fn collect(s: &mut Socket, kind: &str, field: &str, value: &str, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut found = Vec::new();
    while let Some(v) = next_json(s, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        if v["type"] == kind && v["payload"][field] == value {
            found.push(v);
        }
    }
    found
}

/// Waits up to `max` for the first message of `kind` with `field == value`.
async fn first(s: &mut Socket, kind: &str, field: &str, value: &str, max: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = next_json(s, left).await.unwrap_or_else(|| panic!("no {kind} with {field}={value} within {max:?}"));
        if v["type"] == kind && v["payload"][field] == value {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_every_socket_and_every_audit_row_reaches_the_admins() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let hub_cfg = isolated_hub();
    let (mut settings, db_name) = test_settings().await;
    settings.service.hub = hub_cfg.clone();
    let secret = settings.service.jwt_secret.clone();
    let app = spawn_with(settings, db_name).await;
    let port = spawn_gateway(&app.address, secret, hub_cfg.clone()).await;
    let keys = app.keys.clone();
    let mut customer = socket(port, &keys, Role::Customer).await;
    let mut vendor = socket(port, &keys, Role::Vendor).await;
    let mut admin_socket = socket(port, &keys, Role::Admin).await;
    let (_, admin) = app.user(Role::Admin);
    let (_, customer_token) = app.user(Role::Customer);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/admin/announcements");
    let message = format!("maintenance tonight {}", uuid::Uuid::new_v4().simple());

    // Only admins announce; a body without a message is a 422 naming the field.
    let refused = http.post(&url).bearer_auth(&customer_token).json(&json!({"message": "x"})).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let invalid = http.post(&url).bearer_auth(&admin).json(&json!({"title": "no message"})).send().await.unwrap();
    assert_eq!(invalid.status(), 422);
    assert!(invalid.text().await.unwrap().contains("\"message\""));

    let created = http
        .post(&url)
        .bearer_auth(&admin)
        .header("x-correlation-id", "announce-1")
        .json(&json!({"title": "Maintenance", "message": message, "level": "warning"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().expect("an id").to_string();
    assert_eq!((created["message"].as_str(), created["level"].as_str()), (Some(message.as_str()), Some("warning")));

    // Every socket, whatever its role, gets it as notification:new.
    for (who, s) in [("customer", &mut customer), ("vendor", &mut vendor), ("admin", &mut admin_socket)] {
        let n = first(s, "notification:new", "id", &id, Duration::from_secs(15)).await;
        assert_eq!(n["payload"]["message"], message.as_str(), "{who}: {n}");
        assert_eq!(n["payload"]["title"], "Maintenance", "{who}");
        assert_eq!(n["payload"]["level"], "warning", "{who}");
        assert_eq!(n["correlationId"], "announce-1", "{who}: {n}");
        assert!(n["payload"].get("userId").is_none(), "the sender is not told to everyone: {n}");
    }
    // Its audit row reaches the admins once, as admin:audit-created.
    let audit = collect(&mut admin_socket, "admin:audit-created", "resourceId", &id, Duration::from_secs(3)).await;
    assert_eq!(audit.len(), 1, "one audit row, announced once: {audit:?}");
    assert_eq!(audit[0]["payload"]["action"], "admin.announcement.created");
    assert_eq!(audit[0]["payload"]["details"]["message"], message.as_str());

    // An event the admin service consumes is audited, and the row is announced to admins only.
    let hub = Hub::connect(hub_cfg.clone()).await.unwrap();
    let user = format!("audited-{}", uuid::Uuid::new_v4().simple());
    let login = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", json!({"userId": user}));
    hub.publish(&login).await.unwrap();
    let row =
        first(&mut admin_socket, "admin:audit-created", "id", &login.id.to_string(), Duration::from_secs(15)).await;
    assert_eq!(
        (row["payload"]["action"].as_str(), row["payload"]["userId"].as_str()),
        (Some("auth.user.login"), Some(user.as_str()))
    );
    let leaked =
        collect(&mut customer, "admin:audit-created", "id", &login.id.to_string(), Duration::from_millis(800)).await;
    assert!(leaked.is_empty(), "customers never see the audit feed: {leaked:?}");

    // The audit log holds the announcement and the login, never its own announcements.
    let page = app.get_json(&admin, "/api/admin/audit-logs?action=admin.announcement.created").await;
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["resourceType"].as_str(), rows[0]["resourceId"].as_str()),
        (Some("announcement"), Some(id.as_str()))
    );
    assert!(rows[0]["userId"].as_str().is_some(), "the row records who announced");
    let echoes = app.get_json(&admin, "/api/admin/audit-logs?action=admin.audit.created").await;
    assert!(echoes["data"].as_array().unwrap().is_empty(), "admin.audit.created is never audited: {echoes}");
    app.teardown().await;
    hub.delete_isolated_topology(&[]).await.expect("delete the test topology");
    hub.close().await;
}

#[tokio::test]
async fn a_config_change_announces_its_audit_row_in_the_same_transaction() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let hub_cfg = isolated_hub();
    let (hub, seen) = recorder(&hub_cfg, &["admin.audit.created"]).await;
    let (mut settings, db_name) = test_settings().await;
    settings.service.hub = hub_cfg.clone();
    let app = spawn_with(settings, db_name).await;
    let (admin_id, admin) = app.user(Role::Admin);
    let key = format!("fees.audit-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(app.put_config(&admin, &key, &json!({"value": 1})).await.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mine =
        || seen.lock().unwrap().iter().filter(|e| e.data["resourceId"] == key.as_str()).cloned().collect::<Vec<_>>();
    while mine().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The consumer sees the config event afterwards and finds the row there: no second one.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = mine();
    assert_eq!(events.len(), 1, "one admin.audit.created per audit row: {events:?}");
    let e = &events[0];
    assert_eq!(e.source, "admin-service");
    assert_eq!(
        (e.data["action"].as_str(), e.data["userId"].as_str()),
        (Some("admin.config.updated"), Some(admin_id.as_str()))
    );
    let rows = app.get_json(&admin, &format!("/api/admin/audit-logs?resourceId={key}")).await;
    assert_eq!(rows["data"][0], e.data, "the event carries the row as the API shows it");
    app.teardown().await;
    hub.delete_isolated_topology(&[]).await.expect("delete the test topology");
    hub.close().await;
}
