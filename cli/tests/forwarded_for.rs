//! A forged `X-Forwarded-For` never becomes the address the platform records: the auth service's
//! device row and the admin service's audit row, reached through the gateway (from a client that
//! is not a trusted proxy) and through a real nginx with the repository's configuration.

mod nginx_support;

use std::time::Duration;

use mfe_core::Service;
use mfe_kit::{testing::test_config, JwtKeys, Role};
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

    let mut cfg = mfe_gateway::GatewayConfig::from_env().expect("gateway configuration");
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    cfg.events = None;
    for route in &mut cfg.routes {
        route.upstream = match route.name.as_str() {
            "auth" => format!("http://127.0.0.1:{auth_port}"),
            "admin" => format!("http://127.0.0.1:{admin_port}"),
            _ => format!("http://127.0.0.1:{}", mfe_kit::testing::closed_port()),
        };
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
