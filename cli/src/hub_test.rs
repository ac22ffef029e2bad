//! `mfe test`: the event-hub reliability suite (SPEC §7) and the proxy suite.
//!
//! `mfe test event-hub` runs every check against the broker of `RABBITMQ_URL` under names of
//! its own (`mfe.test.<run-id>.*`: exchanges, queues, retry queues, DLQ), so live queues are
//! never touched, and deletes them afterwards. The broker restarts go through the active
//! runtime (docker or native); the outbox check uses a scratch database on the auth_db server.
//! The scenarios themselves are `mfe_events::scenarios`, shared with that crate's tests; this
//! module runs them in order and turns their outcomes into the report.

use crate::config::{Component, DbService};
use crate::report::{Check, Report};
use crate::Ctx;
use anyhow::Context;
use futures::future::BoxFuture;
use mfe_events::scenarios::{BrokerControl, ScenarioOutcome, Scenarios};
use mfe_events::{Hub, HubConfig};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[command(subcommand)]
    pub command: TestCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TestCommand {
    /// RabbitMQ reliability suite (SPEC §7).
    EventHub(EventHubArgs),
    /// Sign-in and CRUD through the gateway and nginx.
    Proxy(crate::proxy_test::ProxyTestArgs),
    /// A steady workload through nginx while broker nodes die and pause and a database
    /// restarts; a history checker counts lost, duplicated and out-of-order events.
    Chaos(crate::chaos::ChaosArgs),
    /// The attacks of an adversarial pass (forged tokens, injection, smuggling, traversal,
    /// slow and oversized headers, WebSocket abuse), each with the answer it must get.
    Security(crate::security::SecurityArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct EventHubArgs {
    /// Messages for the broker-restart and throughput checks.
    #[arg(long, default_value_t = 5000)]
    pub messages: usize,
    /// Fixed publish rate (msg/s) of the latency check.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
}

pub async fn run(ctx: &Ctx, args: TestArgs) -> anyhow::Result<()> {
    match args.command {
        TestCommand::EventHub(a) => event_hub(ctx, a).await,
        TestCommand::Proxy(a) => crate::proxy_test::run(ctx, a).await,
        TestCommand::Chaos(a) => crate::chaos::run(ctx, a).await,
        TestCommand::Security(a) => crate::security::run(ctx, a).await,
    }
}

/// Throughput floor of the seed plan (msg/s, confirmed publish and consume).
const MIN_THROUGHPUT: f64 = 1000.0;
/// Latency floor of the seed plan (p95, ms).
const MAX_P95_MS: f64 = 100.0;

/// The broker of the suite, stopped and restarted through the active runtime.
struct RuntimeBroker<'a>(&'a Ctx);

impl RuntimeBroker<'_> {
    async fn runtime(&self) -> anyhow::Result<crate::infra::Runtime> {
        crate::infra::Runtime::select(self.0, None).await
    }
}

impl BrokerControl for RuntimeBroker<'_> {
    fn stop(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.runtime()
                .await?
                .stop(&[Component::Rabbitmq])
                .await
                .context("stopping rabbitmq through the active runtime")
        })
    }

    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.runtime()
                .await?
                .start(&[Component::Rabbitmq], true)
                .await
                .context("starting rabbitmq through the active runtime")
        })
    }

    fn restart(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.runtime()
                .await?
                .restart(&[Component::Rabbitmq])
                .await
                .context("restarting rabbitmq through the active runtime")
        })
    }
}

/// A scenario's outcome as a check of the report.
fn check(o: ScenarioOutcome) -> Check {
    Check { name: o.name, passed: o.passed, detail: o.detail, metrics: o.metrics }
}

