use std::time::Duration;

use mfe_core::Service;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_with};
use mfe_testkit::net::Forwarder;

/// The value of the sample of `metric` whose labels include `label`.
fn sample(text: &str, metric: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_are_scraped_in_prometheus_text_format() {
    let app = spawn_app().await;
    let signed = app.new_user(None).await;
    // Twice: a miss then a hit in the user cache.
    assert_eq!(app.me(&signed.access_token).await.status(), StatusCode::OK);
    assert_eq!(app.me(&signed.access_token).await.status(), StatusCode::OK);
    let id = signed.user["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/api/auth/users/{id}"), Some(&signed.access_token)).await.status(), StatusCode::OK);
    assert_eq!(app.get("/no/such/route/42", None).await.status(), StatusCode::NOT_FOUND);
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    assert!(text.contains("# TYPE http_requests_total counter"), "{text}");
    assert_eq!(
        sample(&text, "http_requests_total", r#"method="GET",path="/api/auth/me",status="200",service="auth""#),
        Some(2.0),
        "{text}"
    );
    // By route template, never by raw id; an unknown path under one fixed label.
    assert_eq!(sample(&text, "http_requests_total", r#"path="/api/auth/users/{id}""#), Some(1.0), "{text}");
    assert!(!text.contains(id), "no raw id in any label: {text}");
    assert!(!text.contains("/no/such/route"), "{text}");
    assert_eq!(sample(&text, "http_requests_total", r#"path="unmatched""#), Some(1.0), "{text}");
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"), "{text}");
    assert!(
        text.contains(r#"http_request_duration_seconds_bucket{method="GET",path="/api/auth/me",status="200",service="auth",le="0.005"}"#),
        "{text}"
    );
    // The user lookups of /me and /users/{id}: one miss (the first /me), then hits.
    assert_eq!(sample(&text, "cache_hits_total", r#"cache="user""#), Some(2.0), "{text}");
    assert_eq!(sample(&text, "cache_misses_total", r#"cache="user""#), Some(1.0), "{text}");
    let ratio = sample(&text, "cache_hit_ratio", r#"cache="user""#).expect("a hit ratio");
    assert!((ratio - 2.0 / 3.0).abs() < 1e-9, "{ratio}");
    assert_eq!(sample(&text, "events_published_total", r#"type="auth.user.registered""#), Some(1.0), "{text}");
    // Process metrics, as prom-client's defaults in the seed (the CPU counter is in whole
    // seconds with prometheus 0.13, so it may still read 0 here).
    assert!(text.lines().any(|l| l.starts_with("process_cpu_seconds_total{")), "{text}");
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        let value = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"));
        assert!(value > 0.0, "{name} = {value}");
    }
}

/// A raw connection to the stack's Redis.
async fn redis() -> redis::aio::MultiplexedConnection {
    let url = mfe_core::env::get("REDIS_URL");
    redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn a_user_lookup_is_cached_under_user_id_for_five_minutes() {
    let app = spawn_app().await;
    let signed = app.new_user(None).await;
    let id = signed.user["id"].as_str().unwrap();
    let key = format!("user:{id}");
    let mut conn = redis().await;
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(!exists, "signing up and in caches nothing under {key}");
    assert_eq!(app.me(&signed.access_token).await.status(), StatusCode::OK);
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!((290..=300).contains(&ttl), "{key} lives 5 min, TTL is {ttl}");
    let cached: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
    let cached: Value = serde_json::from_str(&cached).unwrap();
    assert_eq!(cached["id"], id);
    assert_eq!(cached["email"], signed.user["email"]);
    assert!(cached.get("passwordHash").is_none() && cached.get("password_hash").is_none(), "{cached}");
}

#[tokio::test]
async fn a_correlation_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/health")).header("x-correlation-id", "abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-correlation-id"], "abc-123");
    let res = app.get("/health", None).await;
    let generated = res.headers()["x-correlation-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
}

#[tokio::test]
async fn health_is_503_while_postgres_is_unreachable_and_recovers_when_it_returns() {
    let mut config = mfe_testkit::service::test_config(Service::Auth).await;
    let mut url = url::Url::parse(&config.database_url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()).parse().unwrap();
    let mut outage = Forwarder::start(target).await;
    url.set_port(Some(outage.port)).unwrap();
    config.database_url = url.to_string();
    let app = spawn_with(config).await;

    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["dependencies"]["database"]["status"], "up");
    assert_eq!(body["dependencies"]["broker"]["status"], "up");
    assert_eq!(body["dependencies"]["redis"]["status"], "up");

    outage.cut().await;
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["dependencies"]["database"]["status"], "down", "{body}");
    assert_eq!(body["dependencies"]["redis"]["status"], "up");

    outage.restore().await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..20 {
        status = app.get("/health", None).await.status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, StatusCode::OK, "health recovers once the database answers again");
}

#[tokio::test]
async fn a_service_started_without_its_database_reports_503_instead_of_failing() {
    let mut config = mfe_testkit::service::test_config(Service::Auth).await;
    config.database_url = format!("postgres://postgres:postgres@127.0.0.1:{}/auth_db", mfe_testkit::net::closed_port());
    let app = spawn_with(config).await;
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["dependencies"]["database"]["status"], "down");
    let res = app.signin("a@example.com", "s3cret-pass", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "requests needing the database answer 503");
}
