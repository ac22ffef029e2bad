//! Consuming: the consumer loop that resumes across reconnects, and the handling of one
//! delivery (ack on success; retry queue or dead-letter queue on failure).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::acks::{send_ack, Acks};
use super::publish::{await_confirm, send};
use super::{
    Hub, Link, H_ATTEMPT, H_ATTEMPTS, H_DEAD_LETTERED_AT, H_DEATH_REASON, H_FAILED_CONSUMER, H_FAILED_QUEUE,
    H_FIRST_FAILURE, H_ORIGINAL_ROUTING_KEY,
};
use crate::envelope::Envelope;
use crate::error::{is_precondition_failed, HandlerError, HubError};
use crate::handler::Handler;
use crate::topology::{self, retry_queue_name, Subscription};

/// Runs a subscription across reconnects until cancelled.
pub(super) async fn consume_loop<H: Handler>(
    hub: Hub,
    sub: Subscription,
    handler: Arc<H>,
    cancel: CancellationToken,
    ready: oneshot::Sender<Result<(), HubError>>,
) {
    let mut ready = Some(ready);
    crate::crash_point::install();
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
    let open = || async {
        let ch = link.conn.create_channel().await.map_err(HubError::amqp("opening a consumer channel"))?;
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default()).await.map_err(HubError::amqp("setting prefetch"))?;
        Ok::<_, HubError>(ch)
    };
    let declaring = || HubError::amqp(format!("declaring queue {:?} and its bindings", sub.queue));
    let plan = topology::subscription_plan(cfg, sub);
    let mut ch = open().await?;
    if let Err(e) = topology::apply(&ch, &plan).await {
        if !is_precondition_failed(&e) || sub.exclusive {
            return Err(declaring()(e));
        }
        // The broker kept the queue from a version that declared other arguments (before the
        // single active consumer): read it as it is, so the service keeps consuming, and say
        // how to bring it up to date. The refusal closed the channel.
        warn!(
            consumer = %sub.consumer, queue = %sub.queue,
            "queue exists with other arguments than this version declares ({e}): consuming it as it is, without a single active consumer — recreate it with `mfe events upgrade-queues` while its consumers are stopped (`mfe up` does it before starting the services)"
        );
        ch = open().await?;
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        ch.queue_declare(&sub.queue, passive, FieldTable::default()).await.map_err(declaring())?;
        let rest = topology::Plan { queues: plan.queues[1..].to_vec(), ..plan.clone() };
        topology::apply(&ch, &rest).await.map_err(declaring())?;
    }
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
    let mut handled = None;
    let outcome = match serde_json::from_slice::<Envelope>(&d.data) {
        Err(e) => Err(HandlerError::fatal(format!("undecodable envelope: {e}"))),
        Ok(mut env) => {
            handled = Some(env.id);
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
        Ok(()) => {
            if let Some(id) = handled {
                crate::crash_point::after_commit(&sub.queue, id);
            }
            return acks.handled(d.delivery_tag).await;
        }
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
