//! The device API as seed plan 7.2.1 specifies it and its frontend (7.2.2) calls it: the
//! requests below are the ones `useDeviceRegistration`, `useUserDevices`, `useLogoutDevice` and
//! `useLogoutOtherDevices` send, and the assertions are what `DeviceManager` reads.

use std::time::Duration;

use mfe_events::{handler_fn, types, Envelope, Hub, HubConfig, Subscription};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::helpers::{spawn_app, Signed, TestApp};

const CHROME_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
const IPHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148";
const FIREFOX_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

/// Every field of a device in the seed's contract, and nothing else.
const DEVICE_FIELDS: [&str; 7] =
    ["createdAt", "deviceId", "deviceName", "deviceType", "id", "lastActiveAt", "userAgent"];

/// Subscribes a private, exclusive queue to `auth.session.revoked` on the shared exchange.
async fn watch_revocations() -> (Hub, UnboundedReceiver<Envelope>) {
    let hub = Hub::connect(
        HubConfig::from_env().expect("event hub configuration").with_connection_name("auth-service-tests"),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to rabbitmq: {e} — {}", mfe_testkit::START_HINT));
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

/// The device ids of the next `n` revocations of `user_id` (sorted), after checking that no
/// further one follows within 1.5 s: one event per device, never more.
async fn revoked_devices(events: &mut UnboundedReceiver<Envelope>, user_id: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(env)) if env.data["userId"] == user_id => seen.push(env),
            Ok(Some(_)) => {}
            _ => panic!("expected {n} auth.session.revoked events within 10 s, saw {}", seen.len()),
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            match events.recv().await {
                Some(env) if env.data["userId"] == user_id => return Some(env),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    if let Ok(Some(extra)) = extra {
        panic!("an unexpected extra revocation event: {:?}", extra.data);
    }
    assert!(seen.iter().all(|e| e.source == "auth-service"));
    let mut devices: Vec<String> = seen.iter().map(|e| e.data["deviceId"].as_str().unwrap().to_string()).collect();
    devices.sort();
    devices
}

/// `useDeviceRegistration().register()`: `POST /auth/devices/register` from a browser.
async fn register(app: &TestApp, token: &str, device_id: &str, name: &str, kind: &str, user_agent: &str) -> Value {
    let res = app
        .client
        .post(app.url("/api/auth/devices/register"))
        .bearer_auth(token)
        .header("user-agent", user_agent)
        .json(&json!({"deviceId": device_id, "deviceName": name, "deviceType": kind}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "register answers the device (seed: res.json(device))");
    let device: Value = res.json().await.unwrap();
    assert_device_shape(&device);
    device
}

/// `useUserDevices()`: `GET /auth/devices`, a bare array.
async fn devices(app: &TestApp, token: &str) -> Vec<Value> {
    let res = app.get("/api/auth/devices", Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let list = body.as_array().unwrap_or_else(|| panic!("the device list is a bare JSON array, got {body}")).clone();
    list.iter().for_each(assert_device_shape);
    list
}

fn ids(list: &[Value]) -> Vec<&str> {
    list.iter().map(|d| d["deviceId"].as_str().unwrap()).collect()
}

/// `useLogoutOtherDevices()`: `POST /auth/devices/logout-others {currentDeviceId}`.
async fn logout_others(app: &TestApp, token: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.post(app.url("/api/auth/devices/logout-others")).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// Exactly the seed's fields, with the types `DeviceManager` uses (`new Date(lastActiveAt)`).
fn assert_device_shape(device: &Value) {
    let mut keys: Vec<&str> = device.as_object().expect("a device is an object").keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, DEVICE_FIELDS, "{device}");
    uuid::Uuid::parse_str(device["id"].as_str().unwrap()).expect("id is a uuid");
    for field in ["createdAt", "lastActiveAt"] {
        chrono::DateTime::parse_from_rfc3339(device[field].as_str().unwrap()).expect("an RFC 3339 timestamp");
    }
}

fn timestamp(device: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(device[field].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn the_seed_device_calls_register_list_delete_and_logout_others() {
    let app = spawn_app().await;
    let (_hub, mut events) = watch_revocations().await;
    // Three browsers of one user; each keeps a crypto.randomUUID() as its device id and sends it
    // with its sign-in (seed 7.2.2: "Device ID included in auth requests").
    let [laptop_id, phone_id, tablet_id] = [(); 3].map(|_| uuid::Uuid::new_v4().to_string());
    let laptop = app.new_user(Some(&laptop_id)).await;
    let email = laptop.user["email"].as_str().unwrap();
    let user_id = laptop.user["id"].as_str().unwrap().to_string();
    let phone: Value = app.signin(email, "s3cret-pass", Some(&phone_id)).await.json().await.unwrap();
    let tablet: Value = app.signin(email, "s3cret-pass", Some(&tablet_id)).await.json().await.unwrap();
    let token = |signed: &Value| signed["accessToken"].as_str().unwrap().to_string();

    // register: each browser names itself (getDeviceName / getDeviceType); the answer is the device.
    let first = register(&app, &laptop.access_token, &laptop_id, "Chrome Browser", "browser", CHROME_UA).await;
    assert_eq!(first["deviceId"], laptop_id.as_str());
    assert_eq!(first["deviceName"], "Chrome Browser");
    assert_eq!(first["deviceType"], "browser");
    assert_eq!(first["userAgent"], CHROME_UA);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let on_phone = register(&app, &token(&phone), &phone_id, "Safari Browser", "mobile", IPHONE_UA).await;
    assert_eq!((&on_phone["deviceName"], &on_phone["deviceType"]), (&json!("Safari Browser"), &json!("mobile")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    register(&app, &token(&tablet), &tablet_id, "Firefox Browser", "browser", FIREFOX_UA).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Registering again (the hook runs on every start) is the same device, active again.
    let again = register(&app, &laptop.access_token, &laptop_id, "Chrome Browser", "browser", CHROME_UA).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["createdAt"], first["createdAt"]);
    assert!(timestamp(&again, "lastActiveAt") > timestamp(&first, "lastActiveAt"));

    // list: newest-active first; every browser of the user sees the same list.
    let listed = devices(&app, &token(&phone)).await;
    assert_eq!(ids(&listed), [laptop_id.as_str(), tablet_id.as_str(), phone_id.as_str()]);
    let phone_row = listed.iter().find(|d| d["deviceId"] == phone_id.as_str()).unwrap();
    assert_eq!(phone_row, &on_phone, "the list shows what register stored");
    assert_eq!(devices(&app, &laptop.access_token).await, listed);

    // delete: the laptop logs the phone out; 204 and one auth.session.revoked for the phone.
    let res = app.delete(&format!("/api/auth/devices/{phone_id}"), &laptop.access_token).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.bytes().await.unwrap().is_empty(), "204 has no body");
    assert_eq!(revoked_devices(&mut events, &user_id, 1).await, [phone_id.as_str()]);
    assert_eq!(app.refresh(phone["refreshToken"].as_str().unwrap()).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ids(&devices(&app, &laptop.access_token).await), [laptop_id.as_str(), tablet_id.as_str()]);

    // logout-others {currentDeviceId}: 204, one event per other device, only the laptop is left.
    let res = logout_others(&app, &laptop.access_token, Some(json!({"currentDeviceId": laptop_id}))).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.bytes().await.unwrap().is_empty(), "204 has no body");
    assert_eq!(revoked_devices(&mut events, &user_id, 1).await, [tablet_id.as_str()]);
    assert_eq!(app.refresh(tablet["refreshToken"].as_str().unwrap()).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&laptop.refresh_token).await.status(), StatusCode::OK);
    assert_eq!(ids(&devices(&app, &laptop.access_token).await), [laptop_id.as_str()]);
}

#[tokio::test]
async fn logout_others_keeps_the_current_device_id_and_without_one_the_tokens_device() {
    let app = spawn_app().await;
    let (_hub, mut events) = watch_revocations().await;
    let a = app.new_user(Some("device-a")).await;
    let email = a.user["email"].as_str().unwrap().to_string();
    let user_id = a.user["id"].as_str().unwrap().to_string();
    let sign_in = |device: &'static str| {
        let (app, email) = (&app, email.clone());
        async move { app.signin(&email, "s3cret-pass", Some(device)).await.json::<Value>().await.unwrap() }
    };
    let b = sign_in("device-b").await;
    sign_in("device-c").await;

    // The body names the device to keep, even when the token is another device's.
    let res = logout_others(&app, &a.access_token, Some(json!({"currentDeviceId": "device-b"}))).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(revoked_devices(&mut events, &user_id, 2).await, ["device-a", "device-c"]);
    assert_eq!(app.refresh(&a.refresh_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ids(&devices(&app, b["accessToken"].as_str().unwrap()).await), ["device-b"]);

    // Without currentDeviceId (no body, or `{}`), the token's own device stays.
    sign_in("device-a").await;
    let c = sign_in("device-c").await;
    let c_token = c["accessToken"].as_str().unwrap();
    assert_eq!(logout_others(&app, c_token, None).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(revoked_devices(&mut events, &user_id, 2).await, ["device-a", "device-b"]);
    assert_eq!(ids(&devices(&app, c_token).await), ["device-c"]);
    sign_in("device-b").await;
    assert_eq!(logout_others(&app, c_token, Some(json!({}))).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(revoked_devices(&mut events, &user_id, 1).await, ["device-b"]);

    // A token of no device and no currentDeviceId: nothing to keep, so nothing is done.
    let plain: Value = app.signin(&email, "s3cret-pass", None).await.json().await.unwrap();
    let res = logout_others(&app, plain["accessToken"].as_str().unwrap(), None).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("currentDeviceId"), "{body}");
    assert_eq!(ids(&devices(&app, c_token).await), ["device-c"]);
}

#[tokio::test]
async fn deleting_an_unknown_device_is_404_and_a_bad_label_is_422() {
    let app = spawn_app().await;
    let laptop = app.new_user(Some("laptop")).await;
    let res = app.delete("/api/auth/devices/no-such-device", &laptop.access_token).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Revoking the device the token belongs to ends that token too; from another device, the
    // laptop is gone.
    let signed: Value =
        app.signin(laptop.user["email"].as_str().unwrap(), "s3cret-pass", Some("desk")).await.json().await.unwrap();
    let desk = signed["accessToken"].as_str().unwrap().to_string();
    assert_eq!(app.delete("/api/auth/devices/laptop", &laptop.access_token).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.delete("/api/auth/devices/laptop", &laptop.access_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.delete("/api/auth/devices/laptop", &desk).await.status(), StatusCode::NOT_FOUND);
    let laptop = Signed { access_token: desk, ..laptop };

    let too_long = "x".repeat(201);
    let res = app
        .post_json(
            "/api/auth/devices/register",
            &json!({"deviceId": "tv", "deviceName": too_long}),
            Some(&laptop.access_token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("deviceName"), "{body}");
    // Without a name or type the device is still registered, both null.
    let res = app.post_json("/api/auth/devices/register", &json!({"deviceId": "tv"}), Some(&laptop.access_token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tv: Value = res.json().await.unwrap();
    assert_eq!((&tv["deviceName"], &tv["deviceType"]), (&Value::Null, &Value::Null));
    // Sign-in records the name and type it is given.
    let res = app
        .post_json(
            "/api/auth/signin",
            &json!({"email": laptop.user["email"], "password": "s3cret-pass", "deviceId": "phone",
                    "deviceName": "Safari Browser", "deviceType": "mobile"}),
            None,
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let listed = devices(&app, &laptop.access_token).await;
    let phone = listed.iter().find(|d| d["deviceId"] == "phone").expect("the signed-in phone is listed");
    assert_eq!((&phone["deviceName"], &phone["deviceType"]), (&json!("Safari Browser"), &json!("mobile")));
    assert_eq!(ids(&listed), ["phone", "tv", "desk"]);
}
