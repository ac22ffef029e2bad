//! [`Hub`]: one connection manager per process. It keeps a connection to the first reachable
//! broker of [`HubConfig::urls`], reconnects with backoff when it drops, re-declares the
//! topology and resumes every consumer on the new connection. Publishing waits for the
//! broker's confirm; consuming acks after the handler succeeded and routes failures through
//! the per-queue retry queues and finally to the dead-letter queue.

use crate::config::HubConfig;
use crate::envelope::Envelope;
use crate::error::{HandlerError, HubError};
use crate::handler::Handler;
use crate::topology::{self, retry_queue_name, Subscription};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::protocol::basic::AMQPProperties;
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, DeliveryTag, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Header: how many times the message has been retried (absent on the first delivery).
pub const H_ATTEMPT: &str = "x-attempt";
/// Headers on a dead-lettered message: why, which consumer, after how many handler runs.
pub const H_DEATH_REASON: &str = "x-death-reason";
pub const H_FAILED_CONSUMER: &str = "x-failed-consumer";
pub const H_ATTEMPTS: &str = "x-attempts";
/// Header: the routing key the event was first published with (retries travel by queue name).
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Header on a dead-lettered message: the queue of the failing consumer, where a replay goes.
pub const H_FAILED_QUEUE: &str = "x-failed-queue";
/// Header: when the first handler run of this delivery chain failed (RFC 3339, set once).
pub const H_FIRST_FAILURE: &str = "x-first-failure";
/// Header on a dead-lettered message: when it was moved to the dead-letter queue (RFC 3339).
pub const H_DEAD_LETTERED_AT: &str = "x-dead-lettered-at";
/// Header: how many times `mfe events dlq replay` sent this event back to its consumer.
pub const H_REPLAYS: &str = "x-replays";

/// The current connection, a number that changes on every reconnect, and which of
/// [`HubConfig::urls`] it is connected to.
#[derive(Clone)]
struct Link {
    conn: Arc<Connection>,
    generation: u64,
    url: usize,
}

struct Inner {
    cfg: HubConfig,
    /// `Some` while a connection is up; consumers and publishers wait on it.
    link: watch::Sender<Option<Link>>,
    /// The confirm-mode publishing channel and the generation it was opened on.
    publisher: Mutex<Option<(u64, Channel)>>,
    /// Cancelled by [`Hub::close`]; every consumer's token is a child of it.
    shutdown: CancellationToken,
}

impl Inner {
    /// After a nack, the next publish opens a new channel. A channel whose publish to a quorum
    /// queue was nacked while the queue's leader moved (RabbitMQ 3.10, node killed) keeps
    /// nacking every later publish to that queue, for as long as it lives — measured: 60 s of
    /// nacks on the old channel, the first publish on a new one confirmed at once.
    fn drop_channel_if_nacked(&self, ch: &Channel, results: &[Result<(), HubError>]) {
        if !results.iter().any(|r| matches!(r, Err(HubError::Nacked { .. }))) {
            return;
        }
        if let Ok(mut slot) = self.publisher.try_lock() {
            if slot.as_ref().is_some_and(|(_, c)| c.id() == ch.id()) {
                *slot = None;
                let ch = ch.clone();
                tokio::spawn(async move {
                    let _ = ch.close(200, "replaced after a nack").await;
                });
            }
        }
    }
}

