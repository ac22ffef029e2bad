//! The reverse proxy against a real HTTP upstream on a free port: methods, bodies, headers,
//! streaming, and the 404/502/503/504 error mapping.

use crate::common;

use std::{sync::atomic::Ordering, time::Duration};

use crate::common::{config, spawn_gateway, spawn_upstream};
use serde_json::Value;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn every_method_reaches_the_upstream_with_path_query_and_body_unchanged() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let body = if method == "GET" { String::new() } else { format!("{{\"via\":\"{method}\"}}") };
        let resp = client()
            .request(method.parse().unwrap(), format!("{}/api/payments/echo?page=2&q=a%20b", gw.base))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/api/payments/echo");
        assert_eq!(v["query"], "page=2&q=a%20b");
        assert_eq!(v["body"], body);
        assert_eq!(v["headers"]["content-type"], "application/json");
    }
}

#[tokio::test]
async fn forwarding_headers_are_added_and_the_correlation_id_is_propagated_and_echoed() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let resp = client()
        .get(format!("{}/api/auth/echo", gw.base))
        .header("x-correlation-id", "req-42")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "req-42");
    let v: Value = resp.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-correlation-id"], "req-42");
    // 127.0.0.1 is a trusted proxy (the default TRUSTED_PROXIES): its list is extended, and the
    // client it names is the first untrusted hop from the right.
    assert_eq!(h["x-forwarded-for"], "203.0.113.5, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.5");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    assert_eq!(h["host"], upstream.addr.to_string());

    let resp = client().get(format!("{}/api/auth/echo", gw.base)).send().await.unwrap();
    let generated = resp.headers()["x-correlation-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["x-correlation-id"], generated);
}

#[tokio::test]
async fn a_client_that_is_not_a_trusted_proxy_cannot_forge_its_forwarded_address() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    // 127.0.0.2 is loopback but not in the default TRUSTED_PROXIES (127.0.0.1, ::1).
    let forger = reqwest::Client::builder().no_proxy().local_address("127.0.0.2".parse().ok()).build().unwrap();
    let resp = forger
        .get(format!("{}/api/auth/echo", gw.base))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.2", "{h}");
    assert_eq!(h["x-real-ip"], "127.0.0.2", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port), "{h}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_in_both_directions() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let v: Value = client()
        .get(format!("{}/api/admin/echo", gw.base))
        .header("connection", "x-client-private")
        .header("x-client-private", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = v["headers"].as_object().unwrap();
    for dropped in ["x-client-private", "proxy-authorization", "te"] {
        assert!(!h.contains_key(dropped), "{dropped} reached the upstream: {h:?}");
    }
    assert_eq!(h["x-kept"], "yes");

    let resp = client().get(format!("{}/api/admin/hop", gw.base)).send().await.unwrap();
    assert!(resp.headers().get("x-upstream-private").is_none(), "{:?}", resp.headers());
    assert!(resp.headers().get("keep-alive").is_none(), "{:?}", resp.headers());
    assert_eq!(resp.headers()["x-kept"], "yes");
}

