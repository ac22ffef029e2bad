//! `mfe dashboard`, the real binary against the test stack (test.env): its access token, the
//! resources it lists, the live event stream and the confirmation a dead-letter replay needs.
//! Each test starts its own dashboard on a port the system picks, under its own
//! `mfe.test.<uuid>` event topology (`--prefix`), so live queues are never touched; nothing here
//! restarts or resets anything of the shared stack (actions are only asked, never confirmed,
//! except the replay of the test's own dead letter).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mfe_events::{handler_fn, types, Envelope, HandlerError, Hub, HubConfig, Subscription};
use serde_json::{json, Value};
use uuid::Uuid;

const HINT: &str = "start the test stack: `set -a; . ./test.env; set +a; target/debug/mfe infra start`";

/// A running `mfe dashboard`, killed on drop.
pub struct Dashboard {
    child: Child,
    /// The URL it printed, with its token.
    pub url: String,
    pub base: String,
    token: String,
}

impl Dashboard {
    /// On a port the system picks, under the topology `prefix`.
    pub fn start(prefix: &str) -> Dashboard {
        Self::start_with(Some(prefix), 0, &[])
    }

    /// On `port` (0: one the system picks), on the live topology without a prefix, with `env`
    /// added to the test stack's variables.
    pub fn start_with(prefix: Option<&str>, port: u16, env: &[(&str, String)]) -> Dashboard {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(["dashboard", "--port", &port.to_string()]);
        if let Some(p) = prefix {
            cmd.args(["--prefix", p]);
        }
        let mut child = cmd
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mfe dashboard starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the URL on stdout");
        let url = line.trim().to_string();
        let parsed = url::Url::parse(&url).unwrap_or_else(|e| panic!("{e}: {url:?}"));
        assert_eq!(parsed.host_str(), Some("127.0.0.1"), "bound to loopback only: {url}");
        let token = parsed.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).expect("?token=");
        let base = format!("http://127.0.0.1:{}", parsed.port().unwrap());
        Dashboard { child, url, base, token }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        let r = Self::client().get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = Self::client()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prefix() -> String {
    format!("mfe.test.{}", Uuid::new_v4().simple())
}

async fn hub(prefix: &str) -> Hub {
    let mut cfg = HubConfig::from_env()
        .expect("event hub configuration")
        .isolated(prefix)
        .with_connection_name(format!("{prefix}.dashboard-test"));
    cfg.retry_delays = vec![Duration::from_millis(50), Duration::from_millis(100)];
    Hub::connect(cfg).await.unwrap_or_else(|e| panic!("{e} — {HINT}"))
}

/// A consumer (`profile`, under a topology of the test's own) that fails while `broken` is set,
/// counting its runs per event, and one event it has dead-lettered after its retries.
pub struct DeadLetter {
    pub prefix: String,
    pub hub: Hub,
    pub sub: Subscription,
    pub broken: Arc<AtomicBool>,
    pub runs: Arc<Mutex<HashMap<Uuid, usize>>>,
    pub event: Envelope,
}

impl DeadLetter {
    /// Deletes the test's topology.
    pub async fn cleanup(self) {
        cleanup(self.hub, &[self.sub]).await;
    }
}

/// Publishes the event; its dead letter is in the DLQ after the consumer's retries (50, 100 ms).
pub async fn dead_letter_setup() -> DeadLetter {
    let p = prefix();
    let hub = hub(&p).await;
    let sub = Subscription::durable("profile", &["auth.#"]).isolated(&p);
    let broken = Arc::new(AtomicBool::new(true));
    let runs: Arc<Mutex<HashMap<Uuid, usize>>> = Default::default();
    let (b, r) = (broken.clone(), runs.clone());
    let handle = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |e: Envelope| {
                let (b, r) = (b.clone(), r.clone());
                async move {
                    *r.lock().unwrap().entry(e.id).or_default() += 1;
                    if b.load(Ordering::SeqCst) {
                        return Err(HandlerError::retry("profile store unavailable"));
                    }
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe");
    std::mem::forget(handle);
    let event = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", json!({"userId": "dash-dlq"}));
    hub.publish(&event).await.unwrap();
    DeadLetter { prefix: p, hub, sub, broken, runs, event }
}

async fn cleanup(hub: Hub, subs: &[Subscription]) {
    let _ = hub.delete_isolated_topology(subs).await;
    hub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_api_answer_401_without_the_token_and_the_cookie_opens_them() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let d = Dashboard::start(&prefix());
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in ["/", "/app.js", "/api/resources", "/api/events/dlq"] {
        let r = plain.get(format!("{}{path}", d.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without the token");
    }
    let wrong = plain.get(format!("{}/?token={}", d.base, "0".repeat(64))).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401, "a wrong token");
    let bad_cookie =
        plain.get(format!("{}/api/resources", d.base)).header("cookie", "mfe_dashboard_1=nope").send().await.unwrap();
    assert_eq!(bad_cookie.status().as_u16(), 401);

    // The printed URL opens the page and sets the cookie the page's own requests carry.
    let page = plain.get(&d.url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let cookie = page.headers().get("set-cookie").expect("a cookie").to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(page.text().await.unwrap().contains("<script src=\"/app.js\">"));
    let pair = cookie.split(';').next().unwrap().to_string();
    for path in ["/app.js", "/app.css", "/api/metrics"] {
        let r = plain.get(format!("{}{path}", d.base)).header("cookie", &pair).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} with the cookie");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_list_every_component_service_and_the_gateway_with_a_state() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let d = Dashboard::start(&prefix());
    let r = d.get("/api/resources").await;
    let list = r["resources"].as_array().unwrap();
    let by_name: HashMap<&str, &Value> = list.iter().map(|x| (x["name"].as_str().unwrap(), x)).collect();
    for name in [
        "auth_db",
        "payments_db",
        "admin_db",
        "profile_db",
        "legacy_db",
        "rabbitmq",
        "redis",
        "nginx",
        "auth",
        "payments",
        "admin",
        "profile",
        "gateway",
    ] {
        let x = by_name.get(name).unwrap_or_else(|| panic!("{name} is listed: {r}"));
        assert!(x["state"].as_str().is_some_and(|s| !s.is_empty()), "{name} has a state: {x}");
        assert!(x["healthy"].is_boolean(), "{x}");
        if x["healthy"] == false {
            assert!(x["why"].as_str().is_some_and(|s| !s.is_empty()), "{name} is not ready and says why: {x}");
        }
    }
    for db in ["auth_db", "rabbitmq", "redis"] {
        assert_eq!(by_name[db]["healthy"], true, "{db} of the test stack is up — {HINT}");
        assert!(by_name[db]["log_tail"].as_array().is_some_and(|l| !l.is_empty()), "{db}'s log tail");
    }
    assert_eq!(r["runtime"], "native");
    // An action is only described until it is confirmed (nothing restarts here).
    let (status, body) = d.post("/api/actions", json!({"action": "restart", "target": "redis"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "confirmation_required");
    assert!(body["error"]["message"].as_str().unwrap().contains("restart redis"), "{body}");
    let (status, _) = d.post("/api/actions", json!({"action": "reset", "target": "payments_db"})).await;
    assert_eq!(status, 409);
    let (status, _) = d.post("/api/actions", json!({"action": "restart", "target": "nope"})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_an_event_published_during_the_test() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let p = prefix();
    let d = Dashboard::start(&p);
    let hub = hub(&p).await;
    let resp = Dashboard::client()
        .get(format!("{}/api/events/stream?type=auth.%23", d.base))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut published: Option<Envelope> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("the event arrives in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream stays open").unwrap()));
        if published.is_none() && text.contains("event: ready") {
            // The tail consumes: publish now.
            assert!(text.contains(&format!("{p}.events")), "tails the test's exchange: {text}");
            let e = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", json!({"userId": "dash-1"}))
                .with_correlation_id(Some("dash-corr-1".into()));
            hub.publish(&e).await.unwrap();
            published = Some(e);
        }
        if let Some(e) = &published {
            if text.contains(&e.id.to_string()) {
                break;
            }
        }
    }
    let e = published.unwrap();
    let line = text.lines().find(|l| l.starts_with("data:") && l.contains(&e.id.to_string())).unwrap();
    let v: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(v["routingKey"], "auth.user.login");
    assert_eq!(v["envelope"]["correlationId"], "dash-corr-1");
    drop(body);
    cleanup(hub, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_replay_through_the_api_needs_confirmation() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dl = dead_letter_setup().await;
    let (broken, runs, event) = (dl.broken.clone(), dl.runs.clone(), dl.event.clone());
    let d = Dashboard::start(&dl.prefix);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let list = loop {
        let list = d.get("/api/events/dlq").await;
        if !list["deadLetters"].as_array().unwrap().is_empty() || tokio::time::Instant::now() >= deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letters = list["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list}");
    assert_eq!(letters[0]["id"], event.id.to_string());
    assert_eq!(letters[0]["consumer"], "profile");
    assert_eq!(letters[0]["attempts"], 3);

    // Without confirm: a 409 saying what would happen, and nothing moves.
    let before = runs.lock().unwrap()[&event.id];
    let (status, body) = d.post("/api/events/dlq/replay", json!({"id": event.id.to_string()})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "confirmation_required");
    assert!(body["error"]["message"].as_str().unwrap().contains("replay 1 dead letters"), "{body}");
    assert_eq!(body["preview"]["perConsumer"]["profile"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs.lock().unwrap()[&event.id], before, "nothing was replayed");
    assert_eq!(d.get("/api/events/dlq").await["total"], 1);
    // Nothing named at all is refused; an unknown id is not found.
    assert_eq!(d.post("/api/events/dlq/replay", json!({})).await.0, 400);
    assert_eq!(d.post("/api/events/dlq/replay", json!({"id": Uuid::new_v4().to_string()})).await.0, 404);

    // Confirmed: back to profile, handled once more, the DLQ empty.
    broken.store(false, Ordering::SeqCst);
    let (status, body) = d.post("/api/events/dlq/replay", json!({"id": event.id.to_string(), "confirm": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"].as_array().unwrap().len(), 1, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runs.lock().unwrap()[&event.id] == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs.lock().unwrap()[&event.id], before + 1, "profile handled the replay");
    assert_eq!(d.get("/api/events/dlq").await["total"], 0);
    drop(d);
    dl.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_is_sampled_and_the_stream_says_so() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let p = prefix();
    let d = Dashboard::start(&p);
    let hub = hub(&p).await;
    let resp =
        reqwest::Client::new().get(format!("{}/api/events/stream", d.base)).bearer_auth(&d.token).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: ready") {
        text.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    const N: usize = 6000;
    let burst: Vec<Envelope> =
        (0..N).map(|i| Envelope::new(types::AUTH_USER_LOGIN, "auth-service", json!({"n": i}))).collect();
    for chunk in burst.chunks(500) {
        assert!(hub.publish_batch(chunk).await.iter().all(|r| r.is_ok()));
    }
    // Read until the stats have counted every event of the burst.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stats: Vec<Value> = Vec::new();
    let mut events = 0usize;
    let mut pending = String::new();
    while stats.last().is_none_or(|s| s["total_seen"].as_u64().unwrap() < N as u64) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("the burst is counted in time: {stats:?}"));
        let chunk = chunk.unwrap_or_else(|| panic!("the stream ended: {stats:?}")).unwrap();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let message: String = pending.drain(..end + 2).collect();
            if message.starts_with("event: event") {
                events += 1;
            } else if let Some(data) = message.strip_prefix("event: stats\ndata: ") {
                stats.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    assert!(stats.iter().any(|s| s["sampled"] == true), "the stream says it samples: {stats:?}");
    assert!(stats.iter().all(|s| s["shown"].as_u64().unwrap() <= 200), "at most 200 a second: {stats:?}");
    let shown: u64 = stats.iter().map(|s| s["shown"].as_u64().unwrap()).sum();
    assert!(events as u64 <= shown + 200, "the page got what the stats say was shown ({events} vs {shown})");
    assert!((events as u64) < N as u64 / 4, "most of the burst was not sent to the page: {events}");
    drop(body);
    cleanup(hub, &[]).await;
}
