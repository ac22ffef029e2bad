//! The event-hub benchmark driver (run by `scripts/bench-event-hub.sh`, not a test):
//! `cargo run --release -p mfe-events --example bench -- <ours|ours-retry|amqprs> <rate|0> <messages>`
//! prints one JSON line: msgs/s (confirmed publish + consume, first publish to last ack) and
//! end-to-end latency p50/p95/p99 from a timestamp in each message. Rate 0 = saturation.
//!
//! Every mode uses the same shape: a durable topic exchange and a durable queue of its own,
//! persistent 256-byte messages, 200 unconfirmed publishes in flight, prefetch 200, manual
//! acks (quorum queues when `RABBITMQ_QUEUE_TYPE=quorum`). `ours-retry` runs our publisher and subscriber with 1 % of messages failing once
//! (so they go through the retry queue) to price the retry machinery.

use hdrhistogram::Histogram;
use mfe_events::{handler_fn, Envelope, HandlerError, Hub, HubConfig, Subscription};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

const IN_FLIGHT: usize = 200;
const PREFETCH: u16 = 200;
const BODY_BYTES: usize = 256;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default()
}

/// `ns` as 20 ASCII digits, padded to 256 bytes (the same body pika's bench sends).
fn raw_body(ns: u64) -> Vec<u8> {
    let mut b = format!("{ns:020}").into_bytes();
    b.resize(BODY_BYTES, b'x');
    b
}

fn raw_ns(body: &[u8]) -> u64 {
    std::str::from_utf8(&body[..20.min(body.len())]).ok().and_then(|s| s.parse().ok()).unwrap_or_default()
}

struct Outcome {
    n: usize,
    elapsed: Duration,
    hist: Histogram<u64>,
}

/// Paces publish `i`: at saturation not at all, else at start + i/rate.
async fn pace(start: Instant, rate: u64, i: usize) {
    if rate > 0 {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate as f64)).into()).await;
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

