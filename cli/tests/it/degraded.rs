//! The degradation policy on real processes (issue #23's acceptance): a stack of its own
//! (`mfe up`, one broker node) on ports 17xxx, then
//! - right after `mfe up`, the front door routes to every service: a sign-up through nginx is
//!   201, not 503 "marked down by health checks";
//! - with RabbitMQ stopped, 100 of 100 payment creates through the gateway and one through
//!   nginx succeed, the gateway keeps every service in (degraded is not down), and once the
//!   broker is back their events are published (the outbox drains) and audited once each by
//!   the admin consumer (`processed_events`, `audit_logs`);
//! - with Redis stopped, reads and writes through the gateway and through nginx succeed;
//! - the broker carries the policy that deletes the retired queues, and has none of them.
//!
//! The service binaries must be built beside `mfe` (`cargo build --workspace`).

use crate::own_stack::{call, http_client as client, text, OwnStack};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::{Duration, Instant};

const GATEWAY: &str = "http://127.0.0.1:17000";
const PAYMENTS: &str = "http://127.0.0.1:17002";
const NGINX: &str = "https://localhost:17443";
const MANAGEMENT: &str = "http://127.0.0.1:17582/api";
/// Short, so the gateway re-checks its upstreams often during the outages.
const HEALTH_INTERVAL_MS: u64 = 1000;

async fn gateway_upstreams(http: &reqwest::Client) -> Value {
    call(http, reqwest::Method::GET, &format!("{GATEWAY}/health"), None, None).await.1["upstreams"].clone()
}

fn all_up(upstreams: &Value) -> bool {
    upstreams.as_object().is_some_and(|m| !m.is_empty() && m.values().all(|v| v == "up"))
}

/// Polls `check` every 200 ms until it is true or `max` passed.
async fn eventually<F: AsyncFnMut() -> bool>(max: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check().await
}

async fn create_payment(http: &reqwest::Client, base: &str, token: &str, n: usize) -> (u16, Option<String>) {
    let body = json!({"amount": "10.00", "currency": "USD", "type": "instant", "description": format!("degraded {n}")});
    let (status, b) = call(http, reqwest::Method::POST, &format!("{base}/api/payments"), Some(token), Some(body)).await;
    let id = b["id"].as_str().or_else(|| b["payment"]["id"].as_str()).map(String::from);
    (status, id)
}

