//! An upload over the services' body limit, streamed through the gateway, comes back as the
//! profile service's own 413 every time — never as the gateway's 502. The service answers
//! before the body has arrived; unless it then reads the rest, closing its socket resets the
//! connection while the gateway is still writing, and the gateway reports the upstream as
//! unreachable (what `mfe test proxy` saw as "gateway: streamed upload … 502").

use crate::proxy_support;

use std::time::Duration;

use mfe_core::Service;
use mfe_kit::{JwtKeys, Role, ServiceConfig};

/// Streams `mib` MiB of spaces to `PUT /api/profile/me` through `gateway`; the answer's status,
/// or the error when there was none.
async fn put_oversized(http: &reqwest::Client, gateway: &str, token: &str, mib: usize) -> Result<u16, String> {
    static CHUNK: [u8; 65536] = [b' '; 65536];
    let n_chunks = mib * 16;
    let body = futures::stream::iter((0..n_chunks).map(|_| Ok::<_, std::io::Error>(&CHUNK[..])));
    let res = http
        .put(format!("{gateway}/api/profile/me"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("content-length", (n_chunks * CHUNK.len()).to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    if status != 413 {
        return Err(format!("answered {status}: {text}"));
    }
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_through_the_gateway_is_the_services_413_every_time() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let secret = ServiceConfig::from_env(Service::Profile).expect("profile configuration").jwt_secret;
    let token = JwtKeys::new(secret.expose())
        .issue(&uuid::Uuid::new_v4().to_string(), Role::Customer, Duration::from_secs(600), None)
        .unwrap()
        .0;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for attempt in 1..=10 {
        let outcome = put_oversized(&http, &stack.gateway, &token, 32).await;
        assert_eq!(outcome, Ok(413), "attempt {attempt}");
    }
}
