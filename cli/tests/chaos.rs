//! `mfe test chaos --quick` on real processes: a whole stack of its own (`mfe up --ha`: five
//! PostgreSQL servers, the three-node RabbitMQ cluster, Redis, nginx, the services and the
//! gateway) on ports 27xxx, the workload through nginx while a broker node is killed and
//! another paused and the payments database restarts; the history checker must find nothing
//! lost, duplicated or out of order, and every fault must have had traffic to judge.
//!
//! One replica: with two (`--replicas 2`, where the replica faults run) the pause of a broker
//! node made the two admin replicas, competing on one queue, apply 26 of a payment's events out
//! of order (ARCHITECTURE.md, "Beyond one machine"); until that queue has a single active
//! consumer, `make test` runs the schedule the platform passes, and `cli/tests/replicas.rs`
//! covers replica kills.

mod own_stack;

use own_stack::{text, OwnStack};
use serde_json::Value;

#[test]
fn the_quick_chaos_schedule_loses_duplicates_and_reorders_nothing() {
    let stack = OwnStack::new("chaostest", 27000);
    let up = stack.mfe(&["up", "--ha", "--runtime", "native"]);
    assert!(up.status.success(), "mfe up --ha failed:\n{}", text(&up));

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
    for fault in ["kill-broker-leader", "pause-broker-node", "restart-payments-db"] {
        assert!(!check(&format!("fault {fault}"))["detail"].as_str().unwrap().starts_with("not run"), "{fault} ran");
        let verdict = &check(&format!("history {fault}"))["metrics"];
        assert!(verdict["requests_total"].as_u64().unwrap() > 10, "{fault} had traffic: {verdict:#}");
        for zero in ["events_lost", "effects_duplicated", "unexpected_events", "order_violations", "ws_missed"] {
            assert_eq!(verdict[zero], 0, "{fault}: {zero}");
        }
    }
    // The replica faults need a second replica, and say what to start.
    for fault in ["kill-payments-replica", "kill-gateway-replica"] {
        let detail = check(&format!("fault {fault}"))["detail"].as_str().unwrap().to_string();
        assert!(detail.starts_with("not run: ") && detail.contains("--replicas 2"), "{fault}: {detail}");
    }
    // The partition cannot be cut on one network namespace, and the report says so.
    assert!(check("fault partition-broker")["detail"].as_str().unwrap().starts_with("not run: "));
}
