//! Publishing with publisher confirms: one event, a batch with its confirms in flight
//! together, and raw bytes (the retry and dead-letter paths).

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::basic::AMQPProperties;
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};

use super::{Hub, Inner};
use crate::envelope::Envelope;
use crate::error::HubError;

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

impl Hub {
    /// The confirm-mode channel of the current connection, opened on first use.
    pub(super) async fn publish_channel(&self) -> Result<Channel, HubError> {
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

pub(super) async fn send(
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

pub(super) async fn await_confirm(
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
