//! Recreating a service queue whose arguments changed, without losing a message.
//!
//! RabbitMQ fixes a queue's arguments when it is created: a broker that kept
//! `admin.events.queue` from before [`topology::SINGLE_ACTIVE_CONSUMER`] refuses the new
//! declaration (`PRECONDITION_FAILED - inequivalent arg`), and no policy can add that argument.
//! The way RabbitMQ's documentation gives is to delete the queue and declare it again; between
//! the two, events must still land somewhere, and the messages the old queue holds must move.
//! [`Hub::upgrade_queue`] does it through a holding queue `<queue>.upgrade`:
//!
//! 1. the holding queue is declared and bound with the subscription's keys: from here on every
//!    new event reaches it;
//! 2. the old queue is unbound, its retry queues are left to drain back into it (each holds a
//!    message for at most its delay), and its messages move to the holding queue — each one
//!    acked in the old queue only after the broker confirmed its copy;
//! 3. the old queue is deleted (only if empty and unused) and declared again as the code
//!    declares it, with its retry queues and bindings;
//! 4. the holding queue is unbound, its messages move into the new queue, and it is deleted.
//!
//! Between 3 and 4 an event reaches both queues: its copy in the new queue may come before
//! older events still in the holding queue, and the consumer sees it twice — the inbox of every
//! consumer (`crate::idempotency`) applies it once. A run stopped half-way leaves the holding
//! queue behind; the next run finds it and finishes. The queue's consumers must be stopped
//! (`mfe up` runs this before it starts the services): deleting a queue drops what a consumer
//! holds unacked, so a queue with a consumer is refused ([`HubError::QueueInUse`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::json;

use crate::config::HubConfig;
use crate::error::{is_precondition_failed, HubError};
use crate::hub::Hub;
use crate::topology::{self, Plan, QueueDecl, Subscription};

/// Messages taken from a queue before their copies' confirms are awaited together.
const MOVE_BATCH: usize = 256;

/// What [`Hub::upgrade_queue`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueUpgrade {
    /// The queue already had the arguments of the code (an unfinished earlier upgrade, if one
    /// was left, was finished: `moved` messages came back from its holding queue).
    Current { moved: u64 },
    /// There was no queue: it was declared.
    Created { moved: u64 },
    /// The queue had other arguments: it was recreated, `moved` messages kept.
    Recreated { moved: u64 },
}

impl QueueUpgrade {
    /// Messages that went through the holding queue.
    pub fn moved(&self) -> u64 {
        match *self {
            QueueUpgrade::Current { moved } | QueueUpgrade::Created { moved } | QueueUpgrade::Recreated { moved } => {
                moved
            }
        }
    }
}

/// The holding queue of an upgrade of `queue`.
pub fn holding_queue_name(queue: &str) -> String {
    format!("{queue}.upgrade")
}

