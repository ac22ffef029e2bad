//! `mfe infra start --ha` on real processes: three rabbitmq-server nodes clustered, the platform
//! queues as quorum queues on all three, `infra status` telling whole from degraded, and the
//! event hub carrying on (publish and consume, nothing lost) after `kill -9` of the node it is
//! connected to.
//!
//! Runs the built `mfe` binary on ports of its own (18572-18594), so it runs beside the shared
//! test stack; only RabbitMQ is started.

use mfe_events::{handler_fn, Envelope, Hub, HubConfig, QueueType, Subscription};
use serde_json::Value;
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AMQP: u16 = 18572;
const MANAGEMENT: u16 = 18582;
const DIST: u16 = 18592;

struct Stack {
    state_dir: PathBuf,
}

impl Stack {
    fn new() -> Self {
        let state_dir = std::env::temp_dir().join(format!("mfe-ha-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { state_dir }
    }

    fn mfe(&self, args: &[&str]) -> Output {
        let db = |port: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{port}/{name}");
        Command::new(env!("CARGO_BIN_EXE_mfe"))
            .args(args)
            .env("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("MFE_STATE_DIR", &self.state_dir)
            .env("AUTH_DATABASE_URL", db(18532, "auth_db"))
            .env("PAYMENTS_DATABASE_URL", db(18533, "payments_db"))
            .env("ADMIN_DATABASE_URL", db(18534, "admin_db"))
            .env("PROFILE_DATABASE_URL", db(18535, "profile_db"))
            .env("LEGACY_DATABASE_URL", db(18536, "mfe_poc2"))
            .env("RABBITMQ_URL", format!("amqp://admin:admin@127.0.0.1:{AMQP}/%2f"))
            .env("RABBITMQ_MANAGEMENT_PORT", MANAGEMENT.to_string())
            .env("RABBITMQ_DIST_PORT", DIST.to_string())
            .env("REDIS_URL", "redis://127.0.0.1:18537")
            .env("NGINX_HTTP_PORT", "18538")
            .env("NGINX_HTTPS_PORT", "18539")
            .env("SSL_CERT_PATH", self.state_dir.join("no-cert/self-signed.crt"))
            .env("SSL_KEY_PATH", self.state_dir.join("no-cert/self-signed.key"))
            .env_remove("MFE_RUNTIME")
            .env_remove("RABBITMQ_QUEUE_TYPE")
            .output()
            .expect("the mfe binary runs")
    }

    fn status(&self) -> Value {
        let out = self.mfe(&["infra", "status", "--runtime", "native", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json is JSON ({e}): {}", stderr(&out)))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The nodes' own account of a failure, before their state is removed.
            for k in 0..3 {
                let log = self.state_dir.join(format!("native/rabbitmq-ha/mfe{}/log/rabbit.log", AMQP + k));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- last lines of {}:", log.display());
                for line in &lines[lines.len().saturating_sub(25)..] {
                    eprintln!("{line}");
                }
            }
        }
        let _ = self.mfe(&["infra", "clean", "--yes", "--runtime", "native"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

fn node(k: u16) -> String {
    format!("mfe{}@localhost", AMQP + k)
}

fn url(k: u16) -> String {
    format!("amqp://admin:admin@127.0.0.1:{}/%2f", AMQP + k)
}

fn all_ports() -> Vec<u16> {
    (0..3).flat_map(|k| [AMQP + k, MANAGEMENT + k, DIST + k]).collect()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Every quorum queue of the platform: the names `infra status` must show.
fn platform_queues() -> Vec<String> {
    let cfg = HubConfig { queue_type: QueueType::Quorum, ..HubConfig::default() };
    let mut names: Vec<String> = mfe_events::topology::platform_plan(&cfg).queues.into_iter().map(|q| q.name).collect();
    names.sort();
    names
}

/// What a surviving node's management API says of the test's queue (for failure messages).
async fn queue_info(prefix: &str, dead: u16) -> String {
    let k = (dead + 1) % 3;
    let url = format!("http://127.0.0.1:{}/api/queues/%2f/{prefix}.hatest.events.queue", MANAGEMENT + k);
    let client = reqwest::Client::new();
    match client.get(url).basic_auth("admin", Some("admin")).send().await {
        Ok(r) => {
            let v: Value = r.json().await.unwrap_or_default();
            format!("leader {} members {} online {} state {}", v["leader"], v["members"], v["online"], v["state"])
        }
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_forms_reports_its_quorum_queues_and_the_hub_survives_kill_9_of_its_node() {
    let _serial = mfe_testkit::serial::group(module_path!());
    for p in all_ports() {
        assert!(port_is_free(p), "port {p} is taken: this test needs 18572-18594 free");
    }
    let stack = Stack::new();

    // 1. Three nodes, one cluster, every platform queue on all three.
    let t0 = Instant::now();
    let out = stack.mfe(&["infra", "start", "rabbitmq", "--ha", "--runtime", "native", "--json"]);
    let cluster_start = t0.elapsed();
    assert!(out.status.success(), "infra start --ha failed: {}", stderr(&out));
    assert!(stderr(&out).contains("RABBITMQ_QUEUE_TYPE=quorum"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("admin:admin@"), "no password in the output: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("start --json prints the report");
    assert_eq!(report["passed"], true, "{report}");
    let summary = check(&report, "rabbitmq");
    assert!(summary["detail"].as_str().unwrap().starts_with("cluster: whole (3/3 running)"), "{summary}");
    assert_eq!(summary["metrics"]["topology"], "ha");
    let members: Vec<String> = (0..3).map(node).collect();
    for k in 0..3 {
        let row = check(&report, &format!("rabbitmq:{}", node(k)));
        assert_eq!(row["passed"], true, "{row}");
        assert!(row["detail"].as_str().unwrap().contains("cluster member, running"), "{row}");
    }
    let shown: Vec<String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str()?.strip_prefix("queue:").map(String::from))
        .collect();
    assert_eq!(shown, platform_queues(), "infra status shows exactly the platform's quorum queues");
    for q in &shown {
        let row = check(&report, &format!("queue:{q}"));
        assert_eq!(row["passed"], true, "{row}");
        let listed = |key: &str| {
            let mut v: Vec<String> =
                row["metrics"][key].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(listed("members"), members, "{q}: a member on every node: {row}");
        assert_eq!(listed("online"), members, "{q}: {row}");
        assert!(members.contains(&row["metrics"]["leader"].as_str().unwrap().to_string()), "{row}");
    }

    // 2. The hub on all three URLs: publish, kill -9 the node it is connected to, keep going.
    let prefix = format!("mfe.test.ha.{}", uuid::Uuid::new_v4().simple());
    let cfg = HubConfig {
        urls: (0..3).map(url).collect(),
        queue_type: QueueType::Quorum,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        ..HubConfig::default()
    }
    .isolated(&prefix)
    .with_connection_name("mfe-ha-test");
    let hub = Hub::connect(cfg).await.expect("the hub connects to the cluster");
    let received: Arc<Mutex<HashSet<uuid::Uuid>>> = Arc::default();
    let seen = received.clone();
    let sub = Subscription::durable("hatest", &["ha.test.#"]).isolated(&prefix);
    let handle = hub
        .subscribe(
            sub,
            handler_fn(move |env: Envelope| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().insert(env.id);
                    Ok(())
                }
            }),
        )
        .await
        .expect("the consumer starts");
    let mut sent = Vec::new();
    for i in 0..200 {
        let env = Envelope::new(format!("ha.test.{i}"), "ha-test", serde_json::json!({"i": i}));
        hub.publish(&env).await.expect("publishing to the whole cluster");
        sent.push(env.id);
    }
    let before = hub.connected_url().expect("connected");
    let k = (0..3).find(|k| before.contains(&format!(":{}/", AMQP + k))).expect("one of the node URLs");
    let victim = node(k);
    let status = stack.status();
    let vm_pid = check(&status, &format!("rabbitmq:{victim}"))["metrics"]["vm_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("the node row names the VM's pid: {status}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(vm_pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 of the node");
    let killed = Instant::now();
    let mut failover = None;
    let mut failed_publishes = 0u32;
    for i in 200..400 {
        let env = Envelope::new(format!("ha.test.{i}"), "ha-test", serde_json::json!({"i": i}));
        // At-least-once: a publish whose confirm did not come is sent again (the consumer dedups).
        loop {
            match hub.publish(&env).await {
                Ok(()) => break,
                Err(e) => {
                    failed_publishes += 1;
                    if killed.elapsed() > Duration::from_secs(60) {
                        panic!(
                            "no publish succeeded for 60 s: {e}; the queue on the cluster: {}",
                            queue_info(&prefix, k).await
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        failover.get_or_insert_with(|| killed.elapsed());
        sent.push(env.id);
    }
    let failover = failover.expect("published after the kill");
    let after = hub.connected_url().expect("connected again");
    assert!(!after.contains(&format!(":{}/", AMQP + k)), "the hub moved off the killed node: {after}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = sent.iter().filter(|id| !received.lock().unwrap().contains(id)).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} of {} events never consumed after the failover", sent.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_consumed = killed.elapsed();

    // 3. Status names the missing node; the queues keep a leader and a majority. A queue the
    // workload left idle (the dead-letter queue) elects its new leader a Raft election timeout
    // after the loss, so the status is read until every queue has one (bounded).
    let queues_led = |status: &Value| {
        status["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("queue:"))
            .all(|c| c["passed"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = stack.status();
    while !queues_led(&status) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = stack.status();
    }
    let summary = check(&status, "rabbitmq");
    assert_eq!(summary["passed"], false, "{summary}");
    let expected = format!("cluster: degraded (2/3 running; {victim} down)");
    assert!(summary["detail"].as_str().unwrap().starts_with(&expected), "{summary}");
    assert_eq!(check(&status, &format!("rabbitmq:{victim}"))["passed"], false);
    let queue_rows: Vec<&Value> = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("queue:"))
        .collect();
    assert!(queue_rows.len() > platform_queues().len(), "the test's own queue is listed too");
    for row in queue_rows {
        assert_eq!(row["passed"], true, "2 of 3 members is a majority: {row}");
        assert!(row["detail"].as_str().unwrap().contains("online 2/3"), "{row}");
        assert_ne!(row["metrics"]["leader"], victim.as_str(), "a new leader was elected: {row}");
    }

    // 4. `infra start` (no --ha: the cluster is found by its data) brings the node back.
    let t1 = Instant::now();
    let out = stack.mfe(&["infra", "start", "rabbitmq", "--runtime", "native", "--json"]);
    let rejoin = t1.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 of 3 nodes started"), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(check(&report, "rabbitmq")["detail"].as_str().unwrap().starts_with("cluster: whole (3/3 running)"));
    handle.cancel().await;
    hub.close().await;

    // 5. Stop takes every node down and frees every port.
    let out = stack.mfe(&["infra", "stop", "rabbitmq", "--runtime", "native"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for p in all_ports() {
        assert!(port_is_free(p), "port {p} still taken after stop");
    }
    eprintln!(
        "figures: cluster formed in {:.1} s; hub published again {:.2} s after kill -9 of {victim} \
         ({failed_publishes} publish attempts failed meanwhile); all {} events consumed {:.2} s after the kill; \
         the node rejoined in {:.1} s",
        cluster_start.as_secs_f64(),
        failover.as_secs_f64(),
        sent.len(),
        all_consumed.as_secs_f64(),
        rejoin.as_secs_f64()
    );
}
