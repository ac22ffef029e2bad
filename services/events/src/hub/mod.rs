//! [`Hub`]: one connection manager per process. It keeps a connection to the first reachable
//! broker of [`HubConfig::urls`], reconnects with backoff when it drops, re-declares the
//! topology and resumes every consumer on the new connection. Publishing waits for the
//! broker's confirm; consuming acks after the handler succeeded and routes failures through
//! the per-queue retry queues and finally to the dead-letter queue.

mod acks;
mod connection;
mod consume;
mod publish;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{Channel, Connection};
use tokio::sync::{oneshot, watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::error::HubError;
use crate::handler::Handler;
use crate::topology::Subscription;

pub use consume::attempt_of;
pub use publish::envelope_properties;

use connection::{redact, supervise, try_connect};
use consume::consume_loop;

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
