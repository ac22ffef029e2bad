//! `mfe test chaos --quick` on real processes: a whole stack of its own (`mfe up --ha`: five
//! PostgreSQL servers, the three-node RabbitMQ cluster, Redis, nginx, the services and the
//! gateway) on ports 42xxx, the workload through nginx while a broker node is killed and
//! another paused and the payments database restarts; the history checker must find nothing
//! lost, duplicated or out of order, and every fault must have had traffic to judge.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

struct Stack {
    state_dir: PathBuf,
}

impl Stack {
    fn new() -> Self {
        let state_dir = std::env::temp_dir().join(format!("mfe-chaos-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { state_dir }
    }

    fn mfe(&self, args: &[&str]) -> Output {
        let db = |port: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{port}/{name}");
        let svc = |port: u16| format!("http://127.0.0.1:{port}");
        Command::new(env!("CARGO_BIN_EXE_mfe"))
            .args(args)
            .env("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("MFE_STATE_DIR", &self.state_dir)
            .env("MFE_RUNTIME", "native")
            .env("AUTH_DATABASE_URL", db(42432, "auth_db"))
            .env("PAYMENTS_DATABASE_URL", db(42433, "payments_db"))
            .env("ADMIN_DATABASE_URL", db(42434, "admin_db"))
            .env("PROFILE_DATABASE_URL", db(42435, "profile_db"))
            .env("LEGACY_DATABASE_URL", db(42436, "mfe_poc2"))
            .env("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:42572/%2f")
            .env("RABBITMQ_MANAGEMENT_PORT", "42582")
            .env("RABBITMQ_DIST_PORT", "42592")
            .env("REDIS_URL", "redis://127.0.0.1:42379")
            .env("NGINX_HTTP_PORT", "42080")
            .env("NGINX_HTTPS_PORT", "42443")
            .env("SSL_CERT_PATH", self.state_dir.join("ssl/self-signed.crt"))
            .env("SSL_KEY_PATH", self.state_dir.join("ssl/self-signed.key"))
            .env("GATEWAY_URL", svc(42000))
            .env("AUTH_SERVICE_URL", svc(42001))
            .env("PAYMENTS_SERVICE_URL", svc(42002))
            .env("ADMIN_SERVICE_URL", svc(42003))
            .env("PROFILE_SERVICE_URL", svc(42004))
            .env("WS_URL", "wss://localhost:42443/ws")
            .env("COMPOSE_PROJECT_NAME", "mfechaostest")
            .env_remove("RABBITMQ_QUEUE_TYPE")
            .output()
            .expect("the mfe binary runs")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.mfe(&["down"]);
        let _ = self.mfe(&["infra", "clean", "--yes", "--runtime", "native"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_quick_chaos_schedule_loses_duplicates_and_reorders_nothing() {
    let stack = Stack::new();
    let up = stack.mfe(&["up", "--ha", "--runtime", "native"]);
    assert!(up.status.success(), "mfe up --ha failed:\n{}", text(&up));

    let run = stack.mfe(&["test", "chaos", "--quick", "--json"]);
    let report: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("test chaos --json is JSON ({e}):\n{}", text(&run)));
    let checks = report["checks"].as_array().expect("checks");
    let check = |name: &str| {
        checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name} in {report:#}"))
    };
    assert_eq!(report["passed"], true, "the suite found violations:\n{report:#}");
    assert!(run.status.success(), "exit status {:?} with a passing report", run.status);

    // Something to judge: traffic and events in every window that ran.
    let workload = check("workload");
    assert!(workload["metrics"]["events_committed"].as_u64().unwrap() > 100, "{workload:#}");
    for fault in ["kill-broker-leader", "pause-broker-node", "restart-payments-db"] {
        assert!(!check(&format!("fault {fault}"))["detail"].as_str().unwrap().starts_with("not run"), "{fault} ran");
        let verdict = &check(&format!("history {fault}"))["metrics"];
        assert!(verdict["requests_total"].as_u64().unwrap() > 10, "{fault} had traffic: {verdict:#}");
        for zero in ["events_lost", "effects_duplicated", "unexpected_events", "order_violations", "ws_missed"] {
            assert_eq!(verdict[zero], 0, "{fault}: {zero}");
        }
    }
    // The partition cannot be cut on one network namespace, and the report says so.
    assert!(check("fault partition-broker")["detail"].as_str().unwrap().starts_with("not run: "));
}
