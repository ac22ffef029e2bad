//! `mfe test`: the event-hub reliability suite (SPEC §7) and the proxy suite.
//!
//! `mfe test event-hub` runs every check against the broker of `RABBITMQ_URL` under names of
//! its own (`mfe.test.<run-id>.*`: exchanges, queues, retry queues, DLQ), so live queues are
//! never touched, and deletes them afterwards. The broker restarts go through the active
//! runtime (docker or native); the outbox check uses a scratch database on the auth_db server.

use crate::config::{Component, DbService};
use crate::report::{Check, Report};
use crate::Ctx;
use anyhow::Context;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use mfe_events::outbox::{self, OutboxRelay};
use mfe_events::topology::{self, base_plan, subscription_plan, Subscription};
use mfe_events::{handler_fn, Envelope, HandlerError, Hub, HubConfig, Message};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// One run of the suite: its isolated names and everything to delete afterwards.
struct Suite {
    ctx: Ctx,
    args: EventHubArgs,
    prefix: String,
    hub: Hub,
    subs: Mutex<Vec<Subscription>>,
}

async fn event_hub(ctx: &Ctx, args: EventHubArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0 && args.rate > 0, "--messages and --rate must be positive");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("mfe.test.{}", &run_id[..12]);
    let cfg = HubConfig::from_env()?.isolated(&prefix).with_connection_name(format!("mfe test event-hub {prefix}"));
    let hub = Hub::connect(cfg).await.context("test event-hub")?;
    eprintln!("event-hub suite: names under {prefix}.* (deleted afterwards)");
    let suite = Arc::new(Suite { ctx: ctx.clone(), args, prefix, hub, subs: Mutex::new(Vec::new()) });

    let mut report = Report::new("test event-hub");
    // The checks run one at a time, never concurrently (each is awaited before the next is
    // polled). Latency and throughput come first, each alone on a quiet broker: the restart
    // and outage checks leave RabbitMQ recovering for a while, which would show as latency.
    let checks: Vec<(&str, BoxFuture<'_, anyhow::Result<Check>>)> = vec![
        ("topology", Box::pin(check_topology(&suite))),
        ("latency", Box::pin(check_latency(&suite))),
        ("throughput", Box::pin(check_throughput(&suite))),
        ("fifo-ordering", Box::pin(check_fifo(&suite))),
        ("retry-and-transient", Box::pin(check_retries(&suite))),
        ("consumer-crash-redelivery", Box::pin(check_crash(&suite))),
        ("broker-restart-persistence", Box::pin(check_restart(&suite))),
        ("outbox-broker-outage", Box::pin(check_outbox(&suite))),
    ];
    for (name, fut) in checks {
        eprintln!("event-hub suite: {name}...");
        match tokio::time::timeout(Duration::from_secs(180), fut).await {
            Ok(Ok(check)) => report.push(check),
            Ok(Err(e)) => report.push(Check::new(name, false, crate::error_line(&e))),
            Err(_) => report.push(Check::new(name, false, "timed out after 180 s")),
        }
        // The retry check yields two checks; keep names unique by construction.
        if let Some(extra) = TRANSIENT.lock().expect("not poisoned").take() {
            report.push(extra);
        }
    }
    let cleaned = suite.cleanup().await;
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
    report.metric("prefix", suite.prefix.clone());
    report.metric("cleaned_up", cleaned);
    report.emit(ctx.json)
}

/// The retry check also produces the transient-failure check; it parks it here.
static TRANSIENT: Mutex<Option<Check>> = Mutex::new(None);

impl Suite {
    /// A durable subscription named under the run's prefix, remembered for clean-up.
    fn sub(&self, consumer: &str, bindings: &[&str]) -> Subscription {
        let s = Subscription::durable(consumer, bindings).isolated(&self.prefix);
        self.subs.lock().expect("not poisoned").push(s.clone());
        s
    }

    /// A routing key under the run's prefix so checks never see each other's events.
    fn key(&self, check: &str) -> String {
        format!("mfe.test.{check}")
    }

    /// Deletes every queue and exchange the run declared; true when all went.
    async fn cleanup(&self) -> bool {
        let subs = self.subs.lock().expect("not poisoned").clone();
        let ok = self.hub.delete_isolated_topology(&subs).await.is_ok();
        self.hub.close().await;
        ok
    }

