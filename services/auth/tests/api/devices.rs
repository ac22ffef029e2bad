use std::time::Duration;

use mfe_events::{handler_fn, types, Envelope, Hub, HubConfig, Subscription};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

/// Subscribes a private, exclusive queue to `auth.session.revoked` on the shared exchange.
async fn watch_revocations() -> (Hub, tokio::sync::mpsc::UnboundedReceiver<Envelope>) {
    let hub = Hub::connect(HubConfig::from_env().with_connection_name("auth-service-tests"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to rabbitmq: {e} — {}", mfe_kit::testing::START_HINT));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    hub.subscribe(
        Subscription::exclusive("auth-tests", &[types::AUTH_SESSION_REVOKED]),
        handler_fn(move |env| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(env);
                Ok(())
            }
        }),
    )
    .await
    .expect("subscribe test queue");
    (hub, rx)
}

#[tokio::test]
async fn logout_others_publishes_one_session_revoked_per_other_device() {
    let app = spawn_app().await;
    let (_hub, mut events) = watch_revocations().await;
    let laptop = app.new_user(Some("laptop")).await;
    let email = laptop.user["email"].as_str().unwrap();
    let user_id = laptop.user["id"].as_str().unwrap().to_string();
    let phone: Value = app.signin(email, "s3cret-pass", Some("phone")).await.json().await.unwrap();
    let res = app
        .post_json(
            "/api/auth/devices/register",
            &json!({"deviceId": "tablet", "name": "Tablet"}),
            Some(&laptop.access_token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    let listed: Value = app.get("/api/auth/devices", Some(&laptop.access_token)).await.json().await.unwrap();
    let mut ids: Vec<&str> =
        listed["devices"].as_array().unwrap().iter().map(|d| d["deviceId"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["laptop", "phone", "tablet"]);
    let current: Vec<&Value> = listed["devices"].as_array().unwrap().iter().filter(|d| d["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["deviceId"], "laptop");

    let res = app
        .client
        .post(app.url("/api/auth/devices/logout-others"))
        .bearer_auth(&laptop.access_token)
        .header("x-correlation-id", "logout-others-test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-correlation-id"], "logout-others-test");
    let mut revoked: Vec<String> = res.json::<Value>().await.unwrap()["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    revoked.sort();
    assert_eq!(revoked, ["phone", "tablet"]);

    // Exactly one event per other device, for this user, carrying the request's correlation id.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(env)) if env.data["userId"] == user_id.as_str() => seen.push(env),
            Ok(Some(_)) => {}
            _ => panic!("expected 2 auth.session.revoked events within 10 s, saw {}", seen.len()),
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match events.recv().await {
                Some(env) if env.data["userId"] == user_id.as_str() => return Some(env),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    {
        panic!("an unexpected third revocation event: {:?}", extra.data);
    }
    let mut devices: Vec<String> = seen.iter().map(|e| e.data["deviceId"].as_str().unwrap().to_string()).collect();
    devices.sort();
    assert_eq!(devices, ["phone", "tablet"]);
    assert!(seen.iter().all(|e| e.correlation_id.as_deref() == Some("logout-others-test")));

    // The revoked phone session can no longer refresh; the laptop's list shows only itself.
    assert_eq!(app.refresh(phone["refreshToken"].as_str().unwrap()).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&laptop.refresh_token).await.status(), StatusCode::OK);
    let listed: Value = app.get("/api/auth/devices", Some(&laptop.access_token)).await.json().await.unwrap();
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deleting_a_device_revokes_it_and_an_unknown_device_is_404() {
    let app = spawn_app().await;
    let (_hub, mut events) = watch_revocations().await;
    let laptop = app.new_user(Some("laptop")).await;
    let user_id = laptop.user["id"].as_str().unwrap().to_string();
    let phone: Value =
        app.signin(laptop.user["email"].as_str().unwrap(), "s3cret-pass", Some("phone")).await.json().await.unwrap();

    let res =
        app.client.delete(app.url("/api/auth/devices/phone")).bearer_auth(&laptop.access_token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res =
        app.client.delete(app.url("/api/auth/devices/phone")).bearer_auth(&laptop.access_token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.refresh(phone["refreshToken"].as_str().unwrap()).await.status(), StatusCode::UNAUTHORIZED);

    let env = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let env = events.recv().await.expect("event stream open");
            if env.data["userId"] == user_id.as_str() {
                return env;
            }
        }
    })
    .await
    .expect("auth.session.revoked within 10 s");
    assert_eq!(env.data["deviceId"], "phone");
    assert_eq!(env.source, "auth-service");
}
