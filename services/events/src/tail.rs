//! A live view of the events passing through the `events` exchange, for developers
//! (`mfe events tail`): [`Hub::tail`] binds a queue of its own to the exchange and yields what
//! arrives.
//!
//! The queue is exclusive and auto-delete (gone with the connection, so a killed `tail` leaves
//! nothing behind) and capped at [`TAIL_MAX_LENGTH`] messages, dropping the oldest: a tail
//! stopped in a pager must not grow the broker's memory. Deliveries are acked as they are read
//! with a bounded prefetch, so a slow terminal slows its own view, never the broker or the
//! services. A tail never touches the consumers' queues: it sees a copy of each event.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Channel;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::error::HubError;
use crate::hub::Hub;
use crate::ops::{headers_of, Message};

/// Messages the tail queue holds for a reader that does not keep up; older ones are dropped.
pub const TAIL_MAX_LENGTH: i64 = 10_000;
/// Deliveries in flight to the reader.
const TAIL_PREFETCH: u16 = 256;

/// One event seen by a [`Tail`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TailedEvent {
    pub routing_key: String,
    /// The envelope, when the body is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Envelope>,
    /// The body as text, when it is not an envelope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The trace the event belongs to: the trace id of its `traceparent` header, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A running tail; [`Tail::close`] (or dropping the hub) removes its queue.
pub struct Tail {
    ch: Channel,
    consumer: lapin::Consumer,
    queue: String,
    patterns: Vec<String>,
}

impl Hub {
    /// Binds a temporary queue to the events exchange with each of `patterns` (topic patterns;
    /// empty means `#`, everything) and returns once it is consuming: every event published
    /// afterwards that matches reaches [`Tail::next`].
    pub async fn tail(&self, patterns: &[String]) -> Result<Tail, HubError> {
        let cfg = self.config();
        let patterns: Vec<String> = if patterns.is_empty() { vec!["#".into()] } else { patterns.to_vec() };
        let queue = format!("{}.tail.{}", cfg.exchange, &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let ch = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(TAIL_MAX_LENGTH));
        args.insert(ShortString::from("x-overflow"), AMQPValue::LongString(LongString::from("drop-head")));
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, durable: false, ..Default::default() };
        ch.queue_declare(&queue, opts, args)
            .await
            .map_err(HubError::amqp(format!("declaring the tail queue {queue:?}")))?;
        for p in &patterns {
            ch.queue_bind(&queue, &cfg.exchange, p, QueueBindOptions::default(), FieldTable::default())
                .await
                .map_err(HubError::amqp(format!("binding {queue:?} to exchange {:?} with {p:?}", cfg.exchange)))?;
        }
        ch.basic_qos(TAIL_PREFETCH, BasicQosOptions::default()).await.map_err(HubError::amqp("setting prefetch"))?;
        let consumer = ch
            .basic_consume(&queue, &queue, BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(HubError::amqp(format!("consuming {queue:?}")))?;
        Ok(Tail { ch, consumer, queue, patterns })
    }
}

impl Tail {
    /// The temporary queue's name (shown in the management UI while the tail runs).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The next event; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<Result<TailedEvent, HubError>> {
        let m = match self.next_message().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let (envelope, raw) = match serde_json::from_slice::<Envelope>(&m.body) {
            Ok(env) => (Some(env), None),
            Err(_) => (None, Some(String::from_utf8_lossy(&m.body).into_owned())),
        };
        let trace_id =
            m.headers.get(crate::trace::TRACEPARENT).and_then(|v| v.as_str()).and_then(crate::trace::trace_id);
        Some(Ok(TailedEvent { routing_key: m.routing_key, envelope, raw, trace_id }))
    }

    /// The next message as published (body bytes and AMQP headers, e.g. `traceparent`);
    /// `None` once the connection is gone.
    pub async fn next_message(&mut self) -> Option<Result<Message, HubError>> {
        let d = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(HubError::Amqp { what: format!("reading {:?}", self.queue), source: e })),
        };
        if let Err(e) = self.ch.basic_ack(d.delivery_tag, BasicAckOptions::default()).await {
            return Some(Err(HubError::Amqp { what: format!("acknowledging on {:?}", self.queue), source: e }));
        }
        Some(Ok(Message { routing_key: d.routing_key.to_string(), headers: headers_of(&d.properties), body: d.data }))
    }

    /// Closes the channel; the broker deletes the queue (auto-delete, exclusive).
    pub async fn close(self) {
        let _ = self.ch.close(200, "tail done").await;
    }
}
