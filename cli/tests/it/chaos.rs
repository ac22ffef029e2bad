//! `mfe test chaos --quick` on real processes: a whole stack of its own (`mfe up --ha
//! --replicas 2`: five PostgreSQL servers, the three-node RabbitMQ cluster, Redis, nginx, two
//! of each service and of the gateway) on ports 27xxx, the workload through nginx while a
//! broker node is killed and another paused, the payments database restarts and a payments and
//! a gateway replica are killed; the history checker must find nothing lost, duplicated or out
//! of order, and every fault must have had traffic to judge.
//!
//! Two replicas of every service and of the gateway (`--replicas 2`), so the replica faults
//! run too; the two admin replicas share one queue with a single active consumer, which keeps a
//! payment's events in order through the broker faults (ARCHITECTURE.md, "Beyond one machine").

use crate::own_stack::{text, OwnStack};
use serde_json::Value;

#[test]
fn the_quick_chaos_schedule_loses_duplicates_and_reorders_nothing() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = OwnStack::new("chaostest", 27000);
    let up = stack.mfe(&["up", "--ha", "--replicas", "2", "--runtime", "native"]);
    assert!(up.status.success(), "mfe up --ha --replicas 2 failed:\n{}", text(&up));

    let run = stack.mfe(&["test", "chaos", "--quick", "--json"]);
    let report: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("test chaos --json is JSON ({e}):\n{}", text(&run)));
    let checks = report["checks"].as_array().expect("checks");
    let check = |name: &str| {
        checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name} in {report:#}"))
    };
    for c in checks {
        eprintln!("{}: {}", c["name"].as_str().unwrap_or("?"), c["detail"].as_str().unwrap_or(""));
    }
    assert_eq!(report["passed"], true, "the suite found violations:\n{report:#}");
    assert!(run.status.success(), "exit status {:?} with a passing report", run.status);

    // Something to judge: traffic and events in every window that ran.
    let workload = check("workload");
    assert!(workload["metrics"]["events_committed"].as_u64().unwrap() > 100, "{workload:#}");
    for fault in [
        "kill-broker-leader",
        "pause-broker-node",
        "partition-broker",
        "restart-payments-db",
        "kill-payments-replica",
        "kill-gateway-replica",
        "kill-consumer-after-commit",
    ] {
        assert!(!check(&format!("fault {fault}"))["detail"].as_str().unwrap().starts_with("not run"), "{fault} ran");
        let verdict = &check(&format!("history {fault}"))["metrics"];
        assert!(verdict["requests_total"].as_u64().unwrap() > 10, "{fault} had traffic: {verdict:#}");
        for zero in ["events_lost", "effects_duplicated", "unexpected_events", "order_violations", "ws_missed"] {
            assert_eq!(verdict[zero], 0, "{fault}: {zero}");
        }
    }
    let crash = check("fault kill-consumer-after-commit")["detail"].as_str().unwrap().to_owned();
    assert!(crash.contains("aborted after committing event"), "the crash point fired: {crash}");
    let cut = check("fault partition-broker")["detail"].as_str().unwrap().to_owned();
    assert!(cut.contains("cut off from the other nodes") && cut.contains("whole again"), "the partition: {cut}");
}
