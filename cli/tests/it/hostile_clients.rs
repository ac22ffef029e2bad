//! Hostile input through the front door, against the real auth, payments and admin services
//! behind a gateway (and a real nginx with the repository's configuration):
//! - a forged `X-Forwarded-For` never becomes the address recorded on a device or audit row;
//! - a control character in a JSON string or a query parameter is a 422 naming the field,
//!   never a 500 from PostgreSQL;
//! - a body that is not JSON, or JSON of the wrong shape, is a 400 saying what and where,
//!   without the parser's positions or type names.

use crate::nginx_support;

use std::time::Duration;

use mfe_core::Service;
use mfe_kit::{JwtKeys, Role};
use mfe_testkit::test_config;
use serde_json::{json, Value};
use sqlx::Connection;

const FORGED: &str = "6.6.6.6";

struct Platform {
    gateway_port: u16,
    auth_db: String,
    jwt: JwtKeys,
}

/// The auth and admin services on fresh databases and a gateway in front of them (events off).
async fn spawn_platform() -> Platform {
    let auth_cfg = test_config(Service::Auth).await;
    let auth_db = auth_cfg.database_url.clone();
    let jwt = JwtKeys::new(auth_cfg.jwt_secret.expose());
    let auth = auth_service::Application::build(auth_service::Settings::for_service(auth_cfg).expect("auth settings"))
        .await
        .expect("the auth service builds");
    let auth_port = auth.port();
    tokio::spawn(auth.run_until(std::future::pending()));

    let mut admin_settings =
        admin_service::Settings::for_service(test_config(Service::Admin).await).expect("admin settings");
    // A private queue, gone with the connection: the shared admin queue is left alone.
    admin_settings.events_queue = format!("admin.forwarded-for-test.{}", uuid::Uuid::new_v4().simple());
    admin_settings.events_queue_exclusive = true;
    let admin = admin_service::Application::build(admin_settings).await.expect("the admin service builds");
    let admin_port = admin.port();
    tokio::spawn(admin.run_until(std::future::pending()));

    let mut payments_settings = payments_service::Settings::from_env().expect("payments settings");
    payments_settings.service = test_config(Service::Payments).await;
    let payments = payments_service::Application::build(payments_settings).await.expect("payments builds");
    let payments_port = payments.port();
    tokio::spawn(payments.run_until(std::future::pending()));

    let mut cfg = mfe_gateway::GatewayConfig::from_env().expect("gateway configuration");
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.events = None;
    for route in &mut cfg.routes {
        route.upstreams = vec![match route.name.as_str() {
            "auth" => format!("http://127.0.0.1:{auth_port}"),
            "admin" => format!("http://127.0.0.1:{admin_port}"),
            "payments" => format!("http://127.0.0.1:{payments_port}"),
            _ => format!("http://127.0.0.1:{}", mfe_testkit::closed_port()),
        }];
    }
    let gateway = mfe_gateway::Application::build(cfg).await.expect("the gateway builds");
    let gateway_port = gateway.port();
    tokio::spawn(gateway.run_until(std::future::pending()));
    Platform { gateway_port, auth_db, jwt }
}

