//! A route over several replicas of its service (`AUTH_SERVICE_URL=http://a,http://b`): round
//! robin, a replica that refuses connections or fails its health check taken out, requests
//! that could not reach one replica sent to another when that is safe — and only then.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use crate::common::{config, spawn_gateway, spawn_upstream};
use mfe_gateway::GatewayConfig;
use serde_json::Value;
use tokio::io::AsyncReadExt;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Every route over `urls`, health checks every 200 ms.
fn replicated(urls: &[&str]) -> GatewayConfig {
    let mut cfg = config(urls[0]);
    for route in &mut cfg.routes {
        route.upstreams = urls.iter().map(|u| u.to_string()).collect();
    }
    cfg.health_interval = Duration::from_millis(200);
    cfg
}

/// A port nothing listens on: connections to it are refused.
async fn dead_url() -> String {
    format!("http://127.0.0.1:{}", mfe_testkit::net::closed_port())
}

/// A server that accepts, reads the request head and closes without answering: the request
/// reached it, the response never comes.
async fn hang_up_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    format!("http://{addr}")
}

/// The replica (its `Host`) that answered each of `n` echo requests, counted.
async fn hosts(base: &str, method: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let resp = client()
            .request(method.parse().unwrap(), format!("{base}/api/payments/echo"))
            .body(if method == "GET" { String::new() } else { format!("{{\"n\":{i}}}") })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} #{i}");
        let v: Value = resp.json().await.unwrap();
        *seen.entry(v["headers"]["host"].as_str().unwrap().to_string()).or_default() += 1;
    }
    seen
}

async fn health(base: &str) -> Value {
    client().get(format!("{base}/health")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn requests_are_spread_over_every_replica_and_health_lists_each() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (a, b) = (spawn_upstream().await, spawn_upstream().await);
    let gw = spawn_gateway(replicated(&[&a.url, &b.url])).await;
    let seen = hosts(&gw.base, "GET", 10).await;
    assert_eq!(seen.get(&a.addr.to_string()), Some(&5), "{seen:?}");
    assert_eq!(seen.get(&b.addr.to_string()), Some(&5), "{seen:?}");
    let h = health(&gw.base).await;
    assert_eq!(h["upstreams"]["payments"], "up");
    assert_eq!(h["replicas"]["payments"][&a.url], "up", "{h}");
    assert_eq!(h["replicas"]["payments"][&b.url], "up", "{h}");
}

#[tokio::test]
async fn a_replica_that_refuses_connections_costs_no_request_not_even_a_post() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (dead, alive) = (dead_url().await, spawn_upstream().await);
    let mut cfg = replicated(&[&dead, &alive.url]);
    cfg.health_interval = Duration::from_secs(3600);
    let gw = spawn_gateway(cfg).await;
    // Nothing of a request is sent on a connection that could not be opened, so even a
    // non-idempotent one goes to the other replica.
    let seen = hosts(&gw.base, "POST", 6).await;
    assert_eq!(seen, BTreeMap::from([(alive.addr.to_string(), 6)]));
    let h = health(&gw.base).await;
    assert_eq!(h["replicas"]["payments"][&dead], "down", "taken out at its first refusal: {h}");
    assert_eq!(h["upstreams"]["payments"], "up", "{h}");
}

#[tokio::test]
async fn a_replica_failing_its_health_check_leaves_the_rotation_and_returns() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (a, b) = (spawn_upstream().await, spawn_upstream().await);
    let gw = spawn_gateway(replicated(&[&a.url, &b.url])).await;
    a.state.unhealthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hosts(&gw.base, "GET", 6).await, BTreeMap::from([(b.addr.to_string(), 6)]));
    assert_eq!(health(&gw.base).await["replicas"]["payments"][&a.url], "down");
    a.state.unhealthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hosts(&gw.base, "GET", 6).await.len(), 2, "back in the rotation");
}

#[tokio::test]
async fn a_request_lost_after_sending_is_retried_only_when_sending_it_twice_is_harmless() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (hang_up, alive) = (hang_up_url().await, spawn_upstream().await);
    let mut cfg = replicated(&[&hang_up, &alive.url]);
    cfg.health_interval = Duration::from_secs(3600);
    let gw = spawn_gateway(cfg.clone()).await;
    // A bodiless GET may run twice: the client gets the other replica's answer.
    assert_eq!(hosts(&gw.base, "GET", 2).await, BTreeMap::from([(alive.addr.to_string(), 2)]));

    // A POST that reached a replica may have done its work there: 502, never a second try.
    let gw = spawn_gateway(cfg).await;
    let mut statuses = Vec::new();
    for i in 0..2 {
        let resp = client().post(format!("{}/api/payments/echo", gw.base)).body(format!("{{\"n\":{i}}}")).send().await;
        statuses.push(resp.unwrap().status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502], "round robin gives each replica one POST; the lost one is not replayed");
}

#[tokio::test]
async fn a_route_whose_replicas_are_all_down_answers_503() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (a, b) = (spawn_upstream().await, spawn_upstream().await);
    let gw = spawn_gateway(replicated(&[&a.url, &b.url])).await;
    a.state.unhealthy.store(true, Ordering::Relaxed);
    b.state.unhealthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let resp = client().get(format!("{}/api/payments/echo", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(health(&gw.base).await["upstreams"]["payments"], "down");
}