/// The holding queue of an upgrade of `sub`'s queue (step 1): durable, of the broker's queue
/// type, bound with the subscription's keys.
pub fn holding_plan(cfg: &HubConfig, sub: &Subscription) -> Plan {
    let hold = holding_queue_name(&sub.queue);
    let plan = topology::subscription_plan(cfg, sub);
    Plan {
        exchanges: Vec::new(),
        queues: vec![QueueDecl {
            name: hold.clone(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: BTreeMap::from([("x-queue-type".to_string(), json!(cfg.queue_type.as_str()))]),
        }],
        bindings: plan.bindings.into_iter().map(|b| topology::BindingDecl { destination: hold.clone(), ..b }).collect(),
    }
}

impl Hub {
    /// Makes `sub`'s queue carry the arguments the code declares, recreating it (messages kept)
    /// when the broker holds it with others; see the module docs.
    pub async fn upgrade_queue(&self, sub: &Subscription) -> Result<QueueUpgrade, HubError> {
        let plan = topology::subscription_plan(self.config(), sub);
        let hold = holding_queue_name(&sub.queue);
        let unfinished = self.queue_counts(&hold).await?.is_some();
        let outcome = match self.queue_counts(&sub.queue).await? {
            None => {
                self.declare(&plan).await?;
                QueueUpgrade::Created { moved: 0 }
            }
            Some(_) => {
                let ch = self.channel().await?;
                match topology::apply(&ch, &plan).await {
                    Ok(()) => {
                        let _ = ch.close(200, "current").await;
                        QueueUpgrade::Current { moved: 0 }
                    }
                    Err(e) if is_precondition_failed(&e) => {
                        let moved = self.recreate(sub, &plan, &hold).await?;
                        return Ok(QueueUpgrade::Recreated { moved });
                    }
                    Err(e) => {
                        return Err(HubError::Amqp { what: format!("declaring queue {:?}", sub.queue), source: e });
                    }
                }
            }
        };
        if !unfinished {
            return Ok(outcome);
        }
        let moved = self.drain_holding_queue(sub, &hold).await?;
        Ok(match outcome {
            QueueUpgrade::Created { .. } => QueueUpgrade::Created { moved },
            _ => QueueUpgrade::Current { moved },
        })
    }

    /// Steps 1–4 of the module docs; returns the messages kept.
    async fn recreate(&self, sub: &Subscription, plan: &Plan, hold: &str) -> Result<u64, HubError> {
        let queue = &sub.queue;
        let counts = self.queue_counts(queue).await?.unwrap_or_default();
        if counts.consumers > 0 {
            return Err(HubError::QueueInUse { queue: queue.clone(), consumers: counts.consumers });
        }
        // 1. Every new event reaches the holding queue.
        self.declare(&holding_plan(self.config(), sub)).await?;
        // 2. The old queue takes no more; its retry queues empty into it; it empties into the
        // holding queue.
        self.unbind(queue, plan).await?;
        for retry in &plan.queues[1..] {
            self.wait_empty(&retry.name, queue).await?;
        }
        self.move_messages(queue, hold).await?;
        // 3. Deleted and declared again as the code declares it.
        let ch = self.channel().await?;
        ch.queue_delete(queue, QueueDeleteOptions { if_unused: true, if_empty: true, nowait: false }).await.map_err(
            |e| HubError::UpgradeStopped {
                queue: queue.clone(),
                reason: format!("deleting it failed ({e}): a consumer attached or a message arrived meanwhile"),
            },
        )?;
        let _ = ch.close(200, "deleted").await;
        self.declare(plan).await?;
        // 4. The holding queue's messages (those moved and those published meanwhile) come back.
        self.drain_holding_queue(sub, hold).await
    }

    /// Unbinds the holding queue, moves its messages into `sub`'s queue and deletes it.
    async fn drain_holding_queue(&self, sub: &Subscription, hold: &str) -> Result<u64, HubError> {
        let plan = topology::subscription_plan(self.config(), sub);
        self.unbind(hold, &plan).await?;
        let moved = self.move_messages(hold, &sub.queue).await?;
        let ch = self.channel().await?;
        ch.queue_delete(hold, QueueDeleteOptions { if_unused: false, if_empty: true, nowait: false }).await.map_err(
            |e| HubError::UpgradeStopped {
                queue: sub.queue.clone(),
                reason: format!("deleting the holding queue {hold:?} failed ({e}); run the upgrade again"),
            },
        )?;
        let _ = ch.close(200, "deleted").await;
        Ok(moved)
    }

    /// Removes `queue`'s bindings of the subscription's keys (the plan's bindings).
    async fn unbind(&self, queue: &str, plan: &Plan) -> Result<(), HubError> {
        let ch = self.channel().await?;
        for b in &plan.bindings {
            ch.queue_unbind(queue, &b.source, &b.routing_key, FieldTable::default())
                .await
                .map_err(HubError::amqp(format!("unbinding {queue:?} from {:?} ({})", b.source, b.routing_key)))?;
        }
        let _ = ch.close(200, "unbound").await;
        Ok(())
    }

    /// Waits until `retry` (a retry queue of `queue`) holds nothing: each message it holds
    /// returns to `queue` within the queue's delay.
    async fn wait_empty(&self, retry: &str, queue: &str) -> Result<(), HubError> {
        let longest = self.config().retry_delays.iter().max().copied().unwrap_or_default();
        let deadline = Instant::now() + longest + Duration::from_secs(10);
        loop {
            match self.queue_counts(retry).await? {
                None => return Ok(()),
                Some(c) if c.messages == 0 => return Ok(()),
                Some(c) if Instant::now() >= deadline => {
                    return Err(HubError::UpgradeStopped {
                        queue: queue.into(),
                        reason: format!("its retry queue {retry:?} still holds {} message(s)", c.messages),
                    })
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Moves every message of `from` to `to` (through the default exchange), each acked in
    /// `from` only once the broker confirmed its copy; returns how many.
    async fn move_messages(&self, from: &str, to: &str) -> Result<u64, HubError> {
        let ch = self.channel().await?;
        let mut moved = 0u64;
        loop {
            let mut batch = Vec::with_capacity(MOVE_BATCH);
            while batch.len() < MOVE_BATCH {
                let got = ch
                    .basic_get(from, BasicGetOptions { no_ack: false })
                    .await
                    .map_err(HubError::amqp(format!("reading {from:?}")))?;
                match got {
                    Some(m) => batch.push(m.delivery),
                    None => break,
                }
            }
            let Some(last) = batch.last().map(|d| d.delivery_tag) else { break };
            let sends = batch.iter().map(|d| self.publish_raw("", to, &d.data, d.properties.clone()));
            let failed = futures::future::join_all(sends).await.into_iter().find_map(Result::err);
            if let Some(e) = failed {
                // Nothing of this batch is acked: all of it stays in `from` (a copy that did
                // arrive is a duplicate the inbox absorbs).
                let _ = ch.basic_nack(last, BasicNackOptions { multiple: true, requeue: true }).await;
                return Err(HubError::UpgradeStopped {
                    queue: from.into(),
                    reason: format!("moving its messages to {to:?} failed: {e}"),
                });
            }
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await
                .map_err(HubError::amqp(format!("acknowledging the moved messages of {from:?}")))?;
            moved += batch.len() as u64;
        }
        let _ = ch.close(200, "moved").await;
        Ok(moved)
    }
}
