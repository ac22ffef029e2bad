//! `mfe ws probe` against a gateway in front of the real services: sign in through the API,
//! create a payment through the API, and receive its `payment:created` on the socket.

mod proxy_support;

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
    let stack = proxy_support::spawn_stack().await;
    let args = probe_args(&["--url", &stack.ws, "--token", "not.a.jwt"]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    assert!(!report.passed);
    let connect = report.checks.iter().find(|c| c.name == "connect").unwrap();
    assert!(connect.detail.contains("401"), "{}", connect.detail);
}

#[tokio::test]
async fn fifty_sockets_all_receive_each_triggered_event() {
    let stack = proxy_support::spawn_stack().await;
    let user = format!("fanout-{}", uuid::Uuid::new_v4().simple());
    let args = probe_args(&["--url", &stack.ws, "--user-id", &user, "--connections", "50", "--duration", "2"]);
    let report = mfe::ws::probe::probe(&ctx(), &args).await.unwrap();
    let fan_out = report.checks.iter().find(|c| c.name == "fan-out").expect("a fan-out check");
    assert!(report.passed, "{:#?}", report.checks);
    assert!(fan_out.detail.starts_with("100/100"), "{}", fan_out.detail);
}
