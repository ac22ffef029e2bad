//! `mfe events dlq list|show|replay|purge` and `mfe events tail`, the real binary against the
//! test stack's RabbitMQ (RABBITMQ_URL of test.env). Each test works under its own
//! `mfe.test.<uuid>` prefix (`mfe events --prefix`), so live queues are never touched; the
//! consumers run in the test process on the same prefix.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mfe_events::{handler_fn, types, Envelope, HandlerError, Hub, HubConfig, Subscription};
use serde_json::Value;
use uuid::Uuid;

const HINT: &str = "start the test stack: `set -a; . ./test.env; set +a; target/debug/mfe infra start`";

type Runs = Arc<Mutex<HashMap<Uuid, usize>>>;

fn runs(r: &Runs, id: Uuid) -> usize {
    r.lock().unwrap().get(&id).copied().unwrap_or(0)
}

struct Env {
    prefix: String,
    hub: Hub,
    subs: Vec<Subscription>,
}

impl Env {
    async fn new() -> Env {
        let prefix = format!("mfe.test.{}", Uuid::new_v4().simple());
        let mut cfg = HubConfig::from_env()
            .expect("event hub configuration")
            .isolated(&prefix)
            .with_connection_name(format!("{prefix}.cli-test"));
        cfg.retry_delays = vec![Duration::from_millis(50), Duration::from_millis(100)];
        let hub = Hub::connect(cfg).await.unwrap_or_else(|e| panic!("{e} — {HINT}"));
        Env { prefix, hub, subs: Vec::new() }
    }

    fn sub(&mut self, consumer: &str, bindings: &[&str]) -> Subscription {
        let s = Subscription::durable(consumer, bindings).isolated(&self.prefix);
        self.subs.push(s.clone());
        s
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.current_dir(std::env::temp_dir()).arg("events").args(["--prefix", &self.prefix]).args(args);
        cmd
    }

    /// Runs `mfe events --prefix P args...` (whatever the exit status).
    fn mfe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the mfe binary runs")
    }

    fn mfe_ok(&self, args: &[&str]) -> String {
        let out = self.mfe(args);
        assert!(
            out.status.success(),
            "mfe events {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn list_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "dlq", "list"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.mfe_ok(&args)).expect("dlq list --json is JSON")
    }

    async fn wait_for_dead_letters(&self, n: usize) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let list = self.list_json(&[]);
            if list["deadLetters"].as_array().unwrap().len() >= n || tokio::time::Instant::now() >= deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cleanup(self) {
        let _ = self.hub.delete_isolated_topology(&self.subs).await;
        self.hub.close().await;
    }
}