async fn event_hub(ctx: &Ctx, args: EventHubArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0 && args.rate > 0, "--messages and --rate must be positive");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("mfe.test.{}", &run_id[..12]);
    let cfg = HubConfig::from_env()?.isolated(&prefix).with_connection_name(format!("mfe test event-hub {prefix}"));
    let hub = Hub::connect(cfg).await.context("test event-hub")?;
    eprintln!("event-hub suite: names under {prefix}.* (deleted afterwards)");
    let s = Scenarios::new(hub, prefix);
    let broker = RuntimeBroker(ctx);

    let mut report = Report::new("test event-hub");
    // The checks run one at a time, never concurrently (each is awaited before the next is
    // polled). Latency and throughput come first, each alone on a quiet broker: the restart
    // and outage checks leave RabbitMQ recovering for a while, which would show as latency.
    let one = |r: anyhow::Result<ScenarioOutcome>| r.map(|o| vec![o]);
    let checks: Vec<(&str, BoxFuture<'_, anyhow::Result<Vec<ScenarioOutcome>>>)> = vec![
        ("topology", Box::pin(async { one(check_topology(ctx, &s).await) })),
        ("latency", Box::pin(async { one(s.latency(args.rate, MAX_P95_MS).await) })),
        ("throughput", Box::pin(async { one(s.throughput(args.messages, MIN_THROUGHPUT).await) })),
        ("fifo-ordering", Box::pin(async { one(s.fifo().await) })),
        // The retry check yields two checks: retry-then-dlq and transient-failure.
        ("retry-and-transient", Box::pin(async { s.retries().await.map(Vec::from) })),
        ("consumer-crash-redelivery", Box::pin(async { one(s.consumer_crash().await) })),
        ("broker-restart-persistence", Box::pin(async { one(s.broker_restart(args.messages, &broker).await) })),
        ("outbox-broker-outage", Box::pin(async { one(check_outbox(ctx, &s, &broker).await) })),
    ];
    for (name, fut) in checks {
        eprintln!("event-hub suite: {name}...");
        match tokio::time::timeout(Duration::from_secs(180), fut).await {
            Ok(Ok(outcomes)) => outcomes.into_iter().for_each(|o| report.push(check(o))),
            Ok(Err(e)) => report.push(Check::new(name, false, crate::error_line(&e))),
            Err(_) => report.push(Check::new(name, false, "timed out after 180 s")),
        }
    }
    let cleaned = s.cleanup().await;
    // The restart and outage checks leave a running stack's services reconnecting for a few
    // seconds; a user's next command (`mfe test proxy`) would meet 503s until they have.
    eprintln!("event-hub suite: waiting for a running stack to route again after the broker restarts...");
    match crate::stack::wait_routing_again(Duration::from_secs(90)).await {
        Ok(None) => {}
        Ok(Some(waited)) => report.push(
            Check::new(
                "stack-routes-again",
                true,
                format!("the gateway routes to every service {:.1} s after the suite", waited.as_secs_f64()),
            )
            .metric("waited_s", (waited.as_secs_f64() * 1000.0).round() / 1000.0),
        ),
        Err(e) => report.push(Check::new("stack-routes-again", false, e)),
    }
    report.metric("prefix", s.prefix().to_string());
    report.metric("cleaned_up", cleaned);
    report.emit(ctx.json)
}

/// The topology scenario against the repository's `rabbitmq/definitions.json`.
async fn check_topology(ctx: &Ctx, s: &Scenarios) -> anyhow::Result<ScenarioOutcome> {
    let path = ctx.config.root.join("rabbitmq/definitions.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    s.topology(&file).await
}

/// A scratch database with the event hub tables on the auth_db server, dropped afterwards.
struct ScratchDb {
    admin_url: String,
    name: String,
    pool: sqlx::PgPool,
}

impl ScratchDb {
    async fn create(ctx: &Ctx) -> anyhow::Result<ScratchDb> {
        let t = ctx.config.pg(DbService::Auth)?;
        let base = format!("postgres://{}:{}@{}:{}", t.user, t.password, t.host, t.port);
        let admin_url = format!("{base}/postgres");
        let name = format!("mfe_test_events_{}", uuid::Uuid::new_v4().simple());
        let admin = crate::pg::connect_url("auth_db", &admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .context("creating a scratch database")?;
        admin.close().await;
        let pool = crate::pg::connect_url("auth_db", &format!("{base}/{name}")).await?;
        sqlx::raw_sql(mfe_events::EVENT_HUB_DDL).execute(&pool).await.context("applying the event hub DDL")?;
        Ok(ScratchDb { admin_url, name, pool })
    }

    async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = crate::pg::connect_url("auth_db", &self.admin_url).await {
            let _ =
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)).execute(&admin).await;
        }
    }
}

/// The outbox scenario on a scratch database.
async fn check_outbox(ctx: &Ctx, s: &Scenarios, broker: &RuntimeBroker<'_>) -> anyhow::Result<ScenarioOutcome> {
    let db = ScratchDb::create(ctx).await?;
    let result = s.outbox_outage(&db.pool, broker).await;
    db.drop_db().await;
    result
}
