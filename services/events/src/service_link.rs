//! The broker side of every service: connected in the background, so the service starts and
//! serves while RabbitMQ is down and its events wait in the outbox; once connected, the
//! [`OutboxRelay`] of the service runs in the same process (and, optionally, one consumer).
//!
//! A service writes its events with [`crate::outbox::enqueue`] inside its business transaction
//! and calls [`ServiceLink::notify`] after the commit: the relay is woken in-process, within
//! [`RELAY_WAKE_DELAY`] (the outbox module says why there is no `NOTIFY`).

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    handler::Handler,
    hub::{Hub, SubscriptionHandle},
    outbox::{OutboxRelay, RelayHandle},
    topology::Subscription,
    HubConfig,
};

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

    /// Waits up to `max` until the hub is connected; false on timeout.
    pub async fn wait_until_connected(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
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