    async fn restart_broker(&self) -> anyhow::Result<Duration> {
        let rt = crate::infra::Runtime::select(&self.ctx, None).await?;
        let started = Instant::now();
        rt.restart(&[Component::Rabbitmq]).await.context("restarting rabbitmq through the active runtime")?;
        Ok(started.elapsed())
    }

    async fn wait_connected(&self, max: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while !self.hub.is_connected() {
            anyhow::ensure!(started.elapsed() < max, "the hub did not reconnect within {max:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(started.elapsed())
    }
}

fn event(key: &str, data: serde_json::Value) -> Envelope {
    Envelope::new(key, "mfe-test", data)
}

async fn publish_all(hub: &Hub, envs: &[Envelope]) -> anyhow::Result<()> {
    for chunk in envs.chunks(200) {
        for r in hub.publish_batch(chunk).await {
            r.context("confirmed publish")?;
        }
    }
    Ok(())
}

/// Polls `f` until true or `max` passed; returns whether it became true.
async fn eventually(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + max;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A handler that records every event id it sees, in order.
fn recorder(seen: Arc<Mutex<Vec<uuid::Uuid>>>) -> impl mfe_events::Handler {
    handler_fn(move |env: Envelope| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("not poisoned").push(env.id);
            Ok(())
        }
    })
}

async fn check_topology(s: &Suite) -> anyhow::Result<Check> {
    let path = s.ctx.config.root.join("rabbitmq/definitions.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let code = topology::definitions(&topology::platform_plan(&HubConfig::default()));
    let mut mismatches = Vec::new();
    for section in ["exchanges", "queues", "bindings"] {
        let set = |v: &serde_json::Value| -> HashSet<String> {
            v[section].as_array().map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default()
        };
        let (f, c) = (set(&file), set(&code));
        if f != c {
            mismatches.push(format!(
                "{section}: {} only in code, {} only in the file",
                c.difference(&f).count(),
                f.difference(&c).count()
            ));
        }
    }
    // Declare the whole platform topology under the prefix, then check it passively.
    let cfg = s.hub.config().clone();
    let subs: Vec<Subscription> = topology::service_queues()
        .into_iter()
        .map(|sub| {
            let sub = sub.isolated(&s.prefix);
            s.subs.lock().expect("not poisoned").push(sub.clone());
            sub
        })
        .collect();
    let mut plan = base_plan(&cfg);
    for sub in &subs {
        plan.extend(subscription_plan(&cfg, sub));
    }
    s.hub.declare(&plan).await.context("declaring the topology")?;
    for q in &plan.queues {
        if !s.hub.queue_exists(&q.name).await? {
            mismatches.push(format!("queue {} missing after declaration", q.name));
            break;
        }
    }
    let passed = mismatches.is_empty();
    let detail = if passed {
        format!(
            "definitions.json = code; declared {} exchanges, {} queues, {} bindings ({})",
            plan.exchanges.len(),
            plan.queues.len(),
            plan.bindings.len(),
            cfg.queue_type.as_str()
        )
    } else {
        mismatches.join("; ")
    };
    Ok(Check::new("topology", passed, detail)
        .metric("exchanges", plan.exchanges.len())
        .metric("queues", plan.queues.len())
        .metric("bindings", plan.bindings.len()))
}

async fn check_fifo(s: &Suite) -> anyhow::Result<Check> {
    let key = s.key("fifo");
    let sub = s.sub("fifo", &[&key]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = s.hub.subscribe(sub, recorder(seen.clone())).await?;
    let envs: Vec<Envelope> = (0..100).map(|i| event(&key, json!({"seq": i}))).collect();
    publish_all(&s.hub, &envs).await?;
    eventually(Duration::from_secs(15), || seen.lock().expect("not poisoned").len() >= 100).await;
    handle.cancel().await;
    let got = seen.lock().expect("not poisoned").clone();
    let want: Vec<uuid::Uuid> = envs.iter().map(|e| e.id).collect();
    let out_of_order = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    let passed = got == want;
    Ok(Check::new("fifo-ordering", passed, format!("{} of 100 received, {out_of_order} out of order", got.len()))
        .metric("received", got.len())
        .metric("out_of_order", out_of_order))
}

/// Retry ×3 then DLQ, and (concurrently) fails-twice-then-succeeds; both with the configured
/// delays (1 s, 2 s, 4 s by default).
async fn check_retries(s: &Suite) -> anyhow::Result<Check> {
    let delays: Vec<u128> = s.hub.config().retry_delays.iter().map(|d| d.as_millis()).collect();
    let (k_dead, k_transient) = (s.key("retry"), s.key("transient"));
    let dead_runs = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let r = dead_runs.clone();
    let h1 = s
        .hub
        .subscribe(
            s.sub("retry", &[&k_dead]),
            handler_fn(move |_env: Envelope| {
                let r = r.clone();
                async move {
                    r.lock().expect("not poisoned").push(Instant::now());
                    Err(HandlerError::retry("suite: always failing handler"))
                }
            }),
        )
        .await?;
    let transient_runs = Arc::new(AtomicUsize::new(0));
    let transient_done = Arc::new(AtomicUsize::new(0));
    let (tr, td) = (transient_runs.clone(), transient_done.clone());
    let h2 = s
        .hub
        .subscribe(
            s.sub("transient", &[&k_transient]),
            handler_fn(move |_env: Envelope| {
                let (tr, td) = (tr.clone(), td.clone());
                async move {
                    if tr.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(HandlerError::retry("suite: transient failure"));
                    }
                    td.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
        )
        .await?;
    let dead_env = event(&k_dead, json!({}));
    let transient_env = event(&k_transient, json!({}));
    s.hub.publish(&dead_env).await?;
    s.hub.publish(&transient_env).await?;

    // Everything in the DLQ, by event id.
    let total: u128 = delays.iter().sum();
    let deadline = Instant::now() + Duration::from_millis(total as u64) + Duration::from_secs(10);
    let mut dlq: HashMap<uuid::Uuid, Message> = HashMap::new();
    while Instant::now() < deadline && !dlq.contains_key(&dead_env.id) {
        match s.hub.get(&s.hub.config().dlq).await? {
            Some(m) => {
                if let Some(env) = m.envelope() {
                    dlq.insert(env.id, m);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // The transient event finished long before (1 s + 2 s); give it a moment anyway.
    eventually(Duration::from_secs(2), || transient_done.load(Ordering::SeqCst) >= 1).await;
    h1.cancel().await;
    h2.cancel().await;

    let runs = dead_runs.lock().expect("not poisoned").clone();
    let gaps: Vec<u128> = runs.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    let gaps_ok = gaps.len() == delays.len() && gaps.iter().zip(&delays).all(|(g, d)| *g + 20 >= *d && *g < *d + 1500);
    let dead = dlq.get(&dead_env.id);
    let reason = dead.and_then(|m| m.header_str("x-death-reason")).unwrap_or_default().to_string();
    let attempts = dead.and_then(|m| m.header_i64("x-attempts")).unwrap_or_default();
    let consumer = dead.and_then(|m| m.header_str("x-failed-consumer")).unwrap_or_default().to_string();
    let passed = dead.is_some() && gaps_ok && attempts == delays.len() as i64 + 1 && runs.len() == delays.len() + 1;
    let gaps_text = gaps.iter().map(|g| format!("{:.1}s", *g as f64 / 1000.0)).collect::<Vec<_>>().join(", ");
    let retry = Check::new(
        "retry-then-dlq",
        passed,
        format!(
            "{} handler runs, retries after {gaps_text}; DLQ: {} (reason {reason:?}, consumer {consumer:?}, x-attempts {attempts})",
            runs.len(),
            if dead.is_some() { "yes" } else { "no" }
        ),
    )
    .metric("attempts", runs.len())
    .metric("delays_ms", gaps.iter().map(|g| *g as u64).collect::<Vec<_>>())
    .metric("dead_lettered", dead.is_some());

    let (t_runs, t_done) = (transient_runs.load(Ordering::SeqCst), transient_done.load(Ordering::SeqCst));
    let t_in_dlq = dlq.contains_key(&transient_env.id);
    let t_passed = t_runs == 3 && t_done == 1 && !t_in_dlq;
    *TRANSIENT.lock().expect("not poisoned") = Some(
        Check::new(
            "transient-failure",
            t_passed,
            format!("failed twice, then processed {t_done} time(s) in {t_runs} runs; in DLQ: {t_in_dlq}"),
        )
        .metric("runs", t_runs)
        .metric("processed", t_done)
        .metric("dead_lettered", t_in_dlq),
    );
    Ok(retry)
}

/// A consumer dies mid-message (its channel closes before the ack): the broker redelivers it
/// to the next consumer, which processes it once.
async fn check_crash(s: &Suite) -> anyhow::Result<Check> {
    let key = s.key("crash");
    let sub = s.sub("crash", &[&key]);
    let started = Arc::new(AtomicUsize::new(0));
    let st = started.clone();
    let crashing = s
        .hub
        .subscribe(
            sub.clone(),
            handler_fn(move |_env: Envelope| {
                let st = st.clone();
                async move {
                    st.fetch_add(1, Ordering::SeqCst);
                    // Hangs until the consumer is killed, like a process dying mid-work.
                    futures::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await?;
    let env = event(&key, json!({}));
    s.hub.publish(&env).await?;
    eventually(Duration::from_secs(10), || started.load(Ordering::SeqCst) >= 1).await;
    crashing.cancel().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let survivor = s.hub.subscribe(sub, recorder(seen.clone())).await?;
    eventually(Duration::from_secs(10), || !seen.lock().expect("not poisoned").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    survivor.cancel().await;
    let processed = seen.lock().expect("not poisoned").iter().filter(|id| **id == env.id).count();
    let passed = started.load(Ordering::SeqCst) == 1 && processed == 1;
    Ok(Check::new(
        "consumer-crash-redelivery",
        passed,
        format!(
            "crashed consumer started it {} time(s); redelivered and processed {processed} time(s)",
            started.load(Ordering::SeqCst)
        ),
    )
    .metric("processed", processed))
}

async fn check_restart(s: &Suite) -> anyhow::Result<Check> {
    let key = s.key("persist");
    let sub = s.sub("persist", &[&key]);
    s.hub.declare(&subscription_plan(s.hub.config(), &sub)).await?;
    let n = s.args.messages;
    let envs: Vec<Envelope> = (0..n).map(|i| event(&key, json!({"seq": i}))).collect();
    publish_all(&s.hub, &envs).await?;
    let restart = s.restart_broker().await?;
    let reconnect = s.wait_connected(Duration::from_secs(60)).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = s.hub.subscribe(sub, recorder(seen.clone())).await?;
    eventually(Duration::from_secs(60), || seen.lock().expect("not poisoned").len() >= n).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.cancel().await;
    let got = seen.lock().expect("not poisoned").clone();
    let unique: HashSet<_> = got.iter().collect();
    let lost = envs.iter().filter(|e| !unique.contains(&e.id)).count();
    let duplicates = got.len() - unique.len();
    Ok(Check::new(
        "broker-restart-persistence",
        lost == 0,
        format!(
            "{n} confirmed before the restart, {} received after it: lost {lost}, duplicates {duplicates}",
            unique.len()
        ),
    )
    .metric("published", n)
    .metric("lost", lost)
    .metric("duplicates", duplicates)
    .metric("restart_s", restart.as_secs_f64())
    .metric("reconnect_s", reconnect.as_secs_f64()))
}

/// A scratch database with the event hub tables on the auth_db server, dropped afterwards.
struct ScratchDb {
    admin_url: String,
    name: String,
    pool: sqlx::PgPool,
}

impl ScratchDb {
    async fn create(s: &Suite) -> anyhow::Result<ScratchDb> {
        let t = s.ctx.config.pg(DbService::Auth)?;
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

async fn check_outbox(s: &Suite) -> anyhow::Result<Check> {
    let db = ScratchDb::create(s).await?;
    let result = outbox_with(s, &db).await;
    db.drop_db().await;
    result
}

async fn outbox_with(s: &Suite, db: &ScratchDb) -> anyhow::Result<Check> {
    let key = s.key("outbox");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handle = s.hub.subscribe(s.sub("outbox", &[&key]), recorder(seen.clone())).await?;
    let relay = OutboxRelay::spawn(db.pool.clone(), s.hub.clone());
    let rt = crate::infra::Runtime::select(&s.ctx, None).await?;
    rt.stop(&[Component::Rabbitmq]).await.context("stopping rabbitmq through the active runtime")?;
    let outage = Instant::now();
    let n = 100;
    let mut ids = Vec::with_capacity(n);
    let writes = async {
        for i in 0..n {
            let env = event(&key, json!({"seq": i}));
            let mut tx = db.pool.begin().await?;
            outbox::enqueue(&mut tx, &env).await?;
            tx.commit().await?;
            relay.notify();
            ids.push(env.id);
        }
        anyhow::Ok(())
    };
    let written = writes.await;
    let pending_during = outbox::pending_count(&db.pool).await.unwrap_or(-1);
    let started = rt.start(&[Component::Rabbitmq], true).await.context("starting rabbitmq through the active runtime");
    let outage_s = outage.elapsed().as_secs_f64();
    written?;
    started?;
    s.wait_connected(Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(60), || {
        let got = seen.lock().expect("not poisoned");
        ids.iter().all(|id| got.contains(id))
    })
    .await;
    relay.shutdown().await;
    handle.cancel().await;
    let got: HashSet<uuid::Uuid> = seen.lock().expect("not poisoned").iter().copied().collect();
    let delivered = ids.iter().filter(|id| got.contains(id)).count();
    let pending_after = outbox::pending_count(&db.pool).await?;
    let passed = delivered == n && pending_after == 0;
    Ok(Check::new(
        "outbox-broker-outage",
        passed,
        format!(
            "{n} events committed with the broker down ({pending_during} pending), {delivered} delivered after it returned, {pending_after} still pending"
        ),
    )
    .metric("written", n)
    .metric("delivered", delivered)
    .metric("lost", n - delivered)
    .metric("outage_s", outage_s))
}

async fn check_throughput(s: &Suite) -> anyhow::Result<Check> {
    let key = s.key("throughput");
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let handle = s
        .hub
        .subscribe(
            s.sub("throughput", &[&key]),
            handler_fn(move |_env: Envelope| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
        .await?;
    let n = s.args.messages;
    let payload = "x".repeat(200);
    let envs: Vec<Envelope> = (0..n).map(|i| event(&key, json!({"seq": i, "pad": payload}))).collect();
    let started = Instant::now();
    publish_all(&s.hub, &envs).await?;
    let publish_s = started.elapsed().as_secs_f64();
    eventually(Duration::from_secs(120), || received.load(Ordering::Relaxed) >= n).await;
    let total_s = started.elapsed().as_secs_f64();
    handle.cancel().await;
    let got = received.load(Ordering::Relaxed);
    let publish_rate = n as f64 / publish_s;
    let rate = got as f64 / total_s;
    Ok(Check::new(
        "throughput",
        got >= n && rate > MIN_THROUGHPUT,
        format!("{n} confirmed publishes and {got} consumes: {rate:.0} msg/s end to end (floor {MIN_THROUGHPUT:.0})"),
    )
    .metric("messages", n)
    .metric("publish_msgs_per_s", publish_rate.round())
    .metric("msgs_per_s", rate.round()))
}

async fn check_latency(s: &Suite) -> anyhow::Result<Check> {
    let key = s.key("latency");
    let origin = Instant::now();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let h = hist.clone();
    let handle = s
        .hub
        .subscribe(
            s.sub("latency", &[&key]),
            handler_fn(move |env: Envelope| {
                let h = h.clone();
                async move {
                    if env.data["warmUp"].as_bool().unwrap_or(false) {
                        return Ok(());
                    }
                    let sent_us = env.data["sentUs"].as_u64().unwrap_or_default();
                    let now_us = origin.elapsed().as_micros() as u64;
                    let _ = h.lock().expect("not poisoned").record(now_us.saturating_sub(sent_us).max(1));
                    Ok(())
                }
            }),
        )
        .await?;
    let rate = s.args.rate;
    let n = (rate as usize * 3).clamp(100, 20_000);
    // A warm-up of 0.2 s at the same rate, not recorded: the first publishes pay for opening
    // the publish channel and for the consumer's first deliveries.
    let warm = (rate as usize / 5).clamp(20, 2_000);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(warm + n);
    for i in 0..warm + n {
        tick.tick().await;
        let env = event(&key, json!({"seq": i, "warmUp": i < warm, "sentUs": origin.elapsed().as_micros() as u64}));
        let (hub, failures) = (s.hub.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            if hub.publish(&env).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    futures::future::join_all(tasks).await;
    eventually(Duration::from_secs(30), || hist.lock().expect("not poisoned").len() as usize >= n).await;
    handle.cancel().await;
    let hist = hist.lock().expect("not poisoned").clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p95, p99) = (ms(0.50), ms(0.95), ms(0.99));
    let got = hist.len() as usize;
    let passed = got >= n && p95 < MAX_P95_MS && failures.load(Ordering::Relaxed) == 0;
    Ok(Check::new(
        "latency",
        passed,
        format!("{got}/{n} at {rate} msg/s: p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms (p95 floor {MAX_P95_MS:.0} ms)"),
    )
    .metric("rate", rate)
    .metric("p50_ms", p50)
    .metric("p95_ms", p95)
    .metric("p99_ms", p99))
}