/// Signs a user up with `device_id` through `base` (with a forged X-Forwarded-For) and returns
/// the address auth stored on the device.
async fn device_ip_after_signup(http: &reqwest::Client, base: &str, auth_db: &str, device_id: &str) -> Option<String> {
    let email = format!("xff-{}@example.com", uuid::Uuid::new_v4().simple());
    let resp = http
        .post(format!("{base}/api/auth/signup"))
        .header("x-forwarded-for", FORGED)
        .header("x-real-ip", FORGED)
        .json(&json!({"email": email, "password": "Correct-Horse-9", "name": "Forger", "deviceId": device_id}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 201, "signup through {base}: {}", resp.text().await.unwrap_or_default());
    let mut db = sqlx::PgConnection::connect(auth_db).await.expect("the auth test database");
    sqlx::query_scalar("SELECT ip_address FROM devices WHERE device_id = $1")
        .bind(device_id)
        .fetch_one(&mut db)
        .await
        .expect("the device row")
}

#[tokio::test]
async fn a_forged_forwarded_for_is_not_the_device_or_audit_address_through_the_gateway_or_nginx() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let platform = spawn_platform().await;
    let gateway = format!("http://127.0.0.1:{}", platform.gateway_port);

    // Through the gateway, from 127.0.0.2: loopback, but not a trusted proxy (127.0.0.1, ::1).
    let direct = reqwest::Client::builder().no_proxy().local_address("127.0.0.2".parse().ok()).build().unwrap();
    let ip = device_ip_after_signup(&direct, &gateway, &platform.auth_db, "dev-gateway").await;
    assert_eq!(ip.as_deref(), Some("127.0.0.2"), "the device address through the gateway");

    let (admin_token, _) = platform
        .jwt
        .issue(&uuid::Uuid::new_v4().to_string(), Role::Admin, Duration::from_secs(600), None)
        .expect("an admin token");
    let admin_id = platform.jwt.verify(&admin_token).unwrap().sub;
    let resp = direct
        .put(format!("{gateway}/api/admin/config/xff.test"))
        .bearer_auth(&admin_token)
        .header("x-forwarded-for", FORGED)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let page: Value = direct
        .get(format!("{gateway}/api/admin/audit-logs?userId={admin_id}"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = page["data"].as_array().expect("audit rows");
    assert!(!rows.is_empty(), "no audit row for the config change: {page}");
    for row in rows {
        assert_eq!(row["ipAddress"], "127.0.0.2", "the audit address through the gateway: {row}");
    }

    // Through nginx (the edge replaces the client's list with the address it sees: 127.0.0.1).
    let edge = tokio::task::spawn_blocking({
        let port = platform.gateway_port;
        move || nginx_support::Edge::start(port)
    })
    .await
    .unwrap();
    let https = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(edge.ca_certificate())
        .resolve("localhost", ([127, 0, 0, 1], edge.https).into())
        .build()
        .unwrap();
    let base = edge.url("");
    let ip = device_ip_after_signup(&https, &base, &platform.auth_db, "dev-nginx").await;
    assert_eq!(ip.as_deref(), Some("127.0.0.1"), "the device address through nginx");
    tokio::task::spawn_blocking(move || drop(edge)).await.unwrap();
}

/// Signs a fresh user up through `base`; returns its access token.
async fn signed_up(http: &reqwest::Client, base: &str) -> String {
    let email = format!("hostile-{}@example.com", uuid::Uuid::new_v4().simple());
    let resp = http
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"email": email, "password": "Correct-Horse-9", "name": "Plain Name"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["accessToken"].as_str().expect("an access token").to_string()
}

/// Sends `body` as JSON text; returns the status and the error body.
async fn post_raw(http: &reqwest::Client, url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http.post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn control_characters_in_bodies_and_queries_are_422_naming_the_field_never_500() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let platform = spawn_platform().await;
    let gw = format!("http://127.0.0.1:{}", platform.gateway_port);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let email = format!("nul-{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = format!(r#"{{"email": "{email}", "password": "Correct-Horse-9", "name": "Ev\u0000il"}}"#);
    let (status, body) = post_raw(&http, &format!("{gw}/api/auth/signup"), None, &signup).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(body["error"]["message"], r#"field "name" contains a control character (U+0000)"#);

    let token = signed_up(&http, &gw).await;
    let payments = format!("{gw}/api/payments");
    for (description, code) in [(r"a\u0000b", "U+0000"), (r"bell\u0007", "U+0007"), (r"c1\u0085", "U+0085")] {
        let payment =
            format!(r#"{{"amount": "1.00", "currency": "USD", "type": "instant", "description": "{description}"}}"#);
        let (status, body) = post_raw(&http, &payments, Some(&token), &payment).await;
        assert_eq!(status, 422, "{description}: {body}");
        assert_eq!(
            body["error"]["message"],
            format!(r#"field "description" contains a control character ({code})"#),
            "{body}"
        );
    }
    // Inside metadata (stored as jsonb, which refuses \u0000 too), the path is named.
    let payment = r#"{"amount": "1.00", "currency": "USD", "type": "instant", "metadata": {"note": ["x", "\u0000"]}}"#;
    let (status, body) = post_raw(&http, &payments, Some(&token), payment).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["message"], r#"field "metadata.note[1]" contains a control character (U+0000)"#);
    // A description may span lines: newline and tab pass.
    let payment = r#"{"amount": "1.00", "currency": "USD", "type": "instant", "description": "line one\nline\ttwo"}"#;
    let (status, body) = post_raw(&http, &payments, Some(&token), payment).await;
    assert_eq!(status, 201, "{body}");

    // A query parameter an admin filter passes to SQL.
    let (admin_token, _) = platform
        .jwt
        .issue(&uuid::Uuid::new_v4().to_string(), Role::Admin, Duration::from_secs(600), None)
        .expect("an admin token");
    let resp =
        http.get(format!("{gw}/api/admin/audit-logs?action=x%00y")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], r#"query parameter "action" contains a control character (U+0000)"#);
    // And a path parameter.
    let resp = http.get(format!("{gw}/api/auth/users/%00")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "the path contains a control character (U+0000)");
}

#[tokio::test]
async fn json_errors_say_what_and_where_without_parser_internals() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let platform = spawn_platform().await;
    let gw = format!("http://127.0.0.1:{}", platform.gateway_port);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = signed_up(&http, &gw).await;
    let payments = format!("{gw}/api/payments");
    for (url, token, body, expected) in [
        (
            format!("{gw}/api/auth/signup"),
            None,
            r#"{"email": "a@example.com", "password": "#,
            "malformed JSON body (in field \"password\")",
        ),
        (
            format!("{gw}/api/auth/signup"),
            None,
            r#"{"email": "a@example.com"}"#,
            r#"invalid request body: field "password" is required"#,
        ),
        (
            format!("{gw}/api/auth/signup"),
            None,
            r#"{"email": 5, "password": "x", "name": "n"}"#,
            r#"invalid request body: field "email": expected a string"#,
        ),
        (
            payments.clone(),
            Some(token.as_str()),
            r#"{"amount": "1.00", "currency": ["USD"]}"#,
            r#"invalid request body: field "currency": expected a string"#,
        ),
        (payments.clone(), Some(token.as_str()), "{not json", "malformed JSON body"),
    ] {
        let (status, err) = post_raw(&http, &url, token, body).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], "bad_request");
        let message = err["error"]["message"].as_str().unwrap();
        assert_eq!(message, expected, "{body}");
        assert!(!message.contains("line") && !message.contains("column") && !message.contains('`'), "{message}");
    }
}
