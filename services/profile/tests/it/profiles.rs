use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn new_user_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_registration_event_creates_an_empty_profile_once() {
    let app = spawn_app().await;
    let user_id = new_user_id();
    let token = app.token_for(&user_id);
    assert_eq!(app.get_me(&token).await.status(), StatusCode::NOT_FOUND, "no profile before the event");

    let env = app.publish_registered(&user_id).await;
    let res = app.wait_for_profile(&token, Duration::from_secs(10)).await;
    assert_eq!(res.status(), StatusCode::OK, "the profile appears via auth.user.registered");
    let profile: Value = res.json().await.unwrap();
    assert_eq!(profile["userId"], user_id.as_str());
    assert_eq!(profile["preferences"], json!({}));
    assert_eq!(profile["bio"], Value::Null);

    // The same event again (a redelivery) and a PUT in between: nothing is overwritten.
    assert_eq!(app.put_me(&token, &json!({"bio": "hello"})).await.status(), StatusCode::OK);
    app.hub.publish(&env).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = $1")
            .bind(env.id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(n, 1, "an event id is processed once");
        // Give the duplicate time to arrive and be skipped.
        if tokio::time::Instant::now() >= deadline - Duration::from_secs(8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n_profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM user_profiles WHERE user_id = $1")
        .bind(&user_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n_profiles, 1);
    let profile: Value = app.get_me(&token).await.json().await.unwrap();
    assert_eq!(profile["bio"], "hello");
}

#[tokio::test]
async fn a_put_invalidates_the_cached_profile() {
    let app = spawn_app().await;
    let user_id = new_user_id();
    let token = app.token_for(&user_id);
    app.publish_registered(&user_id).await;
    assert_eq!(app.wait_for_profile(&token, Duration::from_secs(10)).await.status(), StatusCode::OK);
    // The consumer deletes the entry just after its commit, so a GET that raced it may have
    // filled the cache only for the delete to empty it: read until a GET is a hit.
    let mut cached = Value::Null;
    for _ in 0..50 {
        let before = app.profile_cache_hits().await;
        cached = app.get_me(&token).await.json().await.unwrap();
        if app.profile_cache_hits().await > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.profile_cache_hits().await >= 1.0, "a GET of the new profile was a cache hit");
    assert_eq!(cached["phone"], Value::Null);

    let res = app
        .put_me(
            &token,
            &json!({"phone": "+44 20 7946 0958", "avatarUrl": "https://cdn.example.com/a.png", "preferences": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let fresh: Value = app.get_me(&token).await.json().await.unwrap();
    assert_eq!(fresh["phone"], "+44 20 7946 0958");
    assert_eq!(fresh["preferences"], json!({"theme": "dark"}));

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"type="auth.user.registered""#) && metrics.contains("events_consumed_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_profile_input_is_refused_with_422_and_malformed_json_with_400() {
    let app = spawn_app().await;
    let token = app.token_for(&new_user_id());
    for body in [
        json!({"preferences": ["not", "an", "object"]}),
        json!({"preferences": {"blob": "x".repeat(17 * 1024)}}),
        json!({"phone": "call me maybe"}),
        json!({"avatarUrl": "javascript:alert(1)"}),
        json!({"userId": "someone-else"}),
    ] {
        let res = app.put_me(&token, &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "validation_failed");
    }
    let res = app
        .client
        .put(app.url("/api/profile/me"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: Value = res.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().starts_with("malformed JSON body"), "{err}");
    assert_eq!(app.client.get(app.url("/api/profile/me")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    for dep in ["database", "broker", "redis"] {
        assert_eq!(body["dependencies"][dep]["status"], "up", "{body}");
    }
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains(r#"http_requests_total{method="GET",path="/health""#));
}

/// PUT `/api/profile/me` with `mib` MiB of spaces streamed as the body, declared or chunked.
async fn put_oversized(
    app: &crate::helpers::TestApp,
    token: &str,
    mib: usize,
    declared: bool,
) -> reqwest::Result<StatusCode> {
    static CHUNK: [u8; 65536] = [b' '; 65536];
    let n_chunks = mib * 16;
    let body = futures::stream::iter((0..n_chunks).map(|_| Ok::<_, std::io::Error>(&CHUNK[..])));
    let mut req = app
        .client
        .put(app.url("/api/profile/me"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body));
    if declared {
        req = req.header("content-length", (n_chunks * CHUNK.len()).to_string());
    }
    Ok(req.send().await?.status())
}

// A body over the limit is answered 413 and the rest of it read and discarded, so a client (the
// gateway, nginx) still sending it gets the answer instead of a reset connection (a 502 at the
// gateway).
#[tokio::test]
async fn an_oversized_streamed_body_is_answered_413_without_resetting_the_connection() {
    let app = spawn_app().await;
    let token = app.token_for(&new_user_id());
    for attempt in 0..4 {
        let declared = attempt % 2 == 0;
        let status = put_oversized(&app, &token, 32, declared).await.unwrap_or_else(|e| {
            panic!("attempt {attempt} (declared length: {declared}): no answer, the connection failed: {e:?}")
        });
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "attempt {attempt} (declared length: {declared})");
    }
    // A body within the limit still works on the same client (its pooled connections are sound).
    assert_eq!(app.put_me(&token, &json!({"bio": "after the big one"})).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_valid_token_of_a_user_auth_does_not_know_writes_no_profile() {
    let known = uuid::Uuid::new_v4().to_string();
    let secret = mfe_kit::ServiceConfig::from_env(mfe_core::Service::Profile).unwrap().jwt_secret;
    let auth = mfe_testkit::service::fake_auth_users(secret.expose(), vec![known.clone()]).await;
    let app = crate::helpers::spawn_app_with(|config| config.urls.auth = auth.into()).await;

    let ghost = uuid::Uuid::new_v4().to_string();
    let res = app.put_me(&app.token_for(&ghost), &json!({"bio": "nobody"})).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["message"], "the account of this token no longer exists");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM user_profiles WHERE user_id = $1")
        .bind(&ghost)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "no profile was created for the unknown user");

    let res = app.put_me(&app.token_for(&known), &json!({"bio": "somebody"})).await;
    assert_eq!(res.status(), StatusCode::OK);
}
