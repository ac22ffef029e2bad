use std::time::Duration;

use mfe_kit::{config::Service, testing};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_with, PgOutage};

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
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    assert!(text.contains("# TYPE http_requests_total counter"), "{text}");
    assert!(text.contains(r#"route="/api/auth/me""#) && text.contains(r#"status="200""#), "{text}");
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"), "{text}");
    assert_eq!(sample(&text, "cache_hits_total", r#"cache="users""#), Some(1.0), "{text}");
    assert_eq!(sample(&text, "cache_misses_total", r#"cache="users""#), Some(1.0), "{text}");
    assert_eq!(sample(&text, "events_published_total", r#"type="auth.user.registered""#), Some(1.0), "{text}");
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
    let mut config = testing::test_config(Service::Auth).await;
    let mut url = url::Url::parse(&config.database_url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()).parse().unwrap();
    let mut outage = PgOutage::start(target).await;
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
    let mut config = testing::test_config(Service::Auth).await;
    config.database_url = format!("postgres://postgres:postgres@127.0.0.1:{}/auth_db", testing::closed_port());
    let app = spawn_with(config).await;
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["dependencies"]["database"]["status"], "down");
    let res = app.signin("a@example.com", "s3cret-pass", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "requests needing the database answer 503");
}
