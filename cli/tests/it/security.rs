//! `mfe test security` on a stack of its own (ports 21xxx, `mfe up`): every attack of the suite
//! gets the answer it must get. The suite is the test: a check that fails names the attack and
//! what came back.

use crate::own_stack::{text, OwnStack};
use serde_json::Value;

#[test]
fn every_attack_of_the_security_suite_is_refused() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = OwnStack::new("security-test", 21000);
    let up = stack.mfe(&["up", "--runtime", "native"]);
    assert!(up.status.success(), "mfe up failed:\n{}", text(&up));

    let run = stack.mfe(&["test", "security", "--json"]);
    let report: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("test security --json is JSON ({e}):\n{}", text(&run)));
    let checks = report["checks"].as_array().expect("checks");
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["passed"] != true)
        .map(|c| format!("{}: {}", c["name"].as_str().unwrap_or("?"), c["detail"].as_str().unwrap_or("")))
        .collect();
    assert!(failed.is_empty(), "{} attacks got the wrong answer:\n{}", failed.len(), failed.join("\n"));
    assert!(run.status.success(), "exit status {:?} with a passing report", run.status);
    // Every group ran, through both fronts where it concerns them.
    for prefix in ["tokens: ", "access: ", "input: ", "wire/gateway: ", "wire/nginx: ", "sockets: "] {
        assert!(checks.iter().any(|c| c["name"].as_str().unwrap().starts_with(prefix)), "no {prefix}… check");
    }
    assert!(checks.len() >= 50, "only {} attacks ran", checks.len());
}
