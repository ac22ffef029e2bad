//! Named broker operations for tools and tests (readiness probe, existence checks, declaring a
//! plan, reading one message), so that no crate but this one handles AMQP types: the CLI, the kit
//! and every test outside this crate go through these instead of a raw channel.
//!
//! The raw channel ([`Hub::raw_channel`]) exists only with the `test-support` feature, for this
//! crate's own tests that set up broker faults (deleting an exchange under a running hub,
//! holding the DLQ with a consumer).

use std::collections::BTreeMap;

use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::dlq::amqp_to_json;
use crate::envelope::Envelope;
use crate::error::{is_not_found, HubError};
use crate::hub::Hub;
use crate::topology::{self, Plan};

/// One message taken from a queue by [`Hub::get`], already acknowledged.
#[derive(Debug, Clone)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    /// The AMQP headers (`x-death-reason`, `x-attempts`, `traceparent`, ...) as JSON values.
    pub headers: BTreeMap<String, Value>,
}

impl Message {
    /// The body as an envelope, when it is one.
    pub fn envelope(&self) -> Option<Envelope> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A text header.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.as_str()
    }

    /// A whole-number header.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        self.headers.get(name)?.as_i64()
    }
}

/// What a passive declare tells of a queue ([`Hub::queue_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not those delivered and unacked).
    pub messages: u32,
    pub consumers: u32,
}

/// The headers of AMQP properties as JSON values.
pub(crate) fn headers_of(props: &lapin::BasicProperties) -> BTreeMap<String, Value> {
    props
        .headers()
        .as_ref()
        .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), amqp_to_json(v))).collect())
        .unwrap_or_default()
}

async fn open(url: &str) -> Result<Connection, HubError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| HubError::Connect { urls: mfe_core::redact_url_password(url), reason: e.to_string() })
}

impl Hub {
    /// Readiness of the broker at `url`: a connection and a channel open (and are closed again).
    /// Declares nothing, unlike [`Hub::connect`].
    pub async fn ping(url: &str) -> Result<(), HubError> {
        let conn = open(url).await?;
        let ch = conn.create_channel().await.map_err(HubError::amqp("opening a channel"));
        if let Ok(ch) = &ch {
            let _ = ch.close(200, "ping").await;
        }
        let _ = conn.close(200, "ping").await;
        ch.map(|_| ())
    }

    /// Whether the broker at `url` has the topic exchange `exchange` (a passive declare on a
    /// connection of its own: nothing is declared, unlike [`Hub::connect`]).
    pub async fn exchange_exists_at(url: &str, exchange: &str) -> Result<bool, HubError> {
        let conn = open(url).await?;
        let ch = conn.create_channel().await.map_err(HubError::amqp("opening a channel"))?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let exists = ch.exchange_declare(exchange, ExchangeKind::Topic, passive, FieldTable::default()).await.is_ok();
        let _ = conn.close(200, "checked").await;
        Ok(exists)
    }

    /// Whether queue `queue` exists.
    pub async fn queue_exists(&self, queue: &str) -> Result<bool, HubError> {
        Ok(self.queue_counts(queue).await?.is_some())
    }

    /// The messages ready in `queue` and its consumers, `None` when it does not exist (a passive
    /// declare on a throw-away channel, which the broker closes for a missing queue).
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<QueueCounts>, HubError> {
        let ch = self.channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match ch.queue_declare(queue, passive, FieldTable::default()).await {
            Ok(q) => {
                let _ = ch.close(200, "counted").await;
                Ok(Some(QueueCounts { messages: q.message_count(), consumers: q.consumer_count() }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(HubError::Amqp { what: format!("looking up queue {queue:?}"), source: e }),
        }
    }

    /// Declares every exchange, queue and binding of `plan` (idempotent).
    pub async fn declare(&self, plan: &Plan) -> Result<(), HubError> {
        let ch = self.channel().await?;
        topology::apply(&ch, plan).await.map_err(HubError::amqp("declaring the topology"))?;
        let _ = ch.close(200, "declared").await;
        Ok(())
    }

    /// Takes the oldest message of `queue` and acknowledges it; `None` when the queue is empty.
    pub async fn get(&self, queue: &str) -> Result<Option<Message>, HubError> {
        let ch = self.channel().await?;
        let got = ch
            .basic_get(queue, BasicGetOptions::default())
            .await
            .map_err(HubError::amqp(format!("reading {queue:?}")))?;
        let message = match got {
            None => None,
            Some(m) => {
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(HubError::amqp(format!("acknowledging on {queue:?}")))?;
                Some(Message {
                    routing_key: m.delivery.routing_key.to_string(),
                    headers: headers_of(&m.delivery.properties),
                    body: m.delivery.data,
                })
            }
        };
        let _ = ch.close(200, "got").await;
        Ok(message)
    }

    /// A raw AMQP channel on the current connection, for this crate's tests that set up broker
    /// faults; everything else has a named operation.
    #[cfg(feature = "test-support")]
    pub async fn raw_channel(&self) -> Result<lapin::Channel, HubError> {
        self.channel().await
    }
}
