//! A normal run prints `mfe`'s own lines and tables, not the libraries' warnings: the event-hub
//! suite restarts RabbitMQ twice and dead-letters an event on purpose, and before the default
//! filter named the libraries, each of those steps also printed the hub's WARN lines (five per
//! run) between the suite's own. The filter's levels per `-v` are unit-tested in `lib.rs`; this
//! runs the real suite, as a user does, on a private native stack (RabbitMQ and auth_db only, on
//! ports 22600-22609 with their own state dir), because it stops and starts its broker.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

const BASE: u16 = 22600;

struct Stack {
    state_dir: PathBuf,
}

impl Stack {
    fn new() -> Self {
        let state_dir = std::env::temp_dir().join(format!("mfe-quiet-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { state_dir }
    }

    fn mfe(&self, args: &[&str]) -> Output {
        let db = |off: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{}/{name}", BASE + off);
        Command::new(env!("CARGO_BIN_EXE_mfe"))
            .args(args)
            .env("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("MFE_STATE_DIR", &self.state_dir)
            .env("MFE_RUNTIME", "native")
            .env("AUTH_DATABASE_URL", db(0, "auth_db"))
            .env("PAYMENTS_DATABASE_URL", db(1, "payments_db"))
            .env("ADMIN_DATABASE_URL", db(2, "admin_db"))
            .env("PROFILE_DATABASE_URL", db(3, "profile_db"))
            .env("LEGACY_DATABASE_URL", db(4, "mfe_poc2"))
            .env("RABBITMQ_URL", format!("amqp://admin:admin@127.0.0.1:{}/%2f", BASE + 5))
            .env("RABBITMQ_MANAGEMENT_PORT", (BASE + 6).to_string())
            .env("REDIS_URL", format!("redis://127.0.0.1:{}", BASE + 7))
            .env("NGINX_HTTP_PORT", (BASE + 8).to_string())
            .env("NGINX_HTTPS_PORT", (BASE + 9).to_string())
            .env("SSL_CERT_PATH", self.state_dir.join("no-cert/self-signed.crt"))
            .env("SSL_KEY_PATH", self.state_dir.join("no-cert/self-signed.key"))
            .env_remove("RUST_LOG")
            .env_remove("RABBITMQ_QUEUE_TYPE")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("the mfe binary runs")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.mfe(&["infra", "clean", "--yes"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn the_event_hub_suite_prints_its_own_lines_and_no_library_warnings_through_two_broker_restarts() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new();
    let started = stack.mfe(&["infra", "start", "rabbitmq", "auth_db"]);
    assert!(started.status.success(), "private stack: {}", text(&started.stderr));

    let t0 = Instant::now();
    let run = stack.mfe(&["test", "event-hub", "--messages", "300"]);
    eprintln!("figure: event-hub suite {:.0} s", t0.elapsed().as_secs_f64());
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "suite failed:\n{}\n{stderr}", text(&run.stdout));

    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ") || l.contains("ERROR")).collect();
    assert!(warnings.is_empty(), "library log lines in a normal run: {warnings:#?}\n{stderr}");
    // The suite reports the restarts itself, and its table is on stdout.
    assert_eq!(stderr.lines().filter(|l| l.starts_with("rabbitmq: stopping")).count(), 2, "{stderr}");
    assert!(stderr.contains("event-hub suite: broker-restart-persistence..."), "{stderr}");
    for line in stderr.lines() {
        let own = ["event-hub suite: ", "rabbitmq: "].iter().any(|p| line.starts_with(p));
        assert!(own, "a line the suite did not write: {line:?}\n{stderr}");
    }
    assert!(text(&run.stdout).contains("broker-restart-persistence"), "the table is printed");
}