/// The connection manager: cheap to clone, shared by publishers and consumers of a process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// A running consumer; cancelling it closes its channel (unacked messages are redelivered).
pub struct SubscriptionHandle {
    queue: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SubscriptionHandle {
    /// The queue consumed (the generated name for exclusive subscriptions).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming and waits for the consumer to let go of its channel.
    pub async fn cancel(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Hub {
    /// Connects to the first reachable broker of `cfg.urls`, declares the shared topology and
    /// starts the supervisor that reconnects when the connection drops.
    pub async fn connect(cfg: HubConfig) -> Result<Hub, HubError> {
        let first = try_connect(&cfg, 0).await?;
        let (link, _) = watch::channel(None);
        let inner = Arc::new(Inner { cfg, link, publisher: Mutex::new(None), shutdown: CancellationToken::new() });
        let (up_tx, up_rx) = oneshot::channel();
        tokio::spawn(supervise(inner.clone(), first, up_tx));
        match up_rx.await {
            Ok(Ok(())) => Ok(Hub { inner }),
            Ok(Err(e)) => {
                inner.shutdown.cancel();
                Err(e)
            }
            Err(_) => Err(HubError::Closed),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// True while a connection to a broker is up.
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().as_ref().is_some_and(|l| l.conn.status().connected())
    }

    /// The broker URL (password hidden) of the live connection, if one is up: which node of a
    /// cluster this process talks to.
    pub fn connected_url(&self) -> Option<String> {
        let link = self.inner.link.borrow();
        let link = link.as_ref().filter(|l| l.conn.status().connected())?;
        self.inner.cfg.urls.get(link.url).map(|u| redact(u))
    }

    /// Stops every consumer and closes the connection.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        if let Some(link) = self.inner.link.send_replace(None) {
            let _ = link.conn.close(200, "hub closed").await;
        }
    }

    /// Waits up to `max` for a live connection.
    async fn wait_link(&self, max: Duration) -> Result<Link, HubError> {
        let mut rx = self.inner.link.subscribe();
        let started = Instant::now();
        let wait = rx.wait_for(|l| l.as_ref().is_some_and(|l| l.conn.status().connected()));
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => Err(HubError::Closed),
            r = tokio::time::timeout(max, wait) => match r {
                Ok(Ok(l)) => Ok(l.clone().expect("wait_for returned a link")),
                Ok(Err(_)) => Err(HubError::Closed),
                Err(_) => Err(HubError::NotConnected { waited_ms: started.elapsed().as_millis() }),
            },
        }
    }

    /// The confirm-mode channel of the current connection, opened on first use.
    async fn publish_channel(&self) -> Result<Channel, HubError> {
        if let Some(ch) = self.current_publish_channel() {
            return Ok(ch);
        }
        let link = self.wait_link(self.inner.cfg.publish_timeout).await?;
        let mut slot = self.inner.publisher.lock().await;
        if let Some((generation, ch)) = slot.as_ref() {
            if *generation == link.generation && ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = link.conn.create_channel().await.map_err(HubError::amqp("opening the publish channel"))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(HubError::amqp("enabling publisher confirms"))?;
        *slot = Some((link.generation, ch.clone()));
        Ok(ch)
    }

    /// The publish channel when it is open on the live connection, without waiting: the path
    /// of every publish but the first after a (re)connect.
    fn current_publish_channel(&self) -> Option<Channel> {
        let link = self.inner.link.borrow();
        let link = link.as_ref().filter(|l| l.conn.status().connected())?;
        let slot = self.inner.publisher.try_lock().ok()?;
        let (generation, ch) = slot.as_ref()?;
        (*generation == link.generation && ch.status().connected()).then(|| ch.clone())
    }

    /// Publishes one event (persistent, JSON) and returns once the broker confirmed it.
    pub async fn publish(&self, env: &Envelope) -> Result<(), HubError> {
        let ch = self.publish_channel().await?;
        let payload = serde_json::to_vec(env).map_err(|source| HubError::Encode { id: env.id, source })?;
        let (exchange, rk) = (self.inner.cfg.exchange.as_str(), env.event_type.as_str());
        let confirm = send(&ch, exchange, rk, &payload, envelope_properties(env)).await?;
        let confirmed = await_confirm(confirm, exchange, rk, self.inner.cfg.publish_timeout).await;
        self.inner.drop_channel_if_nacked(&ch, std::slice::from_ref(&confirmed));
        confirmed
    }

    /// Publishes several events in order with their confirms in flight together, then waits
    /// for all of them; one result per event, in order. Once a send fails (the channel is
    /// gone), the events after it are not sent ([`HubError::NotSent`]), so none of them can
    /// overtake it.
    pub async fn publish_batch(&self, envs: &[Envelope]) -> Vec<Result<(), HubError>> {
        let ch = match self.publish_channel().await {
            Ok(ch) => ch,
            Err(e) => {
                let line = e.to_string();
                return envs.iter().map(|_| Err(repeat_error(&e, &line))).collect();
            }
        };
        let exchange = self.inner.cfg.exchange.clone();
        let mut sends = Vec::with_capacity(envs.len());
        let mut stopped = false;
        for env in envs {
            if stopped {
                let not_sent = HubError::NotSent { routing_key: env.event_type.clone() };
                sends.push((env.event_type.as_str(), None, std::task::Poll::Ready(Err(not_sent))));
                continue;
            }
            let payload = serde_json::to_vec(env);
            let (ch, exchange) = (&ch, exchange.as_str());
            let mut fut = Box::pin(async move {
                match payload {
                    Ok(p) => send(ch, exchange, &env.event_type, &p, envelope_properties(env)).await,
                    Err(source) => Err(HubError::Encode { id: env.id, source }),
                }
            });
            let first = futures::poll!(fut.as_mut());
            stopped = matches!(first, std::task::Poll::Ready(Err(_)));
            sends.push((env.event_type.as_str(), Some(fut), first));
        }
        let timeout = self.inner.cfg.publish_timeout;
        let waits = sends.into_iter().map(|(rk, fut, first)| {
            let exchange = exchange.as_str();
            async move {
                let sent = match first {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => fut.expect("a pending send has its future").await,
                };
                match sent {
                    Ok(confirm) => await_confirm(confirm, exchange, rk, timeout).await,
                    Err(e) => Err(e),
                }
            }
        });
        let results = futures::future::join_all(waits).await;
        self.inner.drop_channel_if_nacked(&ch, &results);
        results
    }

    /// Publishes raw bytes with the given properties (mandatory, confirmed). The retry and
    /// dead-letter paths use it; so do benchmarks of foreign payloads.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), HubError> {
        let ch = self.publish_channel().await?;
        let confirm = send(&ch, exchange, routing_key, payload, properties).await?;
        let confirmed = await_confirm(confirm, exchange, routing_key, self.inner.cfg.publish_timeout).await;
        self.inner.drop_channel_if_nacked(&ch, std::slice::from_ref(&confirmed));
        confirmed
    }

    /// Starts consuming `sub` with `handler`; returns once the queue is declared, bound and
    /// consumed, so events published afterwards reach it. The consumer survives reconnects.
    pub async fn subscribe<H: Handler>(
        &self,
        mut sub: Subscription,
        handler: H,
    ) -> Result<SubscriptionHandle, HubError> {
        if sub.queue.is_empty() {
            sub.queue = format!("{}.{}", sub.consumer, uuid::Uuid::new_v4().simple());
        }
        let cancel = self.inner.shutdown.child_token();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(consume_loop(self.clone(), sub.clone(), Arc::new(handler), cancel.clone(), ready_tx));
        let wait = self.inner.cfg.publish_timeout;
        match tokio::time::timeout(wait, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(SubscriptionHandle { queue: sub.queue, cancel, task }),
            Ok(Ok(Err(e))) => {
                cancel.cancel();
                Err(e)
            }
            Ok(Err(_)) => Err(HubError::Closed),
            Err(_) => {
                cancel.cancel();
                Err(HubError::NotConnected { waited_ms: wait.as_millis() })
            }
        }
    }

    /// A fresh channel on the current connection, for declarations and inspection (tests,
    /// suites, tools). Waits for a connection like a publish does.
    pub(crate) async fn channel(&self) -> Result<Channel, HubError> {
        let link = self.wait_link(self.inner.cfg.publish_timeout).await?;
        link.conn.create_channel().await.map_err(HubError::amqp("opening a channel"))
    }
}

fn repeat_error(e: &HubError, line: &str) -> HubError {
    match e {
        HubError::NotConnected { waited_ms } => HubError::NotConnected { waited_ms: *waited_ms },
        HubError::Closed => HubError::Closed,
        _ => HubError::Connect { urls: "current connection".into(), reason: line.to_string() },
    }
}

/// The AMQP properties of an event: persistent, JSON, id and type for tools that read them.
pub fn envelope_properties(env: &Envelope) -> BasicProperties {
    let mut p = AMQPProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(env.id.to_string()))
        .with_type(ShortString::from(env.event_type.as_str()))
        .with_app_id(ShortString::from(env.source.as_str()))
        .with_timestamp(env.timestamp.timestamp().max(0) as u64);
    if let Some(c) = &env.correlation_id {
        p = p.with_correlation_id(ShortString::from(c.as_str()));
    }
    if let Some(tp) = &env.traceparent {
        let mut headers = FieldTable::default();
        headers.insert(crate::trace::TRACEPARENT.into(), AMQPValue::LongString(LongString::from(tp.as_str())));
        p = p.with_headers(headers);
    }
    p
}

