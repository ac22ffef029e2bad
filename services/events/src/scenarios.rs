//! The event hub's reliability scenarios (SPEC §7): run by `mfe test event-hub` against a live
//! broker and by this crate's integration tests (`tests/it/scenarios.rs`), so each behaviour is
//! written once.
//!
//! A [`Scenarios`] runs every scenario under names of its own (a hub configured with
//! [`HubConfig::isolated`](crate::HubConfig::isolated) and subscriptions isolated under the same
//! prefix), remembers what it declared and deletes it in [`Scenarios::cleanup`]. Each scenario
//! returns neutral [`ScenarioOutcome`]s (name, verdict, one-line detail, figures), which the
//! caller maps to its own report; an `Err` means the scenario could not run at all. What only
//! the caller can do is passed in: stopping and restarting the broker ([`BrokerControl`]) and
//! a scratch database with [`EVENT_HUB_DDL`](crate::EVENT_HUB_DDL) applied (a `PgPool`).

use crate::outbox::{self, OutboxRelay};
use crate::topology::{self, base_plan, subscription_plan, Subscription};
use crate::{handler_fn, Envelope, HandlerError, Hub, Message};
use anyhow::Context;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one scenario found: the check's name, whether it passed, a line for a person, and its
/// figures (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioOutcome {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub metrics: Map<String, Value>,
}

impl ScenarioOutcome {
    pub fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self { name: name.into(), passed, detail: detail.into(), metrics: Map::new() }
    }

    /// Adds a figure (builder style).
    pub fn metric(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metrics.insert(key.to_string(), value.into());
        self
    }
}