async fn ours(url: &str, rate: u64, n: usize, fail_every: usize) -> anyhow::Result<Outcome> {
    // BENCH_PREFIX: a topology another process watches (scripts/bench-dashboard.sh's tails).
    let prefix =
        std::env::var("BENCH_PREFIX").unwrap_or_else(|_| format!("mfe.bench.{}", uuid::Uuid::new_v4().simple()));
    let mut cfg = HubConfig::default().isolated(&prefix);
    cfg.urls = vec![url.to_string()];
    // RABBITMQ_QUEUE_TYPE=quorum measures the HA broker's queues (scripts/bench-ha.sh).
    cfg.queue_type = HubConfig::from_env()?.queue_type;
    cfg.prefetch = PREFETCH;
    cfg.retry_delays = vec![Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400)];
    let hub = Hub::connect(cfg).await?;
    let key = "bench.event";
    let sub = Subscription::durable("bench", &[key]).isolated(&prefix);
    let received = Arc::new(AtomicUsize::new(0));
    let h = Arc::new(Mutex::new(hist()));
    let failed_once = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (r, hh, fo) = (received.clone(), h.clone(), failed_once.clone());
    let handle = hub
        .subscribe(
            sub.clone(),
            handler_fn(move |env: Envelope| {
                let (r, hh, fo) = (r.clone(), hh.clone(), fo.clone());
                async move {
                    let seq = env.data["seq"].as_u64().unwrap_or_default() as usize;
                    if fail_every > 0 && seq.is_multiple_of(fail_every) && fo.lock().unwrap().insert(seq) {
                        return Err(HandlerError::retry("bench: fails once"));
                    }
                    let sent = env.data["t"].as_u64().unwrap_or_default();
                    let _ = hh.lock().unwrap().record((now_ns().saturating_sub(sent) / 1000).max(1));
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
        .await?;
    // Pad the envelope so the JSON body is 256 bytes like the raw modes.
    let probe = Envelope::new(key, "bench", serde_json::json!({"seq": 0u64, "t": now_ns(), "pad": ""}));
    let pad = "x".repeat(BODY_BYTES.saturating_sub(serde_json::to_vec(&probe)?.len()));
    // Like the amqprs and pika modes: each publish goes out as soon as it is due and a slot
    // of the 200 in flight is free; its confirm is awaited by a task of its own.
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let failed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    for i in 0..n {
        pace(start, rate, i).await;
        let permit = permits.clone().acquire_owned().await?;
        if let Some(e) = failed.lock().unwrap().clone() {
            anyhow::bail!("bench: publish failed: {e}");
        }
        let env = Envelope::new(key, "bench", serde_json::json!({"seq": i, "t": now_ns(), "pad": pad}));
        let (hub, failed) = (hub.clone(), failed.clone());
        tokio::spawn(async move {
            if let Err(e) = hub.publish(&env).await {
                failed.lock().unwrap().get_or_insert(e.to_string());
            }
            drop(permit);
        });
    }
    // Every publish confirmed once every permit is back.
    let _all = permits.acquire_many(IN_FLIGHT as u32).await?;
    if let Some(e) = failed.lock().unwrap().clone() {
        anyhow::bail!("bench: publish failed: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    handle.cancel().await;
    let ch = hub.raw_channel().await?;
    let c = hub.config().clone();
    let mut plan = mfe_events::topology::base_plan(&c);
    plan.extend(mfe_events::topology::subscription_plan(&c, &sub));
    for q in &plan.queues {
        let _ = ch.queue_delete(&q.name, Default::default()).await;
    }
    for e in &plan.exchanges {
        let _ = ch.exchange_delete(&e.name, Default::default()).await;
    }
    hub.close().await;
    let hist = h.lock().unwrap().clone();
    Ok(Outcome { n: received.load(Ordering::Relaxed), elapsed, hist })
}

mod raw {
    use super::*;
    use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
    use amqprs::channel::{
        BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
        ConfirmSelectArguments, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
        QueueDeclareArguments, QueueDeleteArguments,
    };
    use amqprs::connection::{Connection, OpenConnectionArguments};
    use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};

    /// Returns a publish permit for every confirmed delivery tag.
    struct Confirms {
        permits: Arc<Semaphore>,
        last: u64,
    }

    #[async_trait::async_trait]
    impl ChannelCallback for Confirms {
        async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
            Ok(())
        }
        async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
            Ok(())
        }
        async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
            Ok(active)
        }
        async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
            let tag = ack.delivery_tag();
            let n = if ack.mutiple() { tag.saturating_sub(self.last) } else { 1 };
            self.last = self.last.max(tag);
            self.permits.add_permits(n as usize);
        }
        async fn publish_nack(&mut self, _: &Channel, _: Nack) {
            panic!("amqprs bench: a publish was nacked");
        }
        async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
    }

    pub async fn run(url: &url::Url, rate: u64, n: usize) -> anyhow::Result<Outcome> {
        let args = OpenConnectionArguments::new(
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5672),
            url.username(),
            url.password().unwrap_or("guest"),
        )
        .virtual_host("/")
        .finish();
        let conn = Connection::open(&args).await?;
        conn.register_callback(DefaultConnectionCallback).await?;
        let name = format!("mfe.bench.{}", uuid::Uuid::new_v4().simple());
        let (exchange, queue) = (format!("{name}.events"), format!("{name}.queue"));

        let consumer_ch = conn.open_channel(None).await?;
        consumer_ch.register_callback(amqprs::callbacks::DefaultChannelCallback).await?;
        consumer_ch.exchange_declare(ExchangeDeclareArguments::new(&exchange, "topic").durable(true).finish()).await?;
        consumer_ch.queue_declare(QueueDeclareArguments::durable_client_named(&queue)).await?;
        consumer_ch.queue_bind(QueueBindArguments::new(&queue, &exchange, "bench.#")).await?;
        consumer_ch.basic_qos(BasicQosArguments::new(0, PREFETCH, false)).await?;
        let (_tag, mut rx) =
            consumer_ch.basic_consume_rx(BasicConsumeArguments::new(&queue, "bench").manual_ack(true).finish()).await?;
        let received = Arc::new(AtomicUsize::new(0));
        let h = Arc::new(Mutex::new(hist()));
        let (r, hh, ch2) = (received.clone(), h.clone(), consumer_ch.clone());
        let consumer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let (Some(deliver), Some(body)) = (msg.deliver, msg.content) else { continue };
                let _ = hh.lock().unwrap().record((now_ns().saturating_sub(raw_ns(&body)) / 1000).max(1));
                let _ = ch2.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)).await;
                if r.fetch_add(1, Ordering::Relaxed) + 1 >= n {
                    break;
                }
            }
        });

        let pub_ch = conn.open_channel(None).await?;
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        pub_ch.register_callback(Confirms { permits: permits.clone(), last: 0 }).await?;
        pub_ch.confirm_select(ConfirmSelectArguments::new(false)).await?;
        let props =
            BasicProperties::default().with_persistence(true).with_content_type("application/octet-stream").finish();
        let start = Instant::now();
        for i in 0..n {
            pace(start, rate, i).await;
            permits.acquire().await?.forget();
            pub_ch
                .basic_publish(props.clone(), raw_body(now_ns()), BasicPublishArguments::new(&exchange, "bench.event"))
                .await?;
        }
        // All confirmed once every permit is back.
        let _all = permits.acquire_many(IN_FLIGHT as u32).await?;
        let _ = tokio::time::timeout(Duration::from_secs(120), consumer).await;
        let elapsed = start.elapsed();
        let _ = consumer_ch.queue_delete(QueueDeleteArguments::new(&queue)).await;
        let _ = consumer_ch.exchange_delete(ExchangeDeleteArguments::new(&exchange)).await;
        let _ = conn.close().await;
        let hist = h.lock().unwrap().clone();
        Ok(Outcome { n: received.load(Ordering::Relaxed), elapsed, hist })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 4, "usage: bench <ours|ours-retry|amqprs> <rate, 0 = saturation> <messages>");
    let (mode, rate, n): (&str, u64, usize) = (&args[1], args[2].parse()?, args[3].parse()?);
    let url = HubConfig::from_env()?.urls[0].clone();
    let out = match mode {
        "ours" => ours(&url, rate, n, 0).await?,
        "ours-retry" => ours(&url, rate, n, 100).await?,
        "amqprs" => raw::run(&url::Url::parse(&url)?, rate, n).await?,
        other => anyhow::bail!("unknown mode {other}"),
    };
    let ms = |q: f64| out.hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "mode": mode, "rate": rate, "messages": out.n,
            "msgs_per_s": (out.n as f64 / out.elapsed.as_secs_f64()).round(),
            "p50_ms": ms(0.50), "p95_ms": ms(0.95), "p99_ms": ms(0.99),
        })
    );
    Ok(())
}
