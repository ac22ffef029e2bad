//! Acknowledgements of handled deliveries: coalesced acks, the moves of failed deliveries they
//! must not cover, and the ordered send of one ack.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lapin::options::BasicAckOptions;
use lapin::types::DeliveryTag;
use lapin::Channel;
use tracing::debug;

use crate::error::HubError;

/// The acks of handled deliveries, coalesced: one `basic.ack` with `multiple` set for the
/// newest of up to a quarter of the prefetch window, sent when the batch is full or no further
/// delivery is waiting. A delivery is still acked only after its handler succeeded; a crash
/// before the flush redelivers at most one batch, which idempotent consumers absorb.
///
/// While a failed delivery is being moved to a retry queue or the DLQ its original stays
/// unacked, so no `multiple` ack may cover it: a flush waits until every move has settled its
/// original (acked once the broker confirmed the copy, or handed back).
pub(super) struct Acks {
    pub(super) ch: Channel,
    newest: Option<DeliveryTag>,
    held: u16,
    limit: u16,
    pub(super) moves: Arc<Moves>,
}

/// Moves of failed deliveries still in flight on one consumer channel.
#[derive(Default)]
pub(super) struct Moves {
    count: AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Moves {
    pub(super) fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Called once the move's original is acked or handed back (the frame already queued).
    pub(super) fn finish(&self) {
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
    pub(super) fn new(ch: Channel, prefetch: u16) -> Self {
        Acks { ch, newest: None, held: 0, limit: (prefetch / 4).max(1), moves: Arc::default() }
    }

    /// The handler of this delivery succeeded.
    pub(super) async fn handled(&mut self, tag: DeliveryTag) -> Result<(), HubError> {
        self.newest = Some(tag);
        self.held += 1;
        if self.held >= self.limit {
            self.flush().await?;
        }
        Ok(())
    }

    /// Acks every held delivery, once no older delivery is still moving.
    pub(super) async fn flush(&mut self) -> Result<(), HubError> {
        if self.newest.is_some() {
            self.moves.all_settled().await;
        }
        self.flush_now()
    }

    /// Acks every held delivery if that is safe right away; else leaves them to redelivery.
    pub(super) fn flush_now(&mut self) -> Result<(), HubError> {
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
pub(super) fn send_ack(ch: &Channel, tag: DeliveryTag, multiple: bool) -> Result<(), HubError> {
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

#[cfg(test)]
mod tests {
    use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    use super::*;

    /// Against the broker of `RABBITMQ_URL`: a single ack followed at once by a `multiple` ack
    /// that covers it. Sent out of order, the single one would name a tag already acked and the
    /// broker would close the channel (PRECONDITION_FAILED).
    #[tokio::test]
    async fn two_acks_reach_the_broker_in_the_order_they_were_sent() {
        let url = crate::HubConfig::from_env().expect("RABBITMQ_URL and friends parse").urls[0].clone();
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("tests use RABBITMQ_URL={url} (the test stack): {e}"));
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = ch.queue_declare("", opts, FieldTable::default()).await.unwrap();
        let pairs = 50;
        for _ in 0..2 * pairs {
            let publish = ch.basic_publish(
                "",
                queue.name().as_str(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            );
            publish.await.unwrap();
        }
        let mut tags = Vec::new();
        while tags.len() < 2 * pairs {
            let got = ch.basic_get(queue.name().as_str(), BasicGetOptions { no_ack: false }).await.unwrap();
            if let Some(message) = got {
                tags.push(message.delivery.delivery_tag);
            }
        }
        for pair in tags.chunks(2) {
            send_ack(&ch, pair[0], false).unwrap();
            send_ack(&ch, pair[1], true).unwrap();
        }
        // A round trip after the acks: the channel is still open and nothing is left unacked.
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let after = ch.queue_declare(queue.name().as_str(), passive, FieldTable::default()).await;
        assert!(after.is_ok(), "the broker closed the channel: an ack overtook another: {after:?}");
        assert!(ch.status().connected());
        ch.close(200, "done").await.unwrap();
        let _ = conn.close(200, "done").await;
    }
}