/// A consumer that counts its runs per event and fails while `failing` is set.
async fn consumer(env: &mut Env, name: &str, bindings: &[&str], failing: Option<Arc<AtomicBool>>) -> Runs {
    let sub = env.sub(name, bindings);
    let counts: Runs = Default::default();
    let c = counts.clone();
    let handle = env
        .hub
        .subscribe(
            sub,
            handler_fn(move |e: Envelope| {
                let (c, failing) = (c.clone(), failing.clone());
                async move {
                    *c.lock().unwrap().entry(e.id).or_default() += 1;
                    if failing.is_some_and(|f| f.load(Ordering::SeqCst)) {
                        return Err(HandlerError::retry("profile store unavailable"));
                    }
                    Ok(())
                }
            }),
        )
        .await
        .expect("subscribe");
    // Consumers live until the hub closes.
    std::mem::forget(handle);
    counts
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_shown_and_replayed_to_its_failing_consumer_only() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let mut env = Env::new().await;
    let broken = Arc::new(AtomicBool::new(true));
    let profile = consumer(&mut env, "profile", &["auth.#"], Some(broken.clone())).await;
    let payments = consumer(&mut env, "payments", &["auth.#"], None).await;
    let event = Envelope::new(types::AUTH_USER_REGISTERED, "auth-service", serde_json::json!({"userId": "u-7"}))
        .with_correlation_id(Some("req-cli-1".into()));
    env.hub.publish(&event).await.unwrap();

    // list --json: the event with its consumer, reason, attempts and first failure.
    let list = env.wait_for_dead_letters(1).await;
    let letters = list["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list}");
    let dl = &letters[0];
    assert_eq!(dl["id"], event.id.to_string());
    assert_eq!(dl["type"], "auth.user.registered");
    assert_eq!(dl["consumer"], "profile");
    assert_eq!(dl["reason"], "profile store unavailable");
    assert_eq!(dl["attempts"], 3, "one delivery and two retries");
    assert!(dl["firstFailure"].as_str().is_some_and(|t| t.ends_with('Z')), "{dl}");
    assert_eq!(list["queue"], format!("{}.events.dlq", env.prefix));
    assert_eq!(runs(&payments, event.id), 1);

    // The table names the same.
    let table = env.mfe_ok(&["dlq", "list"]);
    for word in [event.id.to_string().as_str(), "auth.user.registered", "profile", "profile store unavailable"] {
        assert!(table.contains(word), "the table shows {word}: {table}");
    }
    assert!(table.contains("1 dead letters"), "{table}");
    // Filters that exclude it.
    let other = env.list_json(&["--consumer", "admin"]);
    assert_eq!((other["deadLetters"].as_array().unwrap().len(), other["total"].as_u64()), (0, Some(1)));
    assert!(env.mfe_ok(&["dlq", "list", "--type", "payments.#"]).contains("no dead letter"), "no payments letters");

    // show: headers, envelope and where a replay goes.
    let shown = env.mfe_ok(&["dlq", "show", &event.id.to_string()]);
    assert!(shown.contains(&format!("{}.profile.events.queue", env.prefix)), "{shown}");
    assert!(shown.contains("req-cli-1") && shown.contains("\"userId\": \"u-7\""), "{shown}");
    let shown: Value = serde_json::from_str(&env.mfe_ok(&["--json", "dlq", "show", &event.id.to_string()])).unwrap();
    assert_eq!(shown[0]["headers"]["x-failed-consumer"], "profile");
    assert_eq!(shown[0]["envelope"]["data"]["userId"], "u-7");

    // An unknown id: one line, exit 1, for show and replay alike.
    let unknown = Uuid::new_v4().to_string();
    for args in [vec!["dlq", "show", unknown.as_str()], vec!["dlq", "replay", "--id", unknown.as_str()]] {
        let out = env.mfe(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("no dead letter matches id {unknown}")), "{err}");
        assert!(err.contains("mfe events dlq list"), "says what to do next: {err}");
    }
    // A broad replay is confirmed first; nothing moves without --yes.
    let out = env.mfe(&["dlq", "replay", "--consumer", "profile"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("would replay 1 dead letters matching consumer profile (profile 1)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--yes"));
    assert_eq!(env.list_json(&[])["deadLetters"].as_array().unwrap().len(), 1);
    // No selection at all is a usage error.
    assert_eq!(env.mfe(&["dlq", "replay"]).status.code(), Some(2));

    // "Fix" the handler and replay: processed once more by profile, by nobody else.
    broken.store(false, Ordering::SeqCst);
    let before = runs(&profile, event.id);
    let report: Value =
        serde_json::from_str(&env.mfe_ok(&["--json", "dlq", "replay", "--consumer", "profile", "--yes"])).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["metrics"]["replayed"], 1, "{report}");
    assert_eq!(report["metrics"]["replayed_ids"][0], event.id.to_string());
    assert_eq!(report["checks"][0]["name"], "replay to profile");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runs(&profile, event.id) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(runs(&profile, event.id), before + 1, "profile handled the replay once");
    assert_eq!(runs(&payments, event.id), 1, "payments, which processed it the first time, never saw it again");
    let after = env.list_json(&[]);
    assert_eq!(after["deadLetters"].as_array().unwrap().len(), 0, "the DLQ is empty: {after}");
    assert_eq!(after["total"], 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_for_yes_then_deletes_what_it_is_told_to() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let mut env = Env::new().await;
    let always = Arc::new(AtomicBool::new(true));
    consumer(&mut env, "admin", &["#"], Some(always)).await;
    let events: Vec<Envelope> =
        [types::PAYMENTS_PAYMENT_CREATED, types::PAYMENTS_PAYMENT_FAILED, types::AUTH_USER_LOGIN]
            .iter()
            .map(|t| Envelope::new(*t, "test", serde_json::json!({})))
            .collect();
    for e in &events {
        env.hub.publish(e).await.unwrap();
    }
    assert_eq!(env.wait_for_dead_letters(3).await["deadLetters"].as_array().unwrap().len(), 3);

    let out = env.mfe(&["dlq", "purge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("deletes 3 dead letters") && err.contains("--yes"), "{err}");
    assert_eq!(env.list_json(&[])["total"], 3, "nothing deleted without --yes");

    let purged = env.mfe_ok(&["dlq", "purge", "--type", "payments.#", "--yes"]);
    assert!(purged.contains("purged 2 dead letters") && purged.contains("(1 left)"), "{purged}");
    let left = env.list_json(&[]);
    assert_eq!(left["deadLetters"][0]["id"], events[2].id.to_string(), "{left}");
    let purged: Value = serde_json::from_str(&env.mfe_ok(&["--json", "dlq", "purge", "--yes"])).unwrap();
    assert_eq!(purged["purged"], 1);
    assert_eq!(env.list_json(&[])["total"], 0);
    assert!(env.mfe_ok(&["dlq", "list"]).contains("is empty"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_matching_events_as_they_pass_and_stops_at_its_count() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let mut env = Env::new().await;
    consumer(&mut env, "admin", &["#"], None).await;
    let mut child = env
        .command(&["--json", "tail", "--type", "auth.#", "--count", "2", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mfe events tail starts");
    // Publish only once the tail says its queue is bound.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut ready = String::new();
    err.read_line(&mut ready).unwrap();
    assert!(ready.contains("tailing events matching auth.#"), "{ready}");
    let a = Envelope::new(types::AUTH_USER_LOGIN, "auth-service", serde_json::json!({"userId": "t1"}));
    let skipped = Envelope::new(types::PAYMENTS_PAYMENT_CREATED, "payments-service", serde_json::json!({}));
    let b = Envelope::new(types::AUTH_USER_LOGOUT, "auth-service", serde_json::json!({"userId": "t1"}));
    for e in [&a, &skipped, &b] {
        env.hub.publish(e).await.unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON per line"))
        .collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["envelope"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a.id.to_string(), b.id.to_string()], "the two auth events, in order, not the payment");
    assert_eq!(lines[0]["routingKey"], "auth.user.login");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(rest.contains("2 events (count reached)"), "{rest}");

    // --timeout bounds a quiet tail.
    let started = std::time::Instant::now();
    let out = env.mfe(&["tail", "--type", "nobody.publishes.this", "--timeout", "1"]);
    assert!(out.status.success() && stderr(&out).contains("0 events (timeout)"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    env.cleanup().await;
}
