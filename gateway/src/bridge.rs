//! The event bridge: RabbitMQ → WebSocket rooms. Each gateway replica consumes its own exclusive
//! queue bound to every routing key (`#`), so every replica sees every event and serves its own
//! sockets; routing is [`crate::routing::route`].
//!
//! The bridge never blocks the proxy: when the broker is unreachable at start it keeps retrying
//! in the background while HTTP traffic flows.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use mfe_events::{Envelope, HandlerError, Hub, HubConfig, Subscription};

use crate::{metrics::GatewayMetrics, routing, ws::rooms::Rooms, ws::rooms::CLOSE_REVOKED};

/// Delivers one broker event to the sockets it is routed to.
#[derive(Clone)]
pub struct Bridge {
    pub rooms: Rooms,
    pub metrics: GatewayMetrics,
}

impl Bridge {
    /// Routes and fans out `env`; returns how many sockets got the message.
    pub fn deliver(&self, env: &Envelope) -> usize {
        self.metrics.event_bridged(&env.event_type);
        let Some(routed) = routing::route(&env.event_type, &env.data) else { return 0 };
        let message: Utf8Bytes = routing::render(&routed.message_type, env).into();
        let delivered = self.rooms.send(&routed.rooms, &message);
        if let Some(revoke) = &routed.revoke {
            if let Some(device) = &revoke.device_id {
                let closed = self.rooms.close_device(&revoke.user_id, device, CLOSE_REVOKED);
                tracing::info!(closed, "closed the sockets of a revoked device session");
            }
        }
        delivered
    }
}

impl mfe_events::Handler for Bridge {
    async fn handle(&self, env: Envelope) -> Result<(), HandlerError> {
        self.deliver(&env);
        Ok(())
    }
}

/// A connected bridge; dropping it leaves the hub running until [`BridgeHandle::stop`].
pub struct BridgeHandle {
    task: tokio::task::JoinHandle<()>,
    hub: tokio::sync::watch::Receiver<Option<Hub>>,
}

impl BridgeHandle {
    /// Whether the bridge is consuming (a connection and a subscription are up).
    pub fn is_connected(&self) -> bool {
        self.hub.borrow().as_ref().is_some_and(Hub::is_connected)
    }

    /// Waits until the bridge consumes, up to `max`.
    pub async fn wait_connected(&mut self, max: Duration) -> bool {
        tokio::time::timeout(max, self.hub.wait_for(|h| h.is_some())).await.is_ok_and(|r| r.is_ok())
    }

    pub async fn stop(self) {
        self.task.abort();
        let hub = self.hub.borrow().clone();
        if let Some(hub) = hub {
            hub.close().await;
        }
    }
}

/// Connects to the broker (retrying with backoff until it answers) and subscribes the bridge.
pub fn start(cfg: HubConfig, bridge: Bridge) -> BridgeHandle {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(async move {
        let mut pause = Duration::from_millis(500);
        loop {
            match connect_and_subscribe(cfg.clone(), bridge.clone()).await {
                Ok((hub, sub)) => {
                    tracing::info!(queue = sub.queue(), "event bridge consuming");
                    // The subscription survives reconnects inside the hub; keep it alive.
                    let _sub = sub;
                    let _ = tx.send(Some(hub));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "event bridge cannot start; websocket events are paused");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
    BridgeHandle { task, hub: rx }
}

async fn connect_and_subscribe(
    cfg: HubConfig,
    bridge: Bridge,
) -> Result<(Hub, mfe_events::SubscriptionHandle), mfe_events::HubError> {
    let hub = Hub::connect(cfg).await?;
    let sub = Subscription::exclusive("gateway", &["#"]);
    match hub.subscribe(sub, bridge).await {
        Ok(handle) => Ok((hub, handle)),
        Err(e) => {
            hub.close().await;
            Err(e)
        }
    }
}
