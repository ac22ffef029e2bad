//! `mfe up --replicas 2` on a stack of its own (ports 31xxx, below Linux's ephemeral range so
//! no client connection's local port can hold one of them; replicas 100 ports up): two
//! processes of every service and of the gateway, nginx over both gateways, each gateway over
//! both replicas of each service. Then `kill -9` of one gateway and one payments replica: the
//! requests that follow — creates included — all succeed, through nginx and through the
//! surviving gateway, and every created payment's event reaches the audit log once.
//!
//! The service binaries must be built beside `mfe` (`cargo build --workspace`).

use crate::own_stack::{call, http_client as client, text, OwnStack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BASE: u16 = 31000;
const NGINX: &str = "https://localhost:31443";
/// The second gateway (replica 2: the first's port + 100).
const GATEWAY_2: &str = "http://127.0.0.1:31100";

async fn create_payment(http: &reqwest::Client, base: &str, token: &str, n: usize) -> (u16, Value) {
    let body = json!({"amount": "12.50", "currency": "USD", "type": "instant", "description": format!("replica {n}")});
    call(http, reqwest::Method::POST, &format!("{base}/api/payments"), Some(token), Some(body)).await
}

fn payment_id(body: &Value) -> Option<String> {
    body["id"].as_str().or_else(|| body["payment"]["id"].as_str()).map(String::from)
}

fn pid_of(stack: &OwnStack, name: &str) -> i32 {
    let path = mfe::stack::pid_file(&stack.state_dir, name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_everything_keep_serving_when_one_of_each_is_killed() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = OwnStack::new("replicastest", BASE).with("GATEWAY_HEALTH_INTERVAL_MS", "1000");
    let up = stack.mfe(&["up", "--runtime", "native", "--replicas", "2"]);
    assert!(up.status.success(), "mfe up --replicas 2 failed:\n{}", text(&up));

    // Every replica is a row of `mfe status`, healthy.
    let status = stack.mfe(&["status", "--runtime", "native", "--json"]);
    let report: Value = serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    let rows: Vec<(String, bool)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["passed"] == true))
        .collect();
    for name in ["auth", "auth-2", "profile-2", "payments", "payments-2", "admin-2", "gateway", "gateway-2"] {
        assert!(rows.contains(&(name.to_string(), true)), "{name} is not a healthy row of mfe status: {rows:?}");
    }
    // Each gateway routes to both replicas of every service.
    let http = client();
    let (_, health) = call(&http, reqwest::Method::GET, &format!("{GATEWAY_2}/health"), None, None).await;
    let payments = health["replicas"]["payments"].as_object().unwrap_or_else(|| panic!("{health}"));
    assert_eq!(payments.len(), 2, "{health}");
    assert!(payments.values().all(|s| s == "up"), "{health}");

    let email = format!("replicas-{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = json!({"email": email, "password": "replicas-Password-1", "name": "Replica"});
    let (status, body) =
        call(&http, reqwest::Method::POST, &format!("{NGINX}/api/auth/signup"), None, Some(signup)).await;
    assert_eq!(status, 201, "sign-up through nginx: {body}");
    let token = body["accessToken"].as_str().expect("an access token").to_string();

    let mut created = Vec::new();
    for n in 0..4 {
        let (status, body) = create_payment(&http, NGINX, &token, n).await;
        assert_eq!(status, 201, "create #{n} through nginx: {body}");
        created.push(payment_id(&body).expect("an id"));
    }

    // kill -9 the first gateway and the first payments replica; the supervisor restarts them
    // after its backoff, and until then the others carry everything.
    for name in ["gateway", "payments"] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_of(&stack, name)), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
    }
    let killed_at = Instant::now();
    let mut failures: Vec<(Duration, String)> = Vec::new();
    let mut fail = |what: String| failures.push((killed_at.elapsed(), what));
    // Through nginx (within its API rate limit: burst 20), reads and writes.
    for n in 4..12 {
        let (status, body) = create_payment(&http, NGINX, &token, n).await;
        match (status, payment_id(&body)) {
            (201, Some(id)) => created.push(id),
            _ => fail(format!("nginx create #{n}: {status} {body}")),
        }
        let (status, body) =
            call(&http, reqwest::Method::GET, &format!("{NGINX}/api/payments"), Some(&token), None).await;
        if status != 200 {
            fail(format!("nginx list after create #{n}: {status} {body}"));
        }
    }
    // Straight at the surviving gateway: its payments route loses a replica under load.
    for n in 12..40 {
        let (status, body) = create_payment(&http, GATEWAY_2, &token, n).await;
        match (status, payment_id(&body)) {
            (201, Some(id)) => created.push(id),
            _ => fail(format!("gateway-2 create #{n}: {status} {body}")),
        }
    }
    // The fault window: a process killed while its peer's keep-alive connection is about to
    // be reused takes the request written on it down with it (the kernel answers it with a
    // reset once the process is gone). Neither nginx nor the gateway may send a POST again that
    // a replica may have received — at most once beats twice for a payment — so each killed
    // process may cost one request there, answered 502, and nothing after it.
    const WINDOW: Duration = Duration::from_secs(1);
    let (inside, after): (Vec<_>, Vec<_>) = failures.iter().partition(|(at, _)| *at < WINDOW);
    let listed = |f: &[&(Duration, String)]| {
        f.iter().map(|(at, w)| format!("{:.0} ms: {w}", at.as_secs_f64() * 1e3)).collect::<Vec<_>>().join("\n")
    };
    assert!(after.is_empty(), "requests failed after the fault window:\n{}", listed(&after));
    assert!(inside.len() <= 2, "more than one request lost per killed process:\n{}", listed(&inside));
    assert!(
        inside.iter().all(|(_, w)| w.contains(": 502 ")),
        "a request in the window failed otherwise than 502:\n{}",
        listed(&inside)
    );
    eprintln!("fault window: {} request(s) answered 502 within {} ms of the kills", inside.len(), WINDOW.as_millis());
    assert!(killed_at.elapsed() < Duration::from_secs(60), "bounded");

    // Each payment's creation is audited once (the audit consumer of two admin replicas
    // competes for one queue; its inbox keeps effects once).
    let admin_db = sqlx::PgPool::connect(&format!("postgres://postgres:postgres@127.0.0.1:{}/admin_db", BASE + 434))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts: Vec<(String, i64)> = loop {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT resource_id, count(*) FROM audit_logs WHERE action = 'payments.payment.created' AND resource_id = ANY($1) GROUP BY resource_id",
        )
        .bind(&created)
        .fetch_all(&admin_db)
        .await
        .unwrap();
        if counts.len() == created.len() || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(counts.len(), created.len(), "every created payment is audited");
    assert!(counts.iter().all(|(_, n)| *n == 1), "audited once each: {counts:?}");

    // The supervisor brought the killed processes back: every row healthy again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = stack.mfe(&["status", "--runtime", "native", "--json"]);
        if status.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "not every replica came back:\n{}", text(&status));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn a_replica_count_out_of_range_is_one_clear_line() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = OwnStack::new("replicasrange", BASE);
    let out = stack.mfe(&["up", "--runtime", "native", "--replicas", "0"]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("--replicas") && err.contains("1..=9"), "{err}");
}