/// Stops, starts and restarts the broker the hub talks to: the CLI through the active runtime,
/// the tests through `target/debug/mfe infra`.
pub trait BrokerControl: Send + Sync {
    fn stop(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Starts it and waits until it is healthy.
    fn start(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    fn restart(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// One run of the scenarios on `hub`, under `prefix`; see the module documentation.
pub struct Scenarios {
    hub: Hub,
    prefix: String,
    subs: Mutex<Vec<Subscription>>,
}

impl Scenarios {
    /// `hub` must be configured with `HubConfig::isolated(prefix)`.
    pub fn new(hub: Hub, prefix: impl Into<String>) -> Self {
        Self { hub, prefix: prefix.into(), subs: Mutex::new(Vec::new()) }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes every queue and exchange the run declared and closes the hub; true when all went.
    pub async fn cleanup(&self) -> bool {
        let subs = self.subs.lock().expect("not poisoned").clone();
        let ok = self.hub.delete_isolated_topology(&subs).await.is_ok();
        self.hub.close().await;
        ok
    }

    /// A durable subscription named under the run's prefix, remembered for clean-up.
    fn sub(&self, consumer: &str, bindings: &[&str]) -> Subscription {
        let s = Subscription::durable(consumer, bindings).isolated(&self.prefix);
        self.subs.lock().expect("not poisoned").push(s.clone());
        s
    }

    /// The routing key of a scenario, so scenarios never see each other's events.
    fn key(&self, scenario: &str) -> String {
        format!("mfe.test.{scenario}")
    }

    async fn wait_connected(&self, max: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while !self.hub.is_connected() {
            anyhow::ensure!(started.elapsed() < max, "the hub did not reconnect within {max:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(started.elapsed())
    }

    /// `topology`: `definitions` (the parsed `rabbitmq/definitions.json`) equals what the code
    /// declares, and the whole platform topology declares under the prefix.
    pub async fn topology(&self, definitions: &Value) -> anyhow::Result<ScenarioOutcome> {
        let code = topology::definitions(&topology::platform_plan(&crate::HubConfig::default()));
        let mut mismatches = Vec::new();
        for section in ["exchanges", "queues", "bindings"] {
            let set = |v: &Value| -> HashSet<String> {
                v[section].as_array().map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default()
            };
            let (f, c) = (set(definitions), set(&code));
            if f != c {
                mismatches.push(format!(
                    "{section}: {} only in code, {} only in the file",
                    c.difference(&f).count(),
                    f.difference(&c).count()
                ));
            }
        }
        // Declare the whole platform topology under the prefix, then check it passively.
        let cfg = self.hub.config().clone();
        let subs: Vec<Subscription> = topology::service_queues()
            .into_iter()
            .map(|sub| {
                let sub = sub.isolated(&self.prefix);
                self.subs.lock().expect("not poisoned").push(sub.clone());
                sub
            })
            .collect();
        let mut plan = base_plan(&cfg);
        for sub in &subs {
            plan.extend(subscription_plan(&cfg, sub));
        }
        self.hub.declare(&plan).await.context("declaring the topology")?;
        for q in &plan.queues {
            if !self.hub.queue_exists(&q.name).await? {
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
        Ok(ScenarioOutcome::new("topology", passed, detail)
            .metric("exchanges", plan.exchanges.len())
            .metric("queues", plan.queues.len())
            .metric("bindings", plan.bindings.len()))
    }

    /// `fifo-ordering`: 100 events published in order reach one consumer in that order.
    pub async fn fifo(&self) -> anyhow::Result<ScenarioOutcome> {
        let key = self.key("fifo");
        let sub = self.sub("fifo", &[&key]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handle = self.hub.subscribe(sub, recorder(seen.clone())).await?;
        let envs: Vec<Envelope> = (0..100).map(|i| event(&key, json!({"seq": i}))).collect();
        publish_all(&self.hub, &envs).await?;
        eventually(Duration::from_secs(15), || seen.lock().expect("not poisoned").len() >= 100).await;
        handle.cancel().await;
        let got = seen.lock().expect("not poisoned").clone();
        let want: Vec<uuid::Uuid> = envs.iter().map(|e| e.id).collect();
        let out_of_order = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        let passed = got == want;
        Ok(ScenarioOutcome::new(
            "fifo-ordering",
            passed,
            format!("{} of 100 received, {out_of_order} out of order", got.len()),
        )
        .metric("received", got.len())
        .metric("out_of_order", out_of_order))
    }

    /// `retry-then-dlq` and `transient-failure`, run together: a handler that always fails is
    /// retried after each configured delay and then dead-lettered with the reason; one that
    /// fails twice then succeeds is processed once and never dead-lettered.
    pub async fn retries(&self) -> anyhow::Result<[ScenarioOutcome; 2]> {
        let hub = &self.hub;
        let delays: Vec<u128> = hub.config().retry_delays.iter().map(|d| d.as_millis()).collect();
        let (k_dead, k_transient) = (self.key("retry"), self.key("transient"));
        let dead_runs = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let r = dead_runs.clone();
        let h1 = hub
            .subscribe(
                self.sub("retry", &[&k_dead]),
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
        let h2 = hub
            .subscribe(
                self.sub("transient", &[&k_transient]),
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
        hub.publish(&dead_env).await?;
        hub.publish(&transient_env).await?;

        // Everything in the DLQ, by event id.
        let total: u128 = delays.iter().sum();
        let deadline = Instant::now() + Duration::from_millis(total as u64) + Duration::from_secs(10);
        let mut dlq: HashMap<uuid::Uuid, Message> = HashMap::new();
        while Instant::now() < deadline && !dlq.contains_key(&dead_env.id) {
            match hub.get(&hub.config().dlq).await? {
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
        let gaps_ok =
            gaps.len() == delays.len() && gaps.iter().zip(&delays).all(|(g, d)| *g + 20 >= *d && *g < *d + 1500);
        let dead = dlq.get(&dead_env.id);
        let reason = dead.and_then(|m| m.header_str("x-death-reason")).unwrap_or_default().to_string();
        let attempts = dead.and_then(|m| m.header_i64("x-attempts")).unwrap_or_default();
        let consumer = dead.and_then(|m| m.header_str("x-failed-consumer")).unwrap_or_default().to_string();
        let passed = dead.is_some() && gaps_ok && attempts == delays.len() as i64 + 1 && runs.len() == delays.len() + 1;
        let gaps_text = gaps.iter().map(|g| format!("{:.1}s", *g as f64 / 1000.0)).collect::<Vec<_>>().join(", ");
        let retry = ScenarioOutcome::new(
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
        let transient = ScenarioOutcome::new(
            "transient-failure",
            t_passed,
            format!("failed twice, then processed {t_done} time(s) in {t_runs} runs; in DLQ: {t_in_dlq}"),
        )
        .metric("runs", t_runs)
        .metric("processed", t_done)
        .metric("dead_lettered", t_in_dlq);
        Ok([retry, transient])
    }

    /// `consumer-crash-redelivery`: a consumer dies mid-message (its channel closes before the
    /// ack); the broker redelivers it to the next consumer, which processes it once.
    pub async fn consumer_crash(&self) -> anyhow::Result<ScenarioOutcome> {
        let key = self.key("crash");
        let sub = self.sub("crash", &[&key]);
        let started = Arc::new(AtomicUsize::new(0));
        let st = started.clone();
        let crashing = self
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
        self.hub.publish(&env).await?;
        eventually(Duration::from_secs(10), || started.load(Ordering::SeqCst) >= 1).await;
        crashing.cancel().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let survivor = self.hub.subscribe(sub, recorder(seen.clone())).await?;
        eventually(Duration::from_secs(10), || !seen.lock().expect("not poisoned").is_empty()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        survivor.cancel().await;
        let processed = seen.lock().expect("not poisoned").iter().filter(|id| **id == env.id).count();
        let passed = started.load(Ordering::SeqCst) == 1 && processed == 1;
        Ok(ScenarioOutcome::new(
            "consumer-crash-redelivery",
            passed,
            format!(
                "crashed consumer started it {} time(s); redelivered and processed {processed} time(s)",
                started.load(Ordering::SeqCst)
            ),
        )
        .metric("processed", processed))
    }

    /// `broker-restart-persistence`: `messages` events confirmed before a broker restart are
    /// all consumed after it (none lost; duplicates counted).
    pub async fn broker_restart(&self, messages: usize, broker: &dyn BrokerControl) -> anyhow::Result<ScenarioOutcome> {
        let key = self.key("persist");
        let sub = self.sub("persist", &[&key]);
        self.hub.declare(&subscription_plan(self.hub.config(), &sub)).await?;
        let n = messages;
        let envs: Vec<Envelope> = (0..n).map(|i| event(&key, json!({"seq": i}))).collect();
        publish_all(&self.hub, &envs).await?;
        let started = Instant::now();
        broker.restart().await?;
        let restart = started.elapsed();
        let reconnect = self.wait_connected(Duration::from_secs(60)).await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handle = self.hub.subscribe(sub, recorder(seen.clone())).await?;
        eventually(Duration::from_secs(60), || seen.lock().expect("not poisoned").len() >= n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.cancel().await;
        let got = seen.lock().expect("not poisoned").clone();
        let unique: HashSet<_> = got.iter().collect();
        let lost = envs.iter().filter(|e| !unique.contains(&e.id)).count();
        let duplicates = got.len() - unique.len();
        Ok(ScenarioOutcome::new(
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

    /// `outbox-broker-outage`: 100 events committed to the outbox of `pool` (a database with
    /// the event hub tables) while the broker is stopped are all delivered once it is back.
    pub async fn outbox_outage(
        &self,
        pool: &sqlx::PgPool,
        broker: &dyn BrokerControl,
    ) -> anyhow::Result<ScenarioOutcome> {
        let key = self.key("outbox");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handle = self.hub.subscribe(self.sub("outbox", &[&key]), recorder(seen.clone())).await?;
        let relay = OutboxRelay::spawn(pool.clone(), self.hub.clone());
        broker.stop().await?;
        let outage = Instant::now();
        let n = 100;
        let mut ids = Vec::with_capacity(n);
        let writes = async {
            for i in 0..n {
                let env = event(&key, json!({"seq": i}));
                let mut tx = pool.begin().await?;
                outbox::enqueue(&mut tx, &env).await?;
                tx.commit().await?;
                relay.notify();
                ids.push(env.id);
            }
            anyhow::Ok(())
        };
        let written = writes.await;
        let pending_during = outbox::pending_count(pool).await.unwrap_or(-1);
        let started = broker.start().await;
        let outage_s = outage.elapsed().as_secs_f64();
        written?;
        started?;
        self.wait_connected(Duration::from_secs(60)).await?;
        eventually(Duration::from_secs(60), || {
            let got = seen.lock().expect("not poisoned");
            ids.iter().all(|id| got.contains(id))
        })
        .await;
        relay.shutdown().await;
        handle.cancel().await;
        let got: HashSet<uuid::Uuid> = seen.lock().expect("not poisoned").iter().copied().collect();
        let delivered = ids.iter().filter(|id| got.contains(id)).count();
        let pending_after = outbox::pending_count(pool).await?;
        let passed = delivered == n && pending_after == 0;
        Ok(ScenarioOutcome::new(
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

    /// `throughput`: `messages` confirmed publishes and their consumes, end to end faster than
    /// `floor` msg/s.
    pub async fn throughput(&self, messages: usize, floor: f64) -> anyhow::Result<ScenarioOutcome> {
        let key = self.key("throughput");
        let received = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        let handle = self
            .hub
            .subscribe(
                self.sub("throughput", &[&key]),
                handler_fn(move |_env: Envelope| {
                    let r = r.clone();
                    async move {
                        r.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                }),
            )
            .await?;
        let n = messages;
        let payload = "x".repeat(200);
        let envs: Vec<Envelope> = (0..n).map(|i| event(&key, json!({"seq": i, "pad": payload}))).collect();
        let started = Instant::now();
        publish_all(&self.hub, &envs).await?;
        let publish_s = started.elapsed().as_secs_f64();
        eventually(Duration::from_secs(120), || received.load(Ordering::Relaxed) >= n).await;
        let total_s = started.elapsed().as_secs_f64();
        handle.cancel().await;
        let got = received.load(Ordering::Relaxed);
        let publish_rate = n as f64 / publish_s;
        let rate = got as f64 / total_s;
        Ok(ScenarioOutcome::new(
            "throughput",
            got >= n && rate > floor,
            format!("{n} confirmed publishes and {got} consumes: {rate:.0} msg/s end to end (floor {floor:.0})"),
        )
        .metric("messages", n)
        .metric("publish_msgs_per_s", publish_rate.round())
        .metric("msgs_per_s", rate.round()))
    }

    /// `latency`: publish to handler at a fixed `rate` (msg/s) for 3 s, p95 under `max_p95_ms`.
    pub async fn latency(&self, rate: u32, max_p95_ms: f64) -> anyhow::Result<ScenarioOutcome> {
        anyhow::ensure!(rate > 0, "the latency rate must be positive");
        let key = self.key("latency");
        let origin = Instant::now();
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
        let h = hist.clone();
        let handle = self
            .hub
            .subscribe(
                self.sub("latency", &[&key]),
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
        let n = (rate as usize * 3).clamp(100, 20_000);
        // A warm-up of 0.2 s at the same rate, not recorded: the first publishes pay for
        // opening the publish channel and for the consumer's first deliveries.
        let warm = (rate as usize / 5).clamp(20, 2_000);
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let failures = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(warm + n);
        for i in 0..warm + n {
            tick.tick().await;
            let env = event(&key, json!({"seq": i, "warmUp": i < warm, "sentUs": origin.elapsed().as_micros() as u64}));
            let (hub, failures) = (self.hub.clone(), failures.clone());
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
        let passed = got >= n && p95 < max_p95_ms && failures.load(Ordering::Relaxed) == 0;
        Ok(ScenarioOutcome::new(
            "latency",
            passed,
            format!(
                "{got}/{n} at {rate} msg/s: p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms (p95 floor {max_p95_ms:.0} ms)"
            ),
        )
        .metric("rate", rate)
        .metric("p50_ms", p50)
        .metric("p95_ms", p95)
        .metric("p99_ms", p99))
    }
}

fn event(key: &str, data: Value) -> Envelope {
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
fn recorder(seen: Arc<Mutex<Vec<uuid::Uuid>>>) -> impl crate::Handler {
    handler_fn(move |env: Envelope| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("not poisoned").push(env.id);
            Ok(())
        }
    })
}
