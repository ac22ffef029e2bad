//! The broker side of a service that writes its events through the outbox (payments, admin):
//! connected in the background, so the service starts and serves while RabbitMQ is down and its
//! events wait in the outbox; once connected, the [`OutboxRelay`] of the service runs in the same
//! process (and, optionally, one consumer).
//!
//! A service using a [`ServiceLink`] writes its events with [`enqueue`] and calls
//! [`ServiceLink::notify`] after the commit: the relay is woken in-process, without
//! `NOTIFY`. PostgreSQL serialises the commits of transactions that sent a `NOTIFY` (a global
//! lock is held until the commit record is flushed), so with `NOTIFY` on every write each commit
//! waits for its own fsync in turn and no two commits share one; without it, concurrent commits
//! are flushed together (group commit). Relays of other processes still find the rows on their
//! next poll.

use std::{
    future::Future,
    sync::{Arc, LazyLock, OnceLock},
    time::Duration,
};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    envelope::Envelope,
    handler::Handler,
    hub::{Hub, SubscriptionHandle},
    outbox::{OutboxRelay, RelayHandle},
    topology::Subscription,
    HubConfig,
};

/// The `INSERT` of one outbox row with its parameters numbered from `first`: the event id, its
/// type and [`stored_envelope`]. For services that fold it into a larger statement (a
/// data-modifying `WITH`); [`enqueue`] runs it alone. `clock_timestamp()` keeps the events of
/// one transaction in order.
pub fn outbox_insert(first: usize) -> String {
    let (id, key, envelope) = (first, first + 1, first + 2);
    format!(
        "INSERT INTO event_outbox (id, routing_key, envelope, created_at) \
         VALUES (${id}, ${key}, ${envelope}, clock_timestamp())"
    )
}

/// The envelope as `event_outbox.envelope` keeps it: the published body plus the trace context
/// the relay sends as a header.
pub fn stored_envelope(env: &Envelope) -> Result<serde_json::Value, sqlx::Error> {
    let mut envelope = serde_json::to_value(env).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    if let (Some(tp), Some(obj)) = (&env.traceparent, envelope.as_object_mut()) {
        obj.insert(crate::trace::TRACEPARENT.into(), serde_json::Value::String(tp.clone()));
    }
    Ok(envelope)
}

/// Writes `env` to `event_outbox` inside the caller's transaction, like [`crate::outbox::enqueue`]
/// but without `NOTIFY`: the writer wakes its own relay with [`ServiceLink::notify`] after the
/// commit (see the module docs for why).
pub async fn enqueue(conn: &mut PgConnection, env: &Envelope) -> Result<(), sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| outbox_insert(1));
    sqlx::query(&SQL).bind(env.id).bind(&env.event_type).bind(stored_envelope(env)?).execute(conn).await?;
    Ok(())
}

/// How long [`ServiceLink::notify`] lets commits gather before it wakes the relay: under load the
/// relay then publishes one batch per pause instead of one round (a transaction, its commit
/// flush and a confirm wait) per write, at the price of this much event latency.
pub const RELAY_WAKE_DELAY: Duration = Duration::from_millis(20);

/// The hub, the relay and the optional consumer of one service; cheap to clone.
#[derive(Clone)]
pub struct ServiceLink {
    hub: Arc<OnceLock<Hub>>,
    relay: Arc<OnceLock<RelayHandle>>,
    consumer: Arc<OnceLock<SubscriptionHandle>>,
    consuming: watch::Receiver<bool>,
    /// Commits to relay; a permit, so a burst of writes is one wake-up.
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl ServiceLink {
    /// Connects to the broker in the background (retrying with backoff until it answers), then
    /// starts the outbox relay on `pool`. `service` names the service in log lines.
    pub fn connect_in_background(cfg: HubConfig, pool: PgPool, service: &'static str) -> Self {
        Self::spawn(cfg, pool, service, |_hub, _link| async {})
    }

    /// Like [`ServiceLink::connect_in_background`], and once the relay runs, consumes
    /// `subscription` with `handler` (retrying until the subscription succeeds).
    pub fn connect_consuming_in_background<H: Handler + Clone>(
        cfg: HubConfig,
        pool: PgPool,
        service: &'static str,
        subscription: Subscription,
        handler: H,
    ) -> Self {
        Self::spawn(cfg, pool, service, move |hub, link: ServiceLink| async move {
            let mut pause = Duration::from_millis(200);
            loop {
                match hub.subscribe(subscription.clone(), handler.clone()).await {
                    Ok(handle) => {
                        tracing::info!(service, queue = %handle.queue(), "event consumer started");
                        let _ = link.consumer.set(handle);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(service, error = %e, queue = %subscription.queue, "cannot start the event consumer; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }

    fn spawn<F, Fut>(cfg: HubConfig, pool: PgPool, service: &'static str, then: F) -> Self
    where
        F: FnOnce(Hub, ServiceLink) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (consuming_tx, consuming) = watch::channel(false);
        let link = Self {
            hub: Arc::default(),
            relay: Arc::default(),
            consumer: Arc::default(),
            consuming,
            wake: Arc::default(),
            stop: CancellationToken::new(),
        };
        let this = link.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            let mut attempts = 0u32;
            let hub = loop {
                match Hub::connect(cfg.clone()).await {
                    Ok(hub) => break hub,
                    Err(e) => {
                        attempts += 1;
                        // Loud on the 1st, 2nd, 4th, 8th... failure: visible without flooding the log.
                        if attempts.is_power_of_two() {
                            tracing::warn!(service, error = %e, attempts, "event hub unreachable; requests are served and their events wait in the outbox");
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            };
            tracing::info!(service, attempts, "event hub connected; starting the outbox relay");
            let relay = OutboxRelay::spawn(pool, hub.clone());
            let _ = this.relay.set(relay.clone());
            tokio::spawn(wake_relay(relay, this.wake.clone(), this.stop.clone()));
            let _ = this.hub.set(hub.clone());
            then(hub, this.clone()).await;
            let _ = consuming_tx.send(this.consumer.get().is_some());
        });
        link
    }

    /// Whether the hub is connected now.
    pub fn is_connected(&self) -> bool {
        self.hub.get().is_some_and(Hub::is_connected)
    }

    /// Waits up to `max` until the consumer reads its queue; false on timeout (and always false
    /// for a link without a consumer).
    pub async fn wait_until_consuming(&self, max: Duration) -> bool {
        let mut rx = self.consuming.clone();
        tokio::time::timeout(max, rx.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Wakes the relay after a commit that enqueued events, within [`RELAY_WAKE_DELAY`] (it also
    /// polls).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Flushes the outbox (bounded) and closes the connection (which stops the consumer).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(relay) = self.relay.get() {
            relay.shutdown().await;
        }
        if let Some(hub) = self.hub.get() {
            hub.close().await;
        }
    }
}

/// Passes the link's wake-ups on to `relay`, at most one per [`RELAY_WAKE_DELAY`].
async fn wake_relay(relay: RelayHandle, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
        }
        tokio::time::sleep(RELAY_WAKE_DELAY).await;
        relay.notify();
    }
}