/// Waits for the gateway to have polled its upstreams at least twice in the current state, then
/// asserts it still routes to every one.
async fn assert_gateway_keeps_every_service(http: &reqwest::Client, during: &str) {
    tokio::time::sleep(Duration::from_millis(HEALTH_INTERVAL_MS * 2 + 500)).await;
    let upstreams = gateway_upstreams(http).await;
    assert!(all_up(&upstreams), "{during}: the gateway marks a service down: {upstreams}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_or_redis_outage_degrades_the_stack_without_refusing_requests() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack =
        OwnStack::new("degradedtest", 17000).with("GATEWAY_HEALTH_INTERVAL_MS", &HEALTH_INTERVAL_MS.to_string());
    let up = stack.mfe(&["up", "--runtime", "native"]);
    assert!(up.status.success(), "mfe up failed:\n{}", text(&up));
    let http = client();

    // `mfe up` returned: the front door routes to every service at once.
    let upstreams = gateway_upstreams(&http).await;
    assert!(all_up(&upstreams), "right after mfe up the gateway marks a service down: {upstreams}");
    let email = format!("degraded-{}@example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        &format!("{NGINX}/api/auth/signup"),
        None,
        Some(json!({"email": email, "password": "degraded-Password-1", "name": "Degraded"})),
    )
    .await;
    assert_eq!(status, 201, "sign-up through nginx right after mfe up: {body}");
    let token = body["accessToken"].as_str().expect("an access token").to_string();

    let payments_db = PgPool::connect("postgres://postgres:postgres@127.0.0.1:17433/payments_db").await.unwrap();
    let admin_db = PgPool::connect("postgres://postgres:postgres@127.0.0.1:17434/admin_db").await.unwrap();

    // The retired queues: the policy is there, the queues are not.
    let mgmt = |path: &str| {
        let (http, url) = (http.clone(), format!("{MANAGEMENT}/{path}"));
        async move { http.get(url).basic_auth("admin", Some("admin")).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(mgmt("policies/%2f/retired-event-queues").await, 200, "the retirement policy is loaded");
    for q in ["auth.events.queue", "payments.events.queue"] {
        assert_eq!(mgmt(&format!("queues/%2f/{q}")).await, 404, "{q} is not declared");
    }
    assert_eq!(mgmt("queues/%2f/admin.events.queue").await, 200, "the admin queue is");

    // --- RabbitMQ stopped.
    stack.must(&["infra", "stop", "rabbitmq", "--runtime", "native"]);
    let degraded = eventually(Duration::from_secs(30), async || {
        let (status, health) = call(&http, reqwest::Method::GET, &format!("{PAYMENTS}/health"), None, None).await;
        status == 200 && health["status"] == "degraded" && health["dependencies"]["broker"]["status"] == "down"
    })
    .await;
    assert!(degraded, "payments reports itself degraded (broker down) and still 200");
    assert_gateway_keeps_every_service(&http, "broker down").await;

    let mut created = Vec::new();
    let mut refused = Vec::new();
    for n in 0..100 {
        match create_payment(&http, GATEWAY, &token, n).await {
            (201, Some(id)) => created.push(id),
            (status, _) => refused.push(status),
        }
    }
    assert!(refused.is_empty(), "{} of 100 creates through the gateway failed: {refused:?}", refused.len());
    let (status, id) = create_payment(&http, NGINX, &token, 100).await;
    assert_eq!(status, 201, "a create through nginx while the broker is down");
    created.push(id.expect("the payment's id"));

    let events = |pending_only: bool| {
        let (pool, ids) = (payments_db.clone(), created.clone());
        async move {
            let sql = format!(
                "SELECT id FROM event_outbox WHERE routing_key = 'payments.payment.created' \
                 AND envelope->'data'->>'paymentId' = ANY($1) {}",
                if pending_only { "AND published_at IS NULL" } else { "" }
            );
            sqlx::query_scalar::<_, uuid::Uuid>(&sql).bind(&ids).fetch_all(&pool).await.unwrap()
        }
    };
    let event_ids = events(false).await;
    assert_eq!(event_ids.len(), 101, "one payments.payment.created per payment in the outbox");
    assert_eq!(events(true).await.len(), 101, "all waiting while the broker is down");

    // --- RabbitMQ back: the outbox drains and the admin consumer audits each event once.
    stack.must(&["infra", "start", "rabbitmq", "--runtime", "native"]);
    assert!(eventually(Duration::from_secs(90), async || events(true).await.is_empty()).await, "the outbox drains");
    let audited = eventually(Duration::from_secs(60), async || {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = 'admin' AND event_id = ANY($1)")
                .bind(&event_ids)
                .fetch_one(&admin_db)
                .await
                .unwrap();
        n == 101
    })
    .await;
    assert!(audited, "the admin consumer processed the 101 events");
    let (rows, payments): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT resource_id) FROM audit_logs \
         WHERE action = 'payments.payment.created' AND resource_id = ANY($1)",
    )
    .bind(&created)
    .fetch_one(&admin_db)
    .await
    .unwrap();
    assert_eq!((rows, payments), (101, 101), "one audit row per payment: each event acted on once");

    // --- Redis stopped.
    stack.must(&["infra", "stop", "redis", "--runtime", "native"]);
    let degraded = eventually(Duration::from_secs(30), async || {
        let (_, health) = call(&http, reqwest::Method::GET, &format!("{PAYMENTS}/health"), None, None).await;
        health["dependencies"]["redis"]["status"] == "down"
    })
    .await;
    assert!(degraded, "payments reports Redis down");
    assert_gateway_keeps_every_service(&http, "redis down").await;
    for base in [GATEWAY, NGINX] {
        let started = Instant::now();
        let get = reqwest::Method::GET;
        let (status, body) = call(&http, get.clone(), &format!("{base}/api/payments"), Some(&token), None).await;
        assert_eq!(status, 200, "{base}: list payments without Redis: {body}");
        let (status, body) =
            call(&http, get.clone(), &format!("{base}/api/payments/{}", created[0]), Some(&token), None).await;
        assert_eq!(status, 200, "{base}: get a payment without Redis: {body}");
        let (status, _) = create_payment(&http, base, &token, 200).await;
        assert_eq!(status, 201, "{base}: create a payment without Redis");
        let (status, body) = call(&http, get.clone(), &format!("{base}/api/auth/me"), Some(&token), None).await;
        assert_eq!(status, 200, "{base}: /api/auth/me without Redis: {body}");
        let bio = format!("bio {}", uuid::Uuid::new_v4().simple());
        let (status, body) = call(
            &http,
            reqwest::Method::PUT,
            &format!("{base}/api/profile/me"),
            Some(&token),
            Some(json!({"bio": bio})),
        )
        .await;
        assert_eq!(status, 200, "{base}: update the profile without Redis: {body}");
        let (status, body) = call(&http, get, &format!("{base}/api/profile/me"), Some(&token), None).await;
        assert_eq!(status, 200, "{base}: read the profile without Redis: {body}");
        assert!(body.to_string().contains(&bio), "{base}: the profile read back is the one written: {body}");
        // Seven requests: a Redis outage may cost one of them a connection attempt (≤ 1 s).
        assert!(started.elapsed() < Duration::from_secs(7), "{base}: without Redis they took {:?}", started.elapsed());
    }
    stack.must(&["infra", "start", "redis", "--runtime", "native"]);
}
