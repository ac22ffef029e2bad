//! A WebSocket client not written here — Python's `websockets` — connects with a token and
//! receives an event published to RabbitMQ. The package is installed into a venv under /tmp on
//! first use; without network access to PyPI the test fails and says so.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use mfe_events::{Envelope, Hub, HubConfig};
use mfe_kit::Role;
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = r#"
import asyncio, json, sys
import websockets

async def main(url, wanted):
    async with websockets.connect(url) as ws:
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        print("ACK " + ack["type"], flush=True)
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if msg["type"] == wanted:
                print("GOT " + json.dumps(msg), flush=True)
                return

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

/// A venv with `websockets`, created once and shared by runs (the install is the slow part).
fn python_with_websockets() -> PathBuf {
    let venv = Path::new("/tmp/mfe-ws-venv");
    let python = venv.join("bin/python");
    let has_it =
        |p: &Path| std::process::Command::new(p).args(["-c", "import websockets"]).status().is_ok_and(|s| s.success());
    if python.exists() && has_it(&python) {
        return python;
    }
    let created = std::process::Command::new("python3").args(["-m", "venv"]).arg(venv).status();
    assert!(
        created.is_ok_and(|s| s.success()),
        "FAILURE: cannot create a Python venv at {} — install python3 with the venv module",
        venv.display()
    );
    let installed = std::process::Command::new(venv.join("bin/pip")).args(["install", "-q", "websockets"]).status();
    assert!(
        installed.is_ok_and(|s| s.success()) && has_it(&python),
        "FAILURE: `pip install websockets` into {} failed — is PyPI reachable? install it by hand and re-run",
        venv.display()
    );
    python
}

#[tokio::test]
async fn python_websockets_connects_with_a_token_and_receives_a_payment_event() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let python = python_with_websockets();
    let upstream = common::spawn_upstream().await;
    let mut cfg = common::config(&upstream.url);
    cfg.events =
        Some(HubConfig::from_env().expect("event hub configuration").with_connection_name("mfe-gateway-python-test"));
    let gw = common::spawn_gateway(cfg).await;
    let user = format!("py-{}", uuid::Uuid::new_v4().simple());
    let url = gw.ws_url(&gw.token(&user, Role::Customer, None));

    let mut child = tokio::process::Command::new(python)
        .args(["-c", SCRIPT, &url, "payment:created"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("the ack in time");
    assert_eq!(first.unwrap().as_deref(), Some("ACK connection:ack"));

    let hub = Hub::connect(HubConfig::from_env().expect("event hub configuration"))
        .await
        .expect("RabbitMQ of the test stack (mfe infra start)");
    hub.publish(&Envelope::new(
        "payments.payment.completed",
        "payments-service",
        serde_json::json!({"senderId": user}),
    ))
    .await
    .unwrap();
    hub.publish(&Envelope::new(
        "payments.payment.created",
        "payments-service",
        serde_json::json!({"senderId": user, "n": 1}),
    ))
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("the event in time");
    let line = got.unwrap().expect("python printed the event");
    let msg: serde_json::Value = serde_json::from_str(line.strip_prefix("GOT ").expect("a GOT line")).unwrap();
    assert_eq!(msg["payload"]["senderId"], user);
    assert_eq!(msg["payload"]["n"], 1);
    assert!(child.wait().await.unwrap().success());
    hub.close().await;
}
