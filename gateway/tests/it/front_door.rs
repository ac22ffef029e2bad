//! The gateway's defences towards its clients before a request is read: the header read timeout
//! (a slowloris socket is closed), the head size limit (431) and the per-user WebSocket cap.

use std::time::{Duration, Instant};

use crate::common::{config, spawn_gateway, spawn_upstream};
use mfe_gateway::config::FrontDoor;
use mfe_kit::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{connect_async, tungstenite};

/// Reads until the peer closes (or errors); returns what it sent, or `None` if it is still open
/// after `max`.
async fn read_until_closed(tcp: &mut TcpStream, max: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + max;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_socket_sending_its_headers_slowly_is_closed_after_the_header_read_timeout() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.front = FrontDoor { header_read_timeout: Duration::from_millis(1500), ..FrontDoor::default() };
    let gw = spawn_gateway(cfg).await;

    let started = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(b"GET /api/auth/echo HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // One header byte every 300 ms: the socket is alive, the head never completes in time.
    let mut closed_after = None;
    for _ in 0..40 {
        if tcp.write_all(b"X").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        if let Some(_answer) = read_until_closed(&mut tcp, Duration::from_millis(300)).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the gateway kept a slowloris socket open for 12 s");
    assert!(
        closed_after >= Duration::from_millis(1400) && closed_after < Duration::from_secs(6),
        "closed after {closed_after:?}, expected about 1.5 s"
    );

    // An idle keep-alive connection counts as a request not sent yet: closed the same way.
    let mut idle = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    idle.write_all(b"GET /api/auth/echo HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await.expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A prompt client is unaffected.
    let resp = reqwest::Client::new().get(format!("{}/api/auth/echo", gw.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_200_kb_header_is_answered_431_and_a_normal_one_passes() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let gw = spawn_gateway(config(&upstream.url)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp =
        http.get(format!("{}/api/auth/echo", gw.base)).header("x-big", "a".repeat(200 * 1024)).send().await.unwrap();
    assert_eq!(resp.status(), 431);
    // Under the default limit (64 KiB): a 32 KB cookie still passes.
    let resp =
        http.get(format!("{}/api/auth/echo", gw.base)).header("cookie", "a".repeat(32 * 1024)).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // Configurable: at 16 KiB the 32 KB cookie is too large.
    let mut cfg = config(&upstream.url);
    cfg.front = FrontDoor { max_header_bytes: 16 * 1024, ..FrontDoor::default() };
    let small = spawn_gateway(cfg).await;
    let resp =
        http.get(format!("{}/api/auth/echo", small.base)).header("cookie", "a".repeat(32 * 1024)).send().await.unwrap();
    assert_eq!(resp.status(), 431);
}

#[tokio::test]
async fn a_users_websocket_over_the_cap_is_refused_with_429_and_closing_one_frees_a_slot() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = spawn_upstream().await;
    let mut cfg = config(&upstream.url);
    cfg.front = FrontDoor { ws_max_per_user: 2, ..FrontDoor::default() };
    let gw = spawn_gateway(cfg).await;
    let token = gw.token("u-capped", Role::Customer, None);
    let (first, _) = connect_async(gw.ws_url(&token)).await.expect("first socket");
    let (_second, _) = connect_async(gw.ws_url(&token)).await.expect("second socket");
    match connect_async(gw.ws_url(&token)).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("WS_MAX_CONNECTIONS_PER_USER=2"), "{body}");
        }
        Err(other) => panic!("expected an HTTP 429, got {other}"),
        Ok(_) => panic!("a third socket of the user must be refused"),
    }
    // Another user is not affected.
    let other = gw.token("u-other", Role::Customer, None);
    connect_async(gw.ws_url(&other)).await.expect("another user's socket");

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect_async(gw.ws_url(&token)).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the closed socket's slot was never freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", gw.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("gateway_ws_rejected_total{reason=\"too_many_connections\""), "{metrics}");
}
