//! `mfe up --observability` on the native runtime: the real Prometheus (Debian's binary)
//! scrapes the gateway and the four services, every target is `up` in Prometheus's own
//! `/api/v1/targets`, `mfe status` shows the row with its targets' health, and `mfe down` stops
//! it. A stack of its own on ports 33xxx, its own state dir and project name, stopped and
//! removed whatever happens.
//!
//! Needs the service binaries beside `mfe` (`cargo build -p auth-service -p payments-service
//! -p admin-service -p profile-service -p mfe-gateway -p mfe`), PostgreSQL, RabbitMQ, Redis,
//! nginx and prometheus installed (`scripts/install-deps.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const STATE_DIR: &str = "/tmp/mfe-prometheus-test-state";
const PROMETHEUS: &str = "http://127.0.0.1:33990";
const STACK_ENV: &[(&str, &str)] = &[
    ("MFE_STATE_DIR", STATE_DIR),
    ("MFE_RUNTIME", "native"),
    ("COMPOSE_PROJECT_NAME", "mfeprom"),
    ("AUTH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:33432/auth_db"),
    ("PAYMENTS_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:33433/payments_db"),
    ("ADMIN_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:33434/admin_db"),
    ("PROFILE_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:33435/profile_db"),
    ("LEGACY_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:33436/mfe_poc2"),
    ("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:33672/%2f"),
    ("RABBITMQ_MANAGEMENT_PORT", "33673"),
    ("REDIS_URL", "redis://127.0.0.1:33379"),
    ("NGINX_HOST", "localhost"),
    ("NGINX_HTTP_PORT", "33080"),
    ("NGINX_HTTPS_PORT", "33443"),
    ("SSL_CERT_PATH", "/tmp/mfe-prometheus-test-state/ssl/self-signed.crt"),
    ("SSL_KEY_PATH", "/tmp/mfe-prometheus-test-state/ssl/self-signed.key"),
    ("GATEWAY_URL", "http://127.0.0.1:33300"),
    ("AUTH_SERVICE_URL", "http://127.0.0.1:33301"),
    ("PAYMENTS_SERVICE_URL", "http://127.0.0.1:33302"),
    ("ADMIN_SERVICE_URL", "http://127.0.0.1:33303"),
    ("PROFILE_SERVICE_URL", "http://127.0.0.1:33304"),
    ("WS_URL", "wss://localhost:33443/ws"),
    ("PROMETHEUS_PORT", "33990"),
    ("SENTRY_DSN", ""),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
];

