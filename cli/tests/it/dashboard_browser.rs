//! `mfe dashboard` in a real browser: headless Chromium (Debian's `chromium`) driven over
//! WebDriver (`chromedriver`, package `chromium-driver`) with fantoccini. The page is loaded
//! from the URL the dashboard printed, as a user would open it.
//!
//! - With the four services and the gateway running (real binaries on fresh databases of the
//!   test stack, exporting their traces to the dashboard): every component is listed healthy, a
//!   payment created through the gateway shows up in the live tail, and its trace link opens one
//!   waterfall holding the gateway's, the payments service's and a consumer's spans.
//! - A dead letter (under the test's own topology) is replayed from the page after the operator
//!   confirms the dialog, and is handled again by its consumer.
//!
//! On a failure the test saves a screenshot to `target/dashboard-browser/<test>.png` and says so.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::dashboard::{dead_letter_setup, Dashboard};
use crate::processes::{binaries, wait_healthy, Proc};

/// A chromedriver on a free port with one headless Chromium session; both end on drop.
struct Browser {
    client: Client,
    driver: Child,
    test: &'static str,
}

impl Browser {
    async fn start(test: &'static str) -> Browser {
        let port = mfe_testkit::closed_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver: {e} — `scripts/install-deps.sh` installs chromium-driver")
            });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connected = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match connected {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("no WebDriver session with chromium within 30 s: {e}"),
            }
        };
        Browser { client, driver, test }
    }

    /// Saves a screenshot, then panics with `msg`.
    async fn fail(&self, msg: String) -> ! {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-browser");
        let path = dir.join(format!("{}.png", self.test));
        let saved = match self.client.screenshot().await {
            Ok(png) => std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, png))
                .map(|_| path.display().to_string()),
            Err(e) => Ok(format!("no screenshot: {e}")),
        };
        panic!("{msg}\nscreenshot: {}", saved.unwrap_or_else(|e| format!("not saved: {e}")));
    }

    /// Evaluates `script` (a function body returning JSON) until `done` accepts its value.
    async fn wait_for(&self, what: &str, within: Duration, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.client.execute(script, vec![]).await {
                Ok(v) if done(&v) => return v,
                Ok(v) => last = v,
                Err(e) => last = json!(format!("script error: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.fail(format!("{what}: not within {} s; last seen: {last}", within.as_secs())).await
    }

    /// Clicks the element `css` finds now (found and clicked in one step: the page redraws its
    /// tables while it polls, which would leave a WebDriver element reference stale).
    async fn click(&self, css: &str) {
        let script = "const e = document.querySelector(arguments[0]); if (!e) return false; e.click(); return true;";
        match self.client.execute(script, vec![json!(css)]).await {
            Ok(Value::Bool(true)) => {}
            Ok(_) => self.fail(format!("no element {css} to click")).await,
            Err(err) => self.fail(format!("cannot click {css}: {err}")).await,
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// The four services and the gateway on free ports, each on a fresh database, every one
/// exporting its spans to `otlp`. Returns the processes and the variables that point at them.
async fn run_the_application(otlp: &str) -> (Vec<Proc>, Vec<(&'static str, String)>) {
    let names = ["auth-service", "payments-service", "admin-service", "profile-service", "mfe-gateway"];
    let bins = binaries(names);
    let ports: Vec<u16> = (0..5).map(|_| mfe_testkit::closed_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let urls = vec![
        ("AUTH_SERVICE_URL", url(0)),
        ("PAYMENTS_SERVICE_URL", url(1)),
        ("ADMIN_SERVICE_URL", url(2)),
        ("PROFILE_SERVICE_URL", url(3)),
        ("GATEWAY_URL", url(4)),
    ];
    let databases = ["AUTH_DATABASE_URL", "PAYMENTS_DATABASE_URL", "ADMIN_DATABASE_URL", "PROFILE_DATABASE_URL"];
    let mut procs = Vec::new();
    for (i, (name, bin)) in names.into_iter().zip(bins).enumerate() {
        let mut env: Vec<(&str, String)> = urls.iter().map(|(k, v)| (*k, v.clone())).collect();
        env.extend([
            ("PORT", ports[i].to_string()),
            ("BIND_ADDR", "127.0.0.1".into()),
            ("GATEWAY_HOST", "127.0.0.1".into()),
            ("GATEWAY_HEALTH_INTERVAL_MS", "200".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.to_string()),
        ]);
        if let Some(var) = databases.get(i) {
            env.push((var, mfe_testkit::fresh_database(&mfe_core::env::get(var)).await));
        }
        procs.push(Proc::spawn(name, bin, &env));
    }
    let client = reqwest::Client::new();
    for (i, p) in procs.iter().enumerate() {
        let health = format!("{}/health", urls[i].1);
        if i < 4 {
            wait_healthy(&client, &health, p, |v| v["status"] == "ok").await;
        } else {
            wait_healthy(&client, &health, p, |v| {
                ["auth", "payments", "admin", "profile"].iter().all(|s| v["upstreams"][s] == "up")
            })
            .await;
        }
    }
    (procs, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_every_component_healthy_tails_a_new_payment_and_opens_its_trace() {
    let _serial = mfe_testkit::serial::group(module_path!());
    // The dashboard first: the services need its address as their OTLP endpoint, and it needs
    // theirs; both are fixed before anything starts.
    let dashboard_port = mfe_testkit::closed_port();
    let (procs, urls) = run_the_application(&format!("http://127.0.0.1:{dashboard_port}")).await;
    let d = Dashboard::start_with(None, dashboard_port, &urls);
    let browser = Browser::start("lists_tails_and_traces").await;
    if let Err(e) = browser.client.goto(&d.url).await {
        browser.fail(format!("cannot open {}: {e}", d.base)).await
    }

    // Resources: every row there, every row healthy (a skipped nginx is healthy: amber).
    let rows = browser
        .wait_for(
            "every component listed healthy",
            Duration::from_secs(60),
            "return [...document.querySelectorAll('#res-table tbody tr')].map(r => [r.dataset.name, r.dataset.healthy]);",
            |v| {
                let rows = v.as_array().map(Vec::as_slice).unwrap_or_default();
                rows.len() >= 5 && rows.iter().all(|r| r[1] == "true")
            },
        )
        .await;
    let names: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r[0].as_str()).collect();
    for want in ["auth", "payments", "admin", "profile", "gateway", "rabbitmq", "redis"] {
        assert!(names.contains(&want), "{want} is listed: {names:?}");
    }

    // Events: the tail runs before the payment is made.
    browser.click("#tabs button[data-tab=events]").await;
    browser
        .wait_for(
            "the tail to start",
            Duration::from_secs(20),
            "return document.querySelector('#ev-stats').textContent;",
            |v| v.as_str().is_some_and(|s| s.starts_with("tailing")),
        )
        .await;
    let gateway = &urls[4].1;
    let http = reqwest::Client::new();
    let signup: Value = http
        .post(format!("{gateway}/api/auth/signup"))
        .json(&json!({"email": format!("dash-{}@example.com", uuid::Uuid::new_v4().simple()),
            "password": "Dashb0ard!Pass", "name": "Dashboard Browser"}))
        .send()
        .await
        .expect("sign up through the gateway")
        .json()
        .await
        .expect("a JSON answer");
    let token = signup["accessToken"].as_str().unwrap_or_else(|| panic!("no accessToken: {signup}"));
    let created = http
        .post(format!("{gateway}/api/payments"))
        .bearer_auth(token)
        .json(&json!({"amount": "3.00", "currency": "EUR", "type": "instant", "description": "dashboard browser test"}))
        .send()
        .await
        .expect("create a payment through the gateway");
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap_or_default());

    let row = browser
        .wait_for(
            "the new payment's payments.payment.created in the live tail, with its trace",
            Duration::from_secs(30),
            "const r = [...document.querySelectorAll('#ev-table tbody tr')].find(r => r.dataset.type === 'payments.payment.created' && r.dataset.trace); return r ? r.dataset.trace : null;",
            Value::is_string,
        )
        .await;
    let trace = row.as_str().unwrap().to_string();
    browser.click(&format!("#ev-table tbody tr[data-trace='{trace}'] a.trace")).await;

    // The waterfall fills as the processes' batch exporters send (every few seconds).
    let spans = browser
        .wait_for(
            "one waterfall with the gateway's, the payments service's and a consumer's spans",
            Duration::from_secs(45),
            "return [...document.querySelectorAll('#waterfall .wf-row')].map(r => [r.dataset.service, r.dataset.kind]);",
            |v| {
                let rows = v.as_array().map(Vec::as_slice).unwrap_or_default();
                let has = |f: &dyn Fn(&Value) -> bool| rows.iter().any(f);
                has(&|r| r[0].as_str().is_some_and(|s| s.contains("gateway")))
                    && has(&|r| r[0].as_str().is_some_and(|s| s.contains("payments")))
                    && has(&|r| r[1] == "consumer")
            },
        )
        .await;
    let title = browser.client.find(Locator::Css("#wf-title")).await.unwrap().text().await.unwrap();
    assert!(title.contains(&trace), "the waterfall is the clicked trace's: {title}");
    // The page drew what the API holds for that trace.
    let listed = d.get(&format!("/api/traces/{trace}")).await;
    assert!(listed["spans"].as_array().map(Vec::len) >= spans.as_array().map(Vec::len), "{listed}");
    browser.close().await;
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_from_the_page_after_confirming() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let setup = dead_letter_setup().await;
    let d = Dashboard::start(&setup.prefix);
    let browser = Browser::start("replays_a_dead_letter").await;
    if let Err(e) = browser.client.goto(&format!("{}#events", d.url)).await {
        browser.fail(format!("cannot open {}: {e}", d.base)).await
    }
    browser.click("#tabs button[data-tab=events]").await;
    let id = setup.event.id.to_string();
    let row = format!("#dlq-table tbody tr[data-id='{id}']");
    browser
        .wait_for(
            "the dead letter listed",
            Duration::from_secs(30),
            &format!("document.querySelector('#dlq-refresh').click(); return !!document.querySelector(\"{row}\");"),
            |v| v == &json!(true),
        )
        .await;
    let before = setup.runs.lock().unwrap()[&setup.event.id];
    browser.click(&format!("{row} button")).await; // "replay"
    let question = browser
        .wait_for(
            "the confirmation dialog",
            Duration::from_secs(10),
            "const d = document.querySelector('#confirm'); if (d.open) return d.textContent; return {toast: document.querySelector('#toast').textContent};",
            Value::is_string,
        )
        .await;
    assert!(question.as_str().unwrap().contains("replay 1 dead letters"), "{question}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(setup.runs.lock().unwrap()[&setup.event.id], before, "nothing is replayed before the confirmation");
    setup.broken.store(false, Ordering::SeqCst);
    browser.click("#confirm-ok").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while setup.runs.lock().unwrap()[&setup.event.id] == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if setup.runs.lock().unwrap()[&setup.event.id] != before + 1 {
        browser.fail("the consumer did not handle the replayed event".into()).await
    }
    browser
        .wait_for(
            "the dead-letter table empty after the replay",
            Duration::from_secs(15),
            "document.querySelector('#dlq-refresh').click(); return document.querySelectorAll('#dlq-table tbody tr').length;",
            |v| v == &json!(0),
        )
        .await;
    browser.close().await;
    drop(d);
    setup.cleanup().await;
}