async fn send(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, HubError> {
    ch.basic_publish(
        exchange,
        routing_key,
        BasicPublishOptions { mandatory: true, immediate: false },
        payload,
        properties,
    )
    .await
    .map_err(HubError::amqp(format!("publishing {routing_key} to exchange {exchange:?}")))
}

async fn await_confirm(
    confirm: PublisherConfirm,
    exchange: &str,
    routing_key: &str,
    timeout: Duration,
) -> Result<(), HubError> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => {
            Err(HubError::ConfirmTimeout { routing_key: routing_key.into(), waited_ms: started.elapsed().as_millis() })
        }
        Ok(Err(source)) => Err(HubError::Amqp {
            what: format!("publish of {routing_key} to exchange {exchange:?} failed before its confirm"),
            source,
        }),
        Ok(Ok(Confirmation::Ack(Some(_)))) => {
            Err(HubError::Unroutable { exchange: exchange.into(), routing_key: routing_key.into() })
        }
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Nack(_))) => {
            Err(HubError::Nacked { exchange: exchange.into(), routing_key: routing_key.into() })
        }
    }
}

/// Tries every URL once, in order from `start` (wrapping around); returns the connection and
/// the index of its URL.
///
/// A reconnect starts with the URL after the one that just failed: the node that dropped the
/// connection is the likeliest to still be down, and one that stopped answering (paused, or cut
/// off by a partition) would cost the whole connect timeout before the next is tried.
async fn try_connect(cfg: &HubConfig, start: usize) -> Result<(Connection, usize), HubError> {
    let mut reasons = Vec::new();
    let n = cfg.urls.len();
    for i in (0..n).map(|k| (start + k) % n) {
        let url = &cfg.urls[i];
        let props = ConnectionProperties::default().with_connection_name(cfg.connection_name.as_str().into());
        match tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, props)).await {
            Ok(Ok(conn)) => return Ok((conn, i)),
            Ok(Err(e)) => reasons.push(format!("{}: {e}", redact(url))),
            Err(_) => reasons.push(format!("{}: timed out after 5 s", redact(url))),
        }
    }
    Err(HubError::Connect {
        urls: cfg.urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
        reason: reasons.join("; "),
    })
}

