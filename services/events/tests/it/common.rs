//! Shared set-up for the integration tests: an isolated topology per test on the broker of
//! `RABBITMQ_URL`, and a scratch database on the server of `AUTH_DATABASE_URL`.

use futures::future::BoxFuture;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use mfe_events::topology::{base_plan, subscription_plan};
use mfe_events::BrokerControl;
use mfe_events::{handler_fn, Envelope, Hub, HubConfig, Subscription, SubscriptionHandle};
use mfe_testkit::START_HINT;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One binary runs every test at once; the few that stop or restart the shared broker take it
/// for themselves ([`exclusive_broker`]) while every other test holds [`shared_broker`].
static BROKER: RwLock<()> = RwLock::const_new(());

/// Held for the whole of a test that needs the broker up.
pub async fn shared_broker() -> RwLockReadGuard<'static, ()> {
    BROKER.read().await
}

/// Held for the whole of a test that stops or restarts the broker.
pub async fn exclusive_broker() -> RwLockWriteGuard<'static, ()> {
    BROKER.write().await
}

/// A unique prefix so tests never share queues with each other or with live services.
pub fn prefix() -> String {
    format!("mfe.test.{}", uuid::Uuid::new_v4().simple())
}

/// The environment's hub configuration under `prefix`, with short retry delays.
pub fn hub_config(prefix: &str) -> HubConfig {
    let mut cfg = HubConfig::from_env()
        .expect("event hub configuration")
        .isolated(prefix)
        .with_connection_name(format!("{prefix}.test"));
    cfg.retry_delays = vec![Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)];
    cfg.publish_timeout = Duration::from_secs(20);
    cfg
}

pub async fn connect(cfg: HubConfig) -> Hub {
    let urls = cfg.urls.join(",");
    Hub::connect(cfg).await.unwrap_or_else(|e| panic!("{e}\n(tests use RABBITMQ_URL={urls}; {START_HINT})"))
}

/// Deletes the exchanges and queues of `subs` under `hub`'s configuration.
pub async fn cleanup(hub: &Hub, subs: &[Subscription]) {
    let Ok(ch) = hub.raw_channel().await else { return };
    let cfg = hub.config().clone();
    let mut plan = base_plan(&cfg);
    for s in subs {
        plan.extend(subscription_plan(&cfg, s));
    }
    for q in &plan.queues {
        let _ = ch.queue_delete(&q.name, QueueDeleteOptions::default()).await;
    }
    for e in &plan.exchanges {
        let _ = ch.exchange_delete(&e.name, ExchangeDeleteOptions::default()).await;
    }
    hub.close().await;
}

/// A fresh database with the event hub tables; [`ScratchDb::drop_db`] removes it.
pub struct ScratchDb {
    pub pool: PgPool,
    url: String,
}

impl ScratchDb {
    pub async fn create() -> ScratchDb {
        let server = std::env::var("AUTH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/auth_db".into());
        let url = mfe_testkit::db::create_database(&server, "events_test").await;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to the scratch database {url}: {e} — {START_HINT}"));
        sqlx::raw_sql(mfe_events::EVENT_HUB_DDL).execute(&pool).await.expect("apply the event hub DDL");
        ScratchDb { pool, url }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        mfe_testkit::db::drop_database(&self.url).await;
    }
}

/// Runs the built `mfe` binary with the test environment (`mfe infra <args> --runtime native`).
pub fn mfe_infra(args: &[&str]) {
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/debug/mfe");
    assert!(std::path::Path::new(bin).is_file(), "{bin} is missing — build it with `cargo build -p mfe`");
    let out = std::process::Command::new(bin)
        .arg("infra")
        .args(args)
        .args(["--runtime", "native"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run mfe");
    assert!(
        out.status.success(),
        "mfe infra {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test stack's broker, stopped and restarted through `target/debug/mfe infra`, for the
/// scenarios that need an outage (hold [`exclusive_broker`] while they run).
pub struct MfeInfra;

impl BrokerControl for MfeInfra {
    fn stop(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async {
            tokio::task::block_in_place(|| mfe_infra(&["stop", "rabbitmq"]));
            Ok(())
        })
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async {
            tokio::task::block_in_place(|| mfe_infra(&["start", "rabbitmq"]));
            Ok(())
        })
    }

    fn restart(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async {
            tokio::task::block_in_place(|| mfe_infra(&["restart", "rabbitmq"]));
            Ok(())
        })
    }
}

/// Polls `f` until it is true or `max` passed.
pub async fn eventually<F: FnMut() -> bool>(max: Duration, mut f: F) -> bool {
    let deadline = tokio::time::Instant::now() + max;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Subscribes `sub` with a handler that records the id of every delivery, in order.
pub async fn record_ids(hub: &Hub, sub: &Subscription) -> (Arc<Mutex<Vec<uuid::Uuid>>>, SubscriptionHandle) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = handler_fn(move |env: Envelope| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(env.id);
            Ok(())
        }
    });
    let handle = hub.subscribe(sub.clone(), handler).await.unwrap();
    (seen, handle)
}
