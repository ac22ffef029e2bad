//! `/ws` end to end: the token check before the upgrade, the ack, ping/pong, the heartbeat, and
//! event routing from the real RabbitMQ `events` exchange (test stack, `RABBITMQ_URL`).

use std::time::Duration;

use crate::common::{config, spawn_gateway, spawn_upstream, TestGateway, SECRET};
use futures::{SinkExt, StreamExt};
use mfe_events::{Envelope, Hub, HubConfig};
use mfe_kit::Role;
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{self, protocol::frame::coding::CloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Socket {
    let (socket, resp) = connect_async(url).await.expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    socket
}

/// The next text message as JSON, skipping control frames; panics after `max`.
async fn next_json(socket: &mut Socket, max: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("a message arrives in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// The next message of `kind` whose payload has `field == value`, ignoring others (an admin
/// socket sees the events of tests running in parallel).
async fn next_of(socket: &mut Socket, kind: &str, field: &str, value: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = next_json(socket, left).await;
        if v["type"] == kind && v["payload"][field] == value {
            return v;
        }
    }
}

/// Whether any text message of `kind` arrives within `wait`.
async fn receives_any(socket: &mut Socket, kind: &str, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == kind {
                    return true;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn gateway_with_events() -> TestGateway {
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.events = Some(HubConfig::from_env().expect("event hub configuration").with_connection_name("mfe-gateway-test"));
    spawn_gateway(cfg).await
}

async fn publisher() -> Hub {
    Hub::connect(HubConfig::from_env().expect("event hub configuration").with_connection_name("mfe-gateway-test-publisher")).await.unwrap_or_else(|e| {
        panic!("cannot publish test events: {e} — start the test stack: `set -a; source test.env; set +a; mfe infra start`")
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_missing_invalid_expired_or_unsigned_token_is_refused_with_401_before_any_upgrade() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let now = chrono::Utc::now().timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u1", "role": "ADMIN", "iat": now - 600, "exp": now - 60, "jti": "j"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let other_secret = mfe_kit::JwtKeys::new("another-secret-another-secret-another-secret")
        .issue("u1", Role::Admin, Duration::from_secs(60), None)
        .unwrap()
        .0;
    // `alg: none` with a valid-looking payload and an empty signature.
    let b64 = |s: &str| {
        use std::fmt::Write;
        // base64url without padding, by hand, to avoid a dependency for one line.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                let _ = out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"u1","role":"ADMIN","iat":{now},"exp":{},"jti":"x"}}"#, now + 600))
    );
    let cases = [
        ("missing", format!("ws://127.0.0.1:{}/ws", gw.port)),
        ("garbage", gw.ws_url("not-a-jwt")),
        ("expired", gw.ws_url(&expired)),
        ("wrong secret", gw.ws_url(&other_secret)),
        ("alg none", gw.ws_url(&unsigned)),
    ];
    for (name, url) in cases {
        match connect_async(url.as_str()).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{name}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{name}");
            }
            Err(other) => panic!("{name}: expected an HTTP 401, got {other}"),
            Ok(_) => panic!("{name}: the upgrade must be refused"),
        }
    }
    let metrics = reqwest::get(format!("{}/metrics", gw.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_ws_rejected_total{reason=\"expired_token\",service=\"gateway\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_valid_token_in_the_query_or_header_gets_the_ack_and_a_pong() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let token = gw.token("u-7", Role::Vendor, None);
    let mut socket = connect(&gw.ws_url(&token)).await;
    let ack = next_json(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(ack["type"], "connection:ack");
    assert_eq!(ack["payload"]["userId"], "u-7");
    assert_eq!(ack["payload"]["rooms"], json!(["user:u-7", "role:vendor", "broadcast"]));
    socket.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    assert_eq!(next_json(&mut socket, Duration::from_secs(5)).await, json!({"type": "pong"}));

    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://127.0.0.1:{}/ws", gw.port)).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = connect_async(req).await.expect("a bearer header is accepted too");
    assert_eq!(next_json(&mut socket, Duration::from_secs(5)).await["type"], "connection:ack");
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_heartbeat_and_a_responsive_one_stays() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.ws_ping_interval = Duration::from_millis(200);
    cfg.ws_pong_timeout = Duration::from_millis(200);
    let gw = spawn_gateway(cfg).await;
    let token = gw.token("u-hb", Role::Customer, None);

    let mut silent = connect(&gw.ws_url(&token)).await;
    let mut responsive = connect(&gw.ws_url(&token)).await;
    // The responsive client keeps reading (tungstenite answers pings as it reads); the silent
    // one reads nothing, so it never pongs.
    let keep_reading = tokio::spawn(async move {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            if let Ok(Some(Err(e))) = tokio::time::timeout(Duration::from_millis(50), responsive.next()).await {
                panic!("the responsive client lost its socket: {e}");
            }
        }
        responsive
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut close_code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(3), silent.next()).await {
        match frame {
            Ok(Message::Close(Some(f))) => close_code = Some(f.code),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(close_code, Some(CloseCode::Library(4000)), "the silent client gets a heartbeat close");
    let mut responsive = keep_reading.await.unwrap();
    responsive.send(Message::Text(r#"{"type":"ping"}"#.into())).await.expect("the responsive client is still open");
    let metrics = reqwest::get(format!("{}/metrics", gw.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_ws_heartbeat_timeouts_total{service=\"gateway\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_payment_event_reaches_the_sender_and_an_admin_but_not_another_user() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let gw = gateway_with_events().await;
    let (sender, admin, other) = (unique("sender"), unique("admin"), unique("other"));
    let mut sender_socket = connect(&gw.ws_url(&gw.token(&sender, Role::Customer, None))).await;
    let mut admin_socket = connect(&gw.ws_url(&gw.token(&admin, Role::Admin, None))).await;
    let mut other_socket = connect(&gw.ws_url(&gw.token(&other, Role::Customer, None))).await;
    for s in [&mut sender_socket, &mut admin_socket, &mut other_socket] {
        assert_eq!(next_json(s, Duration::from_secs(5)).await["type"], "connection:ack");
    }
    let payment_id = unique("pay");
    let env = Envelope::new(
        "payments.payment.created",
        "payments-service",
        json!({"paymentId": payment_id, "senderId": sender, "amount": "12.50", "currency": "USD"}),
    )
    .with_correlation_id(Some("corr-ws-1".into()));
    let hub = publisher().await;
    hub.publish(&env).await.expect("the event is published to the events exchange");

    let got = next_of(&mut sender_socket, "payment:created", "paymentId", &payment_id).await;
    assert_eq!(got["payload"]["amount"], "12.50");
    assert_eq!(got["correlationId"], "corr-ws-1");
    assert!(got["timestamp"].is_string());
    next_of(&mut admin_socket, "payment:created", "paymentId", &payment_id).await;
    assert!(
        !receives_any(&mut other_socket, "payment:created", Duration::from_millis(700)).await,
        "another user's socket must not receive the payment"
    );
    hub.close().await;
}

#[tokio::test]
async fn a_revoked_session_notifies_the_user_and_closes_only_that_devices_socket() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let gw = gateway_with_events().await;
    let user = unique("user");
    let mut phone = connect(&gw.ws_url(&gw.token(&user, Role::Customer, Some("phone")))).await;
    let mut laptop = connect(&gw.ws_url(&gw.token(&user, Role::Customer, Some("laptop")))).await;
    for s in [&mut phone, &mut laptop] {
        next_json(s, Duration::from_secs(5)).await;
    }
    let hub = publisher().await;
    hub.publish(&Envelope::new("auth.session.revoked", "auth-service", json!({"userId": user, "deviceId": "phone"})))
        .await
        .unwrap();
    next_of(&mut phone, "session:revoked", "deviceId", "phone").await;
    let mut close_code = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(5), phone.next()).await {
        if let Message::Close(Some(f)) = frame {
            close_code = Some(f.code);
        }
    }
    assert_eq!(close_code, Some(CloseCode::Policy), "the revoked device's socket is closed with 1008");
    next_of(&mut laptop, "session:revoked", "deviceId", "phone").await;
    laptop.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    assert_eq!(next_json(&mut laptop, Duration::from_secs(5)).await["type"], "pong", "the other device stays open");
    hub.close().await;
}

#[tokio::test]
async fn login_and_admin_events_reach_their_rooms_under_spec_names() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let gw = gateway_with_events().await;
    let (user, admin) = (unique("user"), unique("admin"));
    let mut user_socket = connect(&gw.ws_url(&gw.token(&user, Role::Customer, None))).await;
    let mut admin_socket = connect(&gw.ws_url(&gw.token(&admin, Role::Admin, None))).await;
    next_json(&mut user_socket, Duration::from_secs(5)).await;
    next_json(&mut admin_socket, Duration::from_secs(5)).await;
    let hub = publisher().await;
    hub.publish(&Envelope::new("auth.user.login", "auth-service", json!({"userId": user}))).await.unwrap();
    let key = unique("key");
    hub.publish(&Envelope::new("admin.config.updated", "admin-service", json!({"key": key}))).await.unwrap();
    next_of(&mut user_socket, "session:login", "userId", &user).await;
    next_of(&mut admin_socket, "admin:config-updated", "key", &key).await;
    assert!(!receives_any(&mut user_socket, "admin:config-updated", Duration::from_millis(500)).await);
    hub.close().await;
}