// `amqp://user:***@host:port/vhost` for messages (the one redaction of mfe-core).
use mfe_core::redact_url_password as redact;

/// Owns the connection: publishes it to waiters, watches it, and replaces it when it dies.
async fn supervise(inner: Arc<Inner>, first: (Connection, usize), up: oneshot::Sender<Result<(), HubError>>) {
    let mut up = Some(up);
    let (mut conn, mut url) = first;
    let mut generation = 0u64;
    loop {
        generation += 1;
        let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel();
        conn.on_error(move |e| {
            let _ = err_tx.send(e);
        });
        let conn_arc = Arc::new(conn);
        match declare_base(&conn_arc, &inner.cfg).await {
            Ok(()) => {
                inner.link.send_replace(Some(Link { conn: conn_arc.clone(), generation, url }));
                if let Some(tx) = up.take() {
                    let _ = tx.send(Ok(()));
                }
                if generation > 1 {
                    info!(generation, url = %redact(&inner.cfg.urls[url]), "rabbitmq: reconnected, topology re-declared");
                }
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => {
                            inner.link.send_replace(None);
                            let _ = conn_arc.close(200, "hub closed").await;
                            return;
                        }
                        e = err_rx.recv() => {
                            warn!("rabbitmq: connection lost: {}", e.map(|e| e.to_string()).unwrap_or_default());
                            break;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            if !conn_arc.status().connected() {
                                warn!("rabbitmq: connection no longer open");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(tx) = up.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                warn!("rabbitmq: declaring the topology after reconnect failed: {e}");
            }
        }
        inner.link.send_replace(None);
        let _ = conn_arc.close(320, "reconnecting").await;
        let mut delay = inner.cfg.reconnect_min;
        (conn, url) = loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match try_connect(&inner.cfg, url + 1).await {
                Ok(c) => break c,
                Err(e) => {
                    debug!("rabbitmq: reconnect failed, retrying in {:?}: {e}", delay);
                    delay = (delay * 2).min(inner.cfg.reconnect_max);
                }
            }
        };
    }
}

async fn declare_base(conn: &Connection, cfg: &HubConfig) -> Result<(), HubError> {
    let ch = conn.create_channel().await.map_err(HubError::amqp("opening a channel to declare the topology"))?;
    topology::declare(&ch, cfg).await.map_err(HubError::amqp(format!(
        "declaring exchanges {:?}, {:?} and queue {:?}",
        cfg.exchange, cfg.dlx, cfg.dlq
    )))?;
    let _ = ch.close(200, "declared").await;
    Ok(())
}

/// Runs a subscription across reconnects until cancelled.
async fn consume_loop<H: Handler>(
    hub: Hub,
    sub: Subscription,
    handler: Arc<H>,
    cancel: CancellationToken,
    ready: oneshot::Sender<Result<(), HubError>>,
) {
    let mut ready = Some(ready);
    loop {
        let link = tokio::select! {
            _ = cancel.cancelled() => return,
            l = hub.wait_link(Duration::from_secs(3600)) => match l {
                Ok(l) => l,
                Err(HubError::Closed) => return,
                Err(_) => continue,
            },
        };
        match run_consumer(&hub, &link, &sub, handler.as_ref(), &cancel, &mut ready).await {
            Ok(()) => return,
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                if cancel.is_cancelled() {
                    return;
                }
                warn!(consumer = %sub.consumer, queue = %sub.queue, "consumer interrupted, resuming: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn run_consumer<H: Handler>(
    hub: &Hub,
    link: &Link,
    sub: &Subscription,
    handler: &H,
    cancel: &CancellationToken,
    ready: &mut Option<oneshot::Sender<Result<(), HubError>>>,
) -> Result<(), HubError> {
    let cfg = &hub.inner.cfg;
    let ch = link.conn.create_channel().await.map_err(HubError::amqp("opening a consumer channel"))?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default()).await.map_err(HubError::amqp("setting prefetch"))?;
    topology::apply(&ch, &topology::subscription_plan(cfg, sub))
        .await
        .map_err(HubError::amqp(format!("declaring queue {:?} and its bindings", sub.queue)))?;
    let tag = format!("{}.{}", sub.consumer, uuid::Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(&sub.queue, &tag, BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(HubError::amqp(format!("consuming queue {:?}", sub.queue)))?;
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    let mut acks = Acks::new(ch.clone(), cfg.prefetch);
    loop {
        // Take the next delivery if one is already waiting; otherwise settle the acks held so
        // far before waiting, so an idle consumer never sits on handled messages.
        let next = match consumer.next().now_or_never() {
            Some(d) if !cancel.is_cancelled() => d,
            _ => {
                acks.flush().await?;
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let _ = ch.close(200, "consumer cancelled").await;
                        return Ok(());
                    }
                    d = consumer.next() => d,
                }
            }
        };
        let delivery = match next {
            None => return Err(HubError::NotConnected { waited_ms: 0 }),
            Some(Err(e)) => return Err(HubError::Amqp { what: format!("consuming queue {:?}", sub.queue), source: e }),
            Some(Ok(d)) => d,
        };
        tokio::select! {
            _ = cancel.cancelled() => {
                // A consumer stopped mid-message: the unacked delivery goes back to the queue,
                // the ones handled before it are acked.
                let _ = acks.flush_now();
                let _ = ch.close(200, "consumer cancelled").await;
                return Ok(());
            }
            r = process(hub, sub, handler, delivery, &mut acks) => r?,
        }
    }
}

/// The acks of handled deliveries, coalesced: one `basic.ack` with `multiple` set for the
/// newest of up to a quarter of the prefetch window, sent when the batch is full or no further
/// delivery is waiting. A delivery is still acked only after its handler succeeded; a crash
/// before the flush redelivers at most one batch, which idempotent consumers absorb.
///
/// While a failed delivery is being moved to a retry queue or the DLQ its original stays
/// unacked, so no `multiple` ack may cover it: a flush waits until every move has settled its
/// original (acked once the broker confirmed the copy, or handed back).
struct Acks {
    ch: Channel,
    newest: Option<DeliveryTag>,
    held: u16,
    limit: u16,
    moves: Arc<Moves>,
}

/// Moves of failed deliveries still in flight on one consumer channel.
#[derive(Default)]
struct Moves {
    count: AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Moves {
    fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Called once the move's original is acked or handed back (the frame already queued).
    fn finish(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    async fn all_settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Acks {
    fn new(ch: Channel, prefetch: u16) -> Self {
        Acks { ch, newest: None, held: 0, limit: (prefetch / 4).max(1), moves: Arc::default() }
    }

    /// The handler of this delivery succeeded.
    async fn handled(&mut self, tag: DeliveryTag) -> Result<(), HubError> {
        self.newest = Some(tag);
        self.held += 1;
        if self.held >= self.limit {
            self.flush().await?;
        }
        Ok(())
    }

    /// Acks every held delivery, once no older delivery is still moving.
    async fn flush(&mut self) -> Result<(), HubError> {
        if self.newest.is_some() {
            self.moves.all_settled().await;
        }
        self.flush_now()
    }

    /// Acks every held delivery if that is safe right away; else leaves them to redelivery.
    fn flush_now(&mut self) -> Result<(), HubError> {
        let multiple = self.held > 1;
        self.held = 0;
        match self.newest.take() {
            Some(tag) if self.moves.count.load(Ordering::Acquire) == 0 => send_ack(&self.ch, tag, multiple),
            _ => Ok(()),
        }
    }
}

/// Queues the ack on the channel without waiting for lapin to report the socket write (a round
/// trip through its I/O thread per message would cap a consumer near 1 000 msg/s). A lost ack
/// only means a redelivery, which idempotent consumers absorb.
///
/// Through the channel, not the delivery's `Acker`: the channel queues the frame during the
/// first poll, in call order, while an `Acker` hands it to a task of lapin's, so two acks could
/// overtake each other, and a `multiple` ack overtaken by an older single one fails the channel.
/// The rest of the call (lapin's report of the write) finishes in a task of its own: a dropped
/// call would make lapin's I/O thread log a warning for every ack.
fn send_ack(ch: &Channel, tag: DeliveryTag, multiple: bool) -> Result<(), HubError> {
    let ch = ch.clone();
    let mut call = Box::pin(async move { ch.basic_ack(tag, BasicAckOptions { multiple }).await });
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    match call.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(e)) => Err(HubError::Amqp { what: "acknowledging a delivery".into(), source: e }),
        std::task::Poll::Ready(Ok(())) => Ok(()),
        std::task::Poll::Pending => {
            tokio::spawn(async move {
                if let Err(e) = call.await {
                    debug!("an ack was queued but not written (the broker redelivers): {e}");
                }
            });
            Ok(())
        }
    }
}

fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let v = props.headers().as_ref()?.inner().get(name)?.clone();
    let n: i64 = match v {
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn header_string(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_string()),
        _ => None,
    }
}

/// The attempt number of a delivery: 0 for the first delivery, n for the n-th retry.
pub fn attempt_of(delivery: &Delivery) -> u32 {
    header_u32(&delivery.properties, H_ATTEMPT).unwrap_or(0)
}

/// Handles one delivery: ack on success; on failure republish to the retry queue of the
/// next delay or to the DLQ, and ack the original only once the broker confirmed the copy
/// (awaited in the background so the consumer goes on with its next deliveries).
async fn process<H: Handler>(
    hub: &Hub,
    sub: &Subscription,
    handler: &H,
    d: Delivery,
    acks: &mut Acks,
) -> Result<(), HubError> {
    let cfg = &hub.inner.cfg;
    let attempt = attempt_of(&d);
    let outcome = match serde_json::from_slice::<Envelope>(&d.data) {
        Err(e) => Err(HandlerError::fatal(format!("undecodable envelope: {e}"))),
        Ok(mut env) => {
            env.traceparent = header_string(&d.properties, crate::trace::TRACEPARENT);
            let span =
                crate::trace::consumer_span(env.traceparent.as_deref(), &env.event_type, env.correlation_id.as_deref());
            AssertUnwindSafe(tracing::Instrument::instrument(handler.handle(env), span))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(HandlerError::retry("handler panicked")))
        }
    };
    let failure = match outcome {
        Ok(()) => return acks.handled(d.delivery_tag).await,
        Err(e) => e,
    };
    // No `multiple` ack may cover this delivery while it moves (see [`Acks`]).
    let (moves, ch) = (acks.moves.clone(), acks.ch.clone());
    moves.start();
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    if !headers.inner().contains_key(H_ORIGINAL_ROUTING_KEY) {
        headers.insert(H_ORIGINAL_ROUTING_KEY.into(), AMQPValue::LongString(LongString::from(d.routing_key.as_str())));
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if !headers.inner().contains_key(H_FIRST_FAILURE) {
        headers.insert(H_FIRST_FAILURE.into(), AMQPValue::LongString(LongString::from(now.as_str())));
    }
    let retry_delay = if failure.fatal { None } else { cfg.retry_delays.get(attempt as usize) };
    let (exchange, routing_key) = match retry_delay {
        Some(delay) => {
            headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt) + 1));
            headers.insert("x-last-error".into(), AMQPValue::LongString(LongString::from(failure.reason.as_str())));
            debug!(consumer = %sub.consumer, attempt, "handler failed, retrying in {delay:?}: {failure}");
            (String::new(), retry_queue_name(&sub.queue, delay.as_millis() as u64))
        }
        None => {
            headers.insert(H_DEATH_REASON.into(), AMQPValue::LongString(LongString::from(failure.reason.as_str())));
            headers.insert(H_FAILED_CONSUMER.into(), AMQPValue::LongString(LongString::from(sub.consumer.as_str())));
            headers.insert(H_FAILED_QUEUE.into(), AMQPValue::LongString(LongString::from(sub.queue.as_str())));
            headers.insert(H_ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempt) + 1));
            headers.insert(H_DEAD_LETTERED_AT.into(), AMQPValue::LongString(LongString::from(now.as_str())));
            warn!(consumer = %sub.consumer, attempts = attempt + 1, "dead-lettering an event: {failure}");
            (cfg.dlx.clone(), cfg.dlq.clone())
        }
    };
    let props = d.properties.clone().with_headers(headers);
    // The move is sent now, in delivery order, but its confirm is awaited off the consumer's
    // path: the next deliveries are handled meanwhile. The original stays unacked (so it
    // counts against the prefetch, which bounds these moves) until the broker confirmed the
    // copy; if the consumer's channel closes first, the broker redelivers the original, a
    // duplicate at worst, which idempotent consumers absorb.
    let sent = match hub.publish_channel().await {
        Ok(ch) => send(&ch, &exchange, &routing_key, &d.data, props).await,
        Err(e) => Err(e),
    };
    let (consumer, timeout) = (sub.consumer.clone(), cfg.publish_timeout);
    tokio::spawn(async move {
        let moved = match sent {
            Ok(confirm) => await_confirm(confirm, &exchange, &routing_key, timeout).await,
            Err(e) => Err(e),
        };
        let settled = match moved {
            Ok(()) => send_ack(&ch, d.delivery_tag, false),
            Err(e) => {
                // Not moved on: hand it back so it is redelivered (after a pause, to avoid a hot loop).
                warn!(%consumer, "moving a failed event to {routing_key:?} failed, requeueing it: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                ch.basic_nack(d.delivery_tag, BasicNackOptions { requeue: true, multiple: false })
                    .await
                    .map_err(HubError::amqp("requeueing a delivery"))
            }
        };
        if let Err(e) = settled {
            // The channel is gone: the broker redelivers the original to the resumed consumer.
            debug!(%consumer, "settling a failed event after moving it: {e}");
        }
        moves.finish();
    });
    Ok(())
}
