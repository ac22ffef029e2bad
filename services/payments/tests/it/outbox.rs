//! A broker outage never loses a payment's event: the app points at a broker address this test
//! controls (a TCP forwarder to the test stack's RabbitMQ), which stays closed while the payment
//! is created and opens afterwards. The shared broker itself is never stopped.

use crate::common;

use std::time::Duration;

use crate::common::{test_settings, EventLog};
use mfe_kit::Role;
use mfe_testkit::net::Forwarder;
use serde_json::{json, Value};

#[tokio::test]
async fn a_payment_created_while_the_broker_is_unreachable_is_published_once_it_returns() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let events = EventLog::start("payments.#").await;
    let real = url::Url::parse(&events.hub.config().urls[0]).expect("RABBITMQ_URL is a URL");
    let upstream = format!("{}:{}", real.host_str().unwrap(), real.port().unwrap_or(5672));
    let target = tokio::net::lookup_host(&upstream).await.unwrap().next().expect("the broker's address");
    let mut forwarder = Forwarder::cut_from_start(target);
    let port = forwarder.port;
    let mut unreachable = real.clone();
    unreachable.set_port(Some(port)).unwrap();

    let (mut settings, name) = test_settings().await;
    settings.service.hub.urls = vec![unreachable.to_string()];
    let app = common::spawn_with(settings, name).await;
    let (_, token) = app.user(Role::Customer);

    let response = app.create_payment(&token, &json!({"amount": "77.7", "currency": "USD"})).await;
    assert_eq!(response.status(), 201, "a payment is accepted while the broker is down");
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let (status, health) = app.get_text("/health").await;
    // Still ready (the outbox takes the events), and saying what is missing.
    assert_eq!(status, 200, "health stays ready without the broker: {health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["dependencies"]["broker"]["status"].as_str()),
        (Some("degraded"), Some("down"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.outbox_rows(&id).await, vec![("payments.payment.created".to_string(), false)]);
    assert!(events.types_for(&id).is_empty());

    forwarder.restore().await;
    let seen = events.wait_for(&id, 1, Duration::from_secs(30)).await;
    assert_eq!(seen, vec!["payments.payment.created"], "the event is delivered exactly once after the broker returns");
    assert_eq!(app.outbox_rows(&id).await, vec![("payments.payment.created".to_string(), true)]);
    events.hub.close().await;
    app.teardown().await;
}