fn mfe(args: &[&str], timeout: Duration) -> Output {
    let workdir = std::env::temp_dir().join("mfe-prometheus-test-cwd");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
    cmd.args(args)
        .current_dir(&workdir)
        .env("MFE_ROOT", Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in STACK_ENV {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("run mfe");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("mfe output"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("`mfe {}` outlived {} s", args.join(" "), timeout.as_secs());
        }
    }
}

/// Stops and removes the stack when the test ends, passed or failed (logs kept on failure).
struct Guard;

impl Guard {
    fn teardown() {
        for args in [&["down"][..], &["infra", "clean", "--yes"][..]] {
            let out = mfe(args, Duration::from_secs(180));
            if !out.status.success() {
                eprintln!("cleanup `mfe {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        Guard::teardown();
        if std::thread::panicking() {
            eprintln!("prometheus test: logs kept in {STATE_DIR}");
        } else {
            let _ = std::fs::remove_dir_all(STATE_DIR);
        }
    }
}

fn targets() -> Option<Vec<(String, String, String)>> {
    let body: serde_json::Value =
        reqwest::blocking::get(format!("{PROMETHEUS}/api/v1/targets?state=active")).ok()?.json().ok()?;
    Some(
        body["data"]["activeTargets"]
            .as_array()?
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn up_with_observability_starts_prometheus_scraping_every_service_and_the_gateway() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_mfe")).parent().unwrap().to_path_buf();
    for b in ["auth-service", "payments-service", "admin-service", "profile-service", "mfe-gateway"] {
        assert!(bin_dir.join(b).is_file(), "{b} is not built beside mfe — cargo build -p {b}");
    }
    Guard::teardown();
    let _ = std::fs::remove_dir_all(STATE_DIR);
    let _guard = Guard;

    let up = mfe(&["up", "--observability"], Duration::from_secs(420));
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "mfe up --observability failed:\n{stderr}");
    assert!(stderr.contains("prometheus: ready"), "{stderr}");
    let config = std::fs::read_to_string(format!("{STATE_DIR}/native/prometheus/prometheus.yml")).unwrap();
    for port in 33300..=33304 {
        assert!(config.contains(&format!("127.0.0.1:{port}")), "{config}");
    }

    // Every target up in Prometheus's own view (the first scrape comes within an interval).
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        let seen = targets().unwrap_or_default();
        if seen.len() == 6 && seen.iter().all(|(_, _, health)| health == "up") {
            break seen;
        }
        assert!(Instant::now() < deadline, "not every target is up: {seen:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut jobs: Vec<&str> = seen.iter().map(|(job, _, _)| job.as_str()).collect();
    jobs.sort();
    assert_eq!(jobs, ["admin", "auth", "gateway", "payments", "profile", "prometheus"]);
    assert!(seen.iter().any(|(job, url, _)| job == "payments" && url == "http://127.0.0.1:33302/metrics"), "{seen:?}");

    // What was scraped is the seed's names, from the services themselves.
    let query: serde_json::Value =
        reqwest::blocking::get(format!("{PROMETHEUS}/api/v1/query?query=count(http_requests_total)%20by%20(job)"))
            .unwrap()
            .json()
            .unwrap();
    let with_requests: Vec<&str> =
        query["data"]["result"].as_array().unwrap().iter().filter_map(|r| r["metric"]["job"].as_str()).collect();
    for job in ["auth", "payments", "admin", "profile", "gateway"] {
        assert!(with_requests.contains(&job), "no http_requests_total scraped from {job}: {query}");
    }

    let status = mfe(&["--json", "status"], Duration::from_secs(60));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("mfe status --json is not JSON ({e}): {}", String::from_utf8_lossy(&status.stdout)));
    let row = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "prometheus")
        .unwrap_or_else(|| panic!("no prometheus row in mfe status: {report}"));
    assert_eq!(row["passed"], true, "{row}");
    assert!(row["detail"].as_str().unwrap().contains("targets 6/6 up"), "{row}");
    assert_eq!(row["metrics"]["targets_up"], 6, "{row}");

    let down = mfe(&["down"], Duration::from_secs(180));
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(
        reqwest::blocking::get(format!("{PROMETHEUS}/-/ready")).is_err(),
        "prometheus still answers after mfe down"
    );
    let status = mfe(&["--json", "infra", "status"], Duration::from_secs(60));
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("\"prometheus\""),
        "no prometheus row once stopped by mfe down: {}",
        String::from_utf8_lossy(&status.stdout)
    );

    // `infra start --observability` without the services: Prometheus runs, says which targets
    // are down and why, and `infra stop` stops it.
    let start = mfe(&["infra", "start", "redis", "--observability"], Duration::from_secs(120));
    assert!(start.status.success(), "{}", String::from_utf8_lossy(&start.stderr));
    let deadline = Instant::now() + Duration::from_secs(40);
    let row = loop {
        let status = mfe(&["--json", "infra", "status"], Duration::from_secs(60));
        let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let row = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "prometheus").cloned();
        let row = row.unwrap_or_else(|| panic!("no prometheus row in mfe infra status: {report}"));
        let detail = row["detail"].as_str().unwrap();
        // Once every target was scraped once: none `unknown` any more.
        if detail.contains("targets 1/6 up") && !detail.contains("unknown") {
            break row;
        }
        assert!(Instant::now() < deadline, "the services' targets never showed down: {row}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(row["passed"], true, "Prometheus itself is healthy: {row}");
    assert!(row["detail"].as_str().unwrap().contains("auth down"), "{row}");
    let stop = mfe(&["infra", "stop"], Duration::from_secs(120));
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(
        reqwest::blocking::get(format!("{PROMETHEUS}/-/ready")).is_err(),
        "prometheus still answers after infra stop"
    );
}
