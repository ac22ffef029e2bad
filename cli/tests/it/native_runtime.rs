//! The native runtime end to end: a whole private stack (own state dir, own ports) started from
//! the installed binaries, probed for real, restarted, stopped — plus the bad-input lines.
//!
//! These tests run the built `mfe` binary, as a user would.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Ports of this test's private stack: far from the default (543x) and `make test` (2543x) ones.
// Below the kernel's ephemeral range (32768-60999): a client socket there can hold a port we bind.
const BASE: u16 = 31000;

struct Stack {
    state_dir: PathBuf,
    base: u16,
}

impl Stack {
    fn new(name: &str, base: u16) -> Self {
        let state_dir = std::env::temp_dir().join(format!("mfe-native-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { state_dir, base }
    }

    fn port(&self, offset: u16) -> u16 {
        self.base + offset
    }

    fn mfe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the mfe binary runs")
    }

    fn command(&self, args: &[&str]) -> Command {
        let db = |off: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{}/{name}", self.port(off));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(args)
            .env("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("MFE_STATE_DIR", &self.state_dir)
            .env("AUTH_DATABASE_URL", db(0, "auth_db"))
            .env("PAYMENTS_DATABASE_URL", db(1, "payments_db"))
            .env("ADMIN_DATABASE_URL", db(2, "admin_db"))
            .env("PROFILE_DATABASE_URL", db(3, "profile_db"))
            .env("LEGACY_DATABASE_URL", db(4, "mfe_poc2"))
            .env("RABBITMQ_URL", format!("amqp://admin:admin@127.0.0.1:{}/%2f", self.port(5)))
            .env("RABBITMQ_MANAGEMENT_PORT", self.port(6).to_string())
            .env("REDIS_URL", format!("redis://127.0.0.1:{}", self.port(7)))
            .env("NGINX_HTTP_PORT", self.port(8).to_string())
            .env("NGINX_HTTPS_PORT", self.port(9).to_string())
            .env("SSL_CERT_PATH", self.state_dir.join("no-cert/self-signed.crt"))
            .env("SSL_KEY_PATH", self.state_dir.join("no-cert/self-signed.key"))
            .env_remove("MFE_RUNTIME");
        cmd
    }

    fn all_ports(&self) -> Vec<u16> {
        (0..8).map(|o| self.port(o)).collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.mfe(&["infra", "clean", "--yes", "--runtime", "native"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn status_json(stack: &Stack) -> serde_json::Value {
    let out = stack.mfe(&["infra", "status", "--runtime", "native", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json is JSON ({e}): {}", stderr(&out)))
}

async fn assert_really_reachable(stack: &Stack) {
    use sqlx::Connection;
    for (off, db) in [(0, "auth_db"), (1, "payments_db"), (2, "admin_db"), (3, "profile_db"), (4, "mfe_poc2")] {
        let url = format!("postgres://postgres:postgres@127.0.0.1:{}/{db}", stack.port(off));
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| panic!("connect {db}: {e}"));
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(one, 1);
        let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.unwrap();
        assert_eq!(name, db, "the server hosts the database named by its URL");
    }
    let amqp_url = format!("amqp://admin:admin@127.0.0.1:{}/%2f", stack.port(5));
    // The definitions were loaded: the `events` exchange exists (a passive check declares nothing).
    let exists = mfe_events::Hub::exchange_exists_at(&amqp_url, "events")
        .await
        .expect("AMQP connects with the user from rabbitmq/definitions.json");
    assert!(exists, "the events exchange from rabbitmq/definitions.json exists");
    let redis = redis::Client::open(format!("redis://127.0.0.1:{}", stack.port(7))).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_native_stack_starts_healthy_survives_a_restart_and_stops_freeing_every_port() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new("lifecycle", BASE);
    for p in stack.all_ports() {
        assert!(port_is_free(p), "test port {p} must be free before the test");
    }
    let out = stack.mfe(&["infra", "start", "--runtime", "native"]);
    assert!(out.status.success(), "start failed: {}", stderr(&out));

    let status = status_json(&stack);
    assert_eq!(status["passed"], true, "{status}");
    let checks = status["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 8);
    for name in ["auth_db", "payments_db", "admin_db", "profile_db", "legacy_db", "rabbitmq", "redis"] {
        let c = checks.iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(c["passed"], true, "{name}: {c}");
        assert!(c["detail"].as_str().unwrap().starts_with("running"), "{c}");
    }
    assert_really_reachable(&stack).await;

    // Starting twice is fine and changes nothing.
    let again = stack.mfe(&["infra", "start", "--runtime", "native"]);
    assert!(again.status.success(), "second start: {}", stderr(&again));

    let restart = stack.mfe(&["infra", "restart", "redis", "payments_db", "--runtime", "native"]);
    assert!(restart.status.success(), "restart: {}", stderr(&restart));
    assert_eq!(status_json(&stack)["passed"], true);
    assert_really_reachable(&stack).await;

    let stop = stack.mfe(&["infra", "stop", "--runtime", "native"]);
    assert!(stop.status.success(), "stop: {}", stderr(&stop));
    for p in stack.all_ports() {
        assert!(port_is_free(p), "port {p} is still taken after stop");
    }
    let after = status_json(&stack);
    assert_eq!(after["passed"], false, "a stopped stack is not healthy");
}

#[test]
fn an_unknown_service_name_is_one_clear_line_and_exit_1() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new("unknown", BASE + 100);
    let out = stack.mfe(&["infra", "start", "mongodb", "--runtime", "native"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("unknown service `mongodb`") && err.contains("auth_db"), "{err}");
}

#[test]
fn a_port_taken_by_another_process_is_reported_with_its_owner_and_nothing_starts() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new("taken", BASE + 200);
    let squatter = TcpListener::bind(("127.0.0.1", stack.port(7))).unwrap();
    let out = stack.mfe(&["infra", "start", "--runtime", "native"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let last = err.trim().lines().last().unwrap_or_default().to_string();
    assert!(last.contains(&format!("port {} is already in use by", stack.port(7))), "{err}");
    assert!(last.contains(&format!("pid {}", std::process::id())), "owner named: {err}");
    // Nothing half-started: every other port is still free.
    for p in stack.all_ports().into_iter().filter(|p| *p != stack.port(7)) {
        assert!(port_is_free(p), "port {p} was started despite the failure");
    }
    drop(squatter);
}

#[test]
fn a_missing_binary_is_one_clear_line_and_nothing_starts() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new("missing", BASE + 300);
    let out = stack
        .command(&["infra", "start", "--runtime", "native"])
        .env("MFE_REDIS_SERVER", "/nonexistent/redis-server")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("MFE_REDIS_SERVER=/nonexistent/redis-server does not exist"), "{err}");
    assert!(port_is_free(stack.port(0)), "auth_db must not have been started");
}
