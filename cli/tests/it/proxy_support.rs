//! The real stack for the CLI's proxy and probe tests, in one test process: the auth, payments
//! and profile services (their library crates) on port 0, each against a fresh database on the
//! test stack's servers (`mfe_testkit::test_config`), and the gateway in front of them with its
//! event bridge on the test stack's RabbitMQ.

use std::time::Duration;

use mfe_core::Service;
use mfe_testkit::test_config;

pub struct Stack {
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway: String,
    pub ws: String,
}

/// Starts auth, payments and profile, then the gateway in front of them (admin answers 502:
/// no test here needs it).
pub async fn spawn_stack() -> Stack {
    let auth_settings = auth_service::Settings::for_service(test_config(Service::Auth).await).expect("auth settings");
    let auth = auth_service::Application::build(auth_settings).await.expect("auth service builds");
    let auth_port = auth.port();
    tokio::spawn(auth.run_until(std::future::pending()));

    let mut payments_settings = payments_service::Settings::from_env().expect("payments settings");
    payments_settings.service = test_config(Service::Payments).await;
    let payments = payments_service::Application::build(payments_settings).await.expect("payments service builds");
    let payments_port = payments.port();
    tokio::spawn(payments.run_until_stopped());

    let mut profile_settings =
        profile_service::Settings::for_service(test_config(Service::Profile).await).expect("profile settings");
    profile_settings.subscription =
        mfe_events::Subscription::exclusive("profile-proxy-test", &[mfe_events::types::AUTH_USER_REGISTERED]);
    let profile = profile_service::Application::build(profile_settings).await.expect("profile service builds");
    let profile_consuming = profile.state().broker.clone();
    let profile_port = profile.port();
    tokio::spawn(profile.run_until(std::future::pending()));
    assert!(
        profile_consuming.wait_until_consuming(Duration::from_secs(20)).await,
        "the profile service never started consuming events — start the test stack (`mfe infra start`)"
    );

    let mut cfg = mfe_gateway::GatewayConfig::from_env().expect("gateway configuration");
    cfg.host = "127.0.0.1".into();
    cfg.port = 0;
    for route in &mut cfg.routes {
        route.upstreams = vec![match route.name.as_str() {
            "auth" => format!("http://127.0.0.1:{auth_port}"),
            "payments" => format!("http://127.0.0.1:{payments_port}"),
            "profile" => format!("http://127.0.0.1:{profile_port}"),
            _ => "http://127.0.0.1:9".into(),
        }];
    }
    // `mfe ws probe --connections N` holds N sockets of one user: no per-user cap here.
    cfg.front.ws_max_per_user = 0;
    let mut gateway = mfe_gateway::Application::build(cfg).await.expect("the gateway builds");
    assert!(
        gateway.wait_for_events(Duration::from_secs(15)).await,
        "the gateway's event bridge did not reach RabbitMQ — start the test stack (`mfe infra start`)"
    );
    let port = gateway.port();
    tokio::spawn(gateway.run_until(std::future::pending()));
    Stack { gateway: format!("http://127.0.0.1:{port}"), ws: format!("ws://127.0.0.1:{port}/ws") }
}
