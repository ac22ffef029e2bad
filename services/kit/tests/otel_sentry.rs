//! With `SENTRY_DSN` set, an `error!` is sent to the Sentry endpoint of the DSN (here a local
//! HTTP receiver standing in for Sentry), tagged with the environment of `SENTRY_ENVIRONMENT`.
//! Its own test binary: the DSN must be set before the process's one subscriber exists.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, routing::post, Router};

type Bodies = Arc<Mutex<Vec<Bytes>>>;

#[tokio::test]
async fn an_error_log_is_reported_to_the_sentry_dsn_with_its_environment() {
    let bodies: Bodies = Arc::default();
    let app = Router::new()
        .route(
            "/api/{project}/envelope/",
            post(|State(b): State<Bodies>, body: Bytes| async move {
                b.lock().unwrap().push(body);
                "{}"
            }),
        )
        .with_state(bodies.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the sentry receiver");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
    std::env::set_var("SENTRY_DSN", format!("http://publickey@{addr}/42"));
    std::env::set_var("SENTRY_ENVIRONMENT", "observability-test");
    mfe_kit::telemetry::init_tracing("sentry-test-service");
    assert!(mfe_kit::sentry::enabled(), "the sentry client is initialised when SENTRY_DSN is set");

    let marker = format!("sentry-marker-{}", uuid::Uuid::new_v4().simple());
    tracing::error!("{marker}");
    mfe_kit::sentry::flush();

    let mut text = String::new();
    for _ in 0..50 {
        text = bodies.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        if text.contains(&marker) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains(&marker), "the error reaches the sentry endpoint; received: {text:?}");
    assert!(text.contains("observability-test"), "the event carries SENTRY_ENVIRONMENT");
    mfe_kit::telemetry::shutdown();
}