#[tokio::test]
async fn a_large_body_streams_through_in_both_directions() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let size: u64 = 20 * 1024 * 1024;
    let v: Value = client()
        .put(format!("{}/api/profile/upload", gw.base))
        .body(reqwest::Body::wrap_stream(common::chunks(size)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["bytes"], size);
    assert_eq!(upstream.state.uploaded.load(Ordering::Relaxed), size);

    let mut resp = client().get(format!("{}/api/profile/download?bytes={size}", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
}

#[tokio::test]
async fn an_unknown_path_is_a_json_404() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    for path in ["/api/unknown/x", "/api/authx/echo", "/"] {
        let resp = client().get(format!("{}{path}", gw.base)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_json_502() {
    let _serial = mfe_testkit::serial::group(module_path!());
    // A port that was free a moment ago: nothing listens there.
    let free = mfe_testkit::net::closed_port();
    let gw = spawn_gateway(config(&format!("http://127.0.0.1:{free}"))).await;
    let resp = client().post(format!("{}/api/auth/signin", gw.base)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().contains_key("x-correlation-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_gateway");
    assert!(v["error"]["message"].as_str().unwrap().contains("cannot reach the auth service"), "{v}");
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_is_a_json_504() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.upstream_timeout = Duration::from_millis(300);
    let gw = spawn_gateway(cfg).await;
    let started = std::time::Instant::now();
    let resp = client().get(format!("{}/api/payments/slow?ms=3000", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "gateway_timeout");
    let fast = client().get(format!("{}/api/payments/slow?ms=10", gw.base)).send().await.unwrap();
    assert_eq!(fast.status(), 200);
}

#[tokio::test]
async fn an_upstream_failing_its_health_check_is_a_json_503_until_it_recovers() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.health_interval = Duration::from_millis(100);
    let gw = spawn_gateway(cfg).await;
    upstream.state.unhealthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = client().get(format!("{}/api/admin/echo", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    let health: Value = client().get(format!("{}/health", gw.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["upstreams"]["admin"], "down");

    upstream.state.unhealthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = client().get(format!("{}/api/admin/echo", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status_and_time_the_upstream() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    for _ in 0..3 {
        client().get(format!("{}/api/payments/echo", gw.base)).send().await.unwrap();
    }
    let text = client().get(format!("{}/metrics", gw.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("gateway_proxy_requests_total{")
            && l.contains("route=\"payments\"")
            && l.contains("status=\"200\"")
            && l.ends_with(" 3")),
        "{text}"
    );
    assert!(
        text.contains("gateway_upstream_duration_seconds_count{route=\"payments\",service=\"gateway\"} 3"),
        "{text}"
    );
}

/// The value of the sample of `metric` whose labels include `label`.
fn sample(text: &str, metric: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn http_metrics_use_the_seeds_names_with_the_route_template_never_the_raw_path() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let id = uuid::Uuid::new_v4().to_string();
    for _ in 0..3 {
        // Answered 404 by the upstream (no such route there): still the gateway's template.
        client().get(format!("{}/api/payments/{id}", gw.base)).send().await.unwrap();
    }
    client().post(format!("{}/api/payments/echo", gw.base)).body("x").send().await.unwrap();
    client().get(format!("{}/api/unknown/{id}", gw.base)).send().await.unwrap();
    client().get(format!("{}/health", gw.base)).send().await.unwrap();
    let text = client().get(format!("{}/metrics", gw.base)).send().await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(&text, "http_requests_total", r#"method="GET",path="/api/payments/{*path}",status="404""#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "http_requests_total", r#"method="POST",path="/api/payments/{*path}",status="200""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "http_requests_total", r#"method="GET",path="unmatched",status="404""#), Some(1.0));
    assert_eq!(sample(&text, "http_requests_total", r#"method="GET",path="/health",status="200""#), Some(1.0));
    assert!(!text.contains(&id), "no raw id in any label:\n{text}");
    assert_eq!(
        sample(
            &text,
            "http_request_duration_seconds_count",
            r#"method="GET",path="/api/payments/{*path}",status="404""#
        ),
        Some(3.0),
        "{text}"
    );
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        let value = text
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"));
        assert!(value > 0.0, "{name} = {value}");
    }
}

#[tokio::test]
async fn a_shutdown_lets_the_request_in_flight_finish_then_stops_accepting() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let app = mfe_gateway::Application::build(config(&upstream.url)).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = client();
    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/api/auth/slow?ms=300"));
        async move { client.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let answered = in_flight.await.unwrap().expect("the request in flight is answered");
    assert_eq!(answered.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server returns once its connections are done")
        .unwrap()
        .unwrap();
    assert!(client.get(format!("{base}/health")).send().await.is_err(), "nothing listens any more");
}
