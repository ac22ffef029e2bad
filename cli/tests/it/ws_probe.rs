//! `mfe ws probe` against a gateway in front of the real services: sign in through the API,
//! create a payment through the API, and receive its `payment:created` on the socket; and the
//! `mfe` binary through a real nginx, as the README writes it: no TLS flags (the stack's own
//! dev CA is trusted) and no token flags (a throwaway user is signed up).

use crate::{nginx_support, proxy_support};

use std::path::Path;
use std::process::Command;

use clap::Parser;

fn probe_args(args: &[&str]) -> mfe::ws::probe::ProbeArgs {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        probe: mfe::ws::probe::ProbeArgs,
    }
    Wrapper::parse_from(std::iter::once("probe").chain(args.iter().copied())).probe
}

fn ctx() -> mfe::Ctx {
    mfe::Ctx { json: true, verbose: 0, config: mfe::config::Config::from_env().expect("configuration") }
}

#[tokio::test]
async fn a_payment_created_through_the_api_reaches_the_signed_in_users_socket() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let email = format!("ws-probe-{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = http
        .post(format!("{}/api/auth/signup", stack.gateway))
        .json(&serde_json::json!({"email": email, "password": "ws-probe-Password-1", "name": "Probe"}))
        .send()
        .await
        .unwrap();
    assert!(signup.status().is_success(), "sign-up answered {}", signup.status());

    let args = probe_args(&[
        "--url",
        &stack.ws,
        "--email",
        &email,
        "--password",
        "ws-probe-Password-1",
        "--trigger",
        "payment",
    ]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
    assert!(report.passed, "failed checks: {failed:#?}");
    let trigger = report.checks.iter().find(|c| c.name == "trigger-payment").expect("a trigger-payment check");
    assert!(trigger.metrics["latency_p50_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_wrong_token_fails_the_probe_at_connect() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let args = probe_args(&["--url", &stack.ws, "--token", "not.a.jwt"]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    assert!(!report.passed);
    let connect = report.checks.iter().find(|c| c.name == "connect").unwrap();
    assert!(connect.detail.contains("401"), "{}", connect.detail);
}

#[tokio::test]
async fn fifty_sockets_all_receive_each_triggered_event() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let user = format!("fanout-{}", uuid::Uuid::new_v4().simple());
    let args = probe_args(&["--url", &stack.ws, "--user-id", &user, "--connections", "50", "--duration", "2"]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    let fan_out = report.checks.iter().find(|c| c.name == "fan-out").expect("a fan-out check");
    assert!(report.passed, "{:#?}", report.checks);
    assert!(fan_out.detail.starts_with("100/100"), "{}", fan_out.detail);
}

/// Runs the `mfe` binary with `args` against `gateway` and the nginx at `https_port` in front
/// of it, whose stack keeps its certificates (and CA) beside `ssl_cert_path`; returns (exit
/// status, stdout, stderr).
async fn mfe_through_nginx(
    args: &[&str],
    gateway: &str,
    https_port: u16,
    ssl_cert_path: &Path,
) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let ssl_cert_path = ssl_cert_path.to_path_buf();
    let gateway = gateway.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_mfe"))
            .args(&args)
            .env("GATEWAY_URL", gateway)
            .env("NGINX_HOST", "localhost")
            .env("NGINX_HTTPS_PORT", https_port.to_string())
            .env("WS_URL", format!("wss://localhost:{https_port}/ws"))
            .env("SSL_CERT_PATH", &ssl_cert_path)
            .env("SSL_KEY_PATH", ssl_cert_path.with_file_name("self-signed.key"))
            .output()
            .expect("run mfe");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_probe_passes_through_nginx_without_tls_or_token_flags() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let gateway_port: u16 = stack.gateway.rsplit(':').next().unwrap().parse().unwrap();
    let edge = nginx_support::Edge::start(gateway_port);
    let (ok, stdout, stderr) = mfe_through_nginx(
        &["ws", "probe", "--trigger", "payment"],
        &stack.gateway,
        edge.https,
        &edge.ca.with_file_name("self-signed.crt"),
    )
    .await;
    assert!(ok, "mfe ws probe --trigger payment failed:\n{stdout}\n{stderr}\nnginx: {}", edge.error_log());
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains("signed up throwaway user probe-")).collect();
    assert_eq!(said.len(), 1, "one line saying a probe user was signed up: {stderr}");
    assert!(said[0].contains("@probe.mfe.local"), "{}", said[0]);
    assert!(stdout.contains("trigger-payment"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_without_the_stacks_fails_with_one_line_naming_the_server_and_the_cas_tried() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let gateway_port: u16 = stack.gateway.rsplit(':').next().unwrap().parse().unwrap();
    let edge = nginx_support::Edge::start(gateway_port);
    let other = tempfile::tempdir().unwrap();
    let generated = Command::new(env!("CARGO_BIN_EXE_mfe"))
        .args(["ssl", "generate", "--out"])
        .arg(other.path())
        .output()
        .expect("run mfe ssl generate");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let other_ca = other.path().join("ca.crt");
    // SSL_CERT_PATH in an empty directory: the stack's CA is not discoverable.
    let empty = tempfile::tempdir().unwrap();
    let user = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let ca = other_ca.display().to_string();
    let (ok, stdout, stderr) = mfe_through_nginx(
        &["--json", "ws", "probe", "--user-id", &user, "--ca", &ca],
        &stack.gateway,
        edge.https,
        &empty.path().join("self-signed.crt"),
    )
    .await;
    assert!(!ok, "the probe must fail when the server's CA is not trusted:\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let connect =
        report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "connect").expect("a connect check");
    let detail = connect["detail"].as_str().unwrap();
    // The reason is BadSignature: both CAs are named "mfe local development CA", so the
    // verifier tries the other one and its signature does not match.
    let server = format!("1 failed: wss://localhost:{}/ws: certificate not trusted (BadSignature", edge.https);
    let tried = format!(
        "; tried the system store and {} (no stack CA at {}) — run `mfe ssl generate` for this stack, pass --ca FILE, or --insecure for a foreign dev stack",
        other_ca.display(),
        empty.path().join("ca.crt").display()
    );
    assert!(detail.contains(&server) && detail.ends_with(&tried), "connect check: {detail}");
    assert!(!detail.contains('\n') && !detail.contains("token="), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_proxy_as_written_passes_its_nginx_half_trusting_the_stacks_ca() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = proxy_support::spawn_stack().await;
    let gateway_port: u16 = stack.gateway.rsplit(':').next().unwrap().parse().unwrap();
    let edge = nginx_support::Edge::start(gateway_port);
    let (ok, stdout, stderr) = mfe_through_nginx(
        &["--json", "test", "proxy"],
        &stack.gateway,
        edge.https,
        &edge.ca.with_file_name("self-signed.crt"),
    )
    .await;
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let failed: Vec<_> = report["checks"].as_array().unwrap().iter().filter(|c| c["passed"] != true).collect();
    assert!(ok && failed.is_empty(), "mfe test proxy failed: {failed:#?}\n{stderr}");
    let trusted = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "nginx: certificate").unwrap();
    let stack_ca = edge.ca.display().to_string();
    assert!(trusted["detail"].as_str().unwrap().ends_with(&stack_ca), "{trusted}");
    assert!(report["checks"].as_array().unwrap().iter().any(|c| c["name"] == "nginx: PATCH /api/payments/{id}/status"));
}

/// The admin service on port 0 (fresh database, an exclusive events queue) behind a gateway
/// whose other routes lead nowhere; returns the gateway's WebSocket URL.
async fn admin_behind_gateway() -> (String, String) {
    let mut settings = admin_service::Settings::from_env().expect("admin settings");
    let (url, db) = mfe_testkit::fresh_migrated_database("ADMIN_DATABASE_URL", &admin_service::MIGRATOR).await;
    settings.service.port = 0;
    settings.service.database_url = url;
    settings.events_queue = format!("mfe.test.admin.{}", uuid::Uuid::new_v4().simple());
    settings.events_queue_exclusive = true;
    let admin = admin_service::Application::build(settings).await.expect("admin service builds");
    let admin_port = admin.port();
    tokio::spawn(admin.run_until_stopped());
    let mut cfg = mfe_gateway::GatewayConfig::from_env().expect("gateway configuration");
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    for route in &mut cfg.routes {
        route.upstreams = vec![match route.name.as_str() {
            "admin" => format!("http://127.0.0.1:{admin_port}"),
            _ => "http://127.0.0.1:9".into(),
        }];
    }
    let mut gateway = mfe_gateway::Application::build(cfg).await.expect("the gateway builds");
    assert!(gateway.wait_for_events(std::time::Duration::from_secs(15)).await, "the bridge did not reach RabbitMQ");
    let port = gateway.port();
    tokio::spawn(gateway.run_until(std::future::pending()));
    (format!("ws://127.0.0.1:{port}/ws"), db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_through_the_admin_api_reaches_every_socket_as_notification_new() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (ws, db) = admin_behind_gateway().await;
    let admin = format!("probe-admin-{}", uuid::Uuid::new_v4().simple());
    let args = probe_args(&[
        "--url",
        &ws,
        "--user-id",
        &admin,
        "--role",
        "ADMIN",
        "--trigger",
        "announcement",
        "--connections",
        "3",
        "--duration",
        "1",
    ]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    assert!(report.passed, "{:#?}", report.checks);
    let fan_out = report.checks.iter().find(|c| c.name == "fan-out").expect("a fan-out check");
    assert!(fan_out.detail.starts_with("3/3 notification:new deliveries"), "{}", fan_out.detail);
    // A customer's token is refused by the admin API: the trigger fails with its answer.
    let customer = probe_args(&["--url", &ws, "--user-id", &admin, "--trigger", "announcement"]);
    let report = mfe::ws::probe::probe(&ctx(), &customer).await.unwrap();
    let trigger = report.checks.iter().find(|c| c.name == "trigger-announcement").expect("a trigger check");
    assert!(!trigger.passed && trigger.detail.contains("403"), "{}", trigger.detail);
    mfe_testkit::drop_database(&mfe_testkit::db::with_database(&mfe_core::env::get("ADMIN_DATABASE_URL"), &db)).await;
}
