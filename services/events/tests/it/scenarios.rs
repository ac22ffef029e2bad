//! The reliability scenarios of `mfe test event-hub` (`mfe_events::scenarios`), run here too on
//! the test stack under names of their own, with the short retry delays of [`hub_config`]. The
//! two that stop or restart the broker are in `reconnect.rs`.

use crate::common::*;
use mfe_events::{ScenarioOutcome, Scenarios};

async fn scenarios() -> Scenarios {
    let p = prefix();
    Scenarios::new(connect(hub_config(&p)).await, p)
}

fn assert_passed(o: &ScenarioOutcome) {
    assert!(o.passed, "{}: {} {:?}", o.name, o.detail, o.metrics);
}

#[tokio::test]
async fn topology_the_definitions_file_matches_the_code_and_the_platform_topology_declares() {
    let _broker = shared_broker().await;
    let s = scenarios().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rabbitmq/definitions.json");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let o = s.topology(&file).await.expect("topology scenario");
    assert_eq!(o.name, "topology");
    assert_passed(&o);
    assert!(s.cleanup().await);
}

#[tokio::test]
async fn fifo_a_hundred_events_arrive_in_publication_order() {
    let _broker = shared_broker().await;
    let s = scenarios().await;
    let o = s.fifo().await.expect("fifo scenario");
    assert_passed(&o);
    assert_eq!((o.metrics["received"].as_u64(), o.metrics["out_of_order"].as_u64()), (Some(100), Some(0)));
    assert!(s.cleanup().await);
}

#[tokio::test]
async fn retries_follow_the_delays_then_dead_letter_and_a_transient_failure_recovers() {
    let _broker = shared_broker().await;
    let s = scenarios().await;
    let [retry, transient] = s.retries().await.expect("retry scenario");
    assert_eq!((retry.name.as_str(), transient.name.as_str()), ("retry-then-dlq", "transient-failure"));
    assert_passed(&retry);
    assert_passed(&transient);
    assert_eq!(retry.metrics["attempts"], 4, "one delivery and three retries");
    assert_eq!(transient.metrics["dead_lettered"], false);
    assert!(s.cleanup().await);
}

#[tokio::test]
async fn consumer_crash_the_message_is_redelivered_and_processed_once() {
    let _broker = shared_broker().await;
    let s = scenarios().await;
    let o = s.consumer_crash().await.expect("crash scenario");
    assert_passed(&o);
    assert_eq!(o.metrics["processed"], 1);
    assert!(s.cleanup().await);
}

#[tokio::test]
async fn throughput_and_latency_run_and_report_their_figures() {
    let _broker = shared_broker().await;
    let s = scenarios().await;
    // Small runs with no floor: the figures of a loaded test machine are not the seed plan's.
    let o = s.throughput(500, 0.0).await.expect("throughput scenario");
    assert_passed(&o);
    assert!(o.metrics["msgs_per_s"].as_f64().unwrap() > 0.0);
    let o = s.latency(200, f64::MAX).await.expect("latency scenario");
    assert_passed(&o);
    for k in ["p50_ms", "p95_ms", "p99_ms"] {
        assert!(o.metrics[k].as_f64().is_some(), "{k} in {:?}", o.metrics);
    }
    assert!(s.cleanup().await);
}
