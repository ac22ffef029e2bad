//! The errors of the hub ([`HubError`]) and of event handlers ([`HandlerError`]).

use std::fmt;

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("rabbitmq at {urls}: cannot connect: {reason} — is the broker running? try `mfe infra start rabbitmq`")]
    Connect { urls: String, reason: String },
    #[error("rabbitmq: not connected after waiting {waited_ms} ms — the broker is down or unreachable; the publish was not sent")]
    NotConnected { waited_ms: u128 },
    #[error("rabbitmq: publish of {routing_key} to exchange {exchange:?} was nacked by the broker")]
    Nacked { exchange: String, routing_key: String },
    #[error("rabbitmq: publish of {routing_key} to exchange {exchange:?} was unroutable (no queue bound) — declare the consumer's queue first")]
    Unroutable { exchange: String, routing_key: String },
    #[error("rabbitmq: no confirm for {routing_key} within {waited_ms} ms — the broker may be overloaded or gone")]
    ConfirmTimeout { routing_key: String, waited_ms: u128 },
    #[error("rabbitmq: {what}: {source}")]
    Amqp {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "rabbitmq: {routing_key} was not sent: an earlier event of the same batch failed, and events go out in order"
    )]
    NotSent { routing_key: String },
    #[error("event {id}: cannot encode the envelope: {source}")]
    Encode {
        id: uuid::Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("rabbitmq: {queue} is being read by another consumer (another `mfe events dlq` run?) — wait for it to finish and try again")]
    InUse { queue: String },
    #[error("rabbitmq: queue {queue} has {consumers} consumer(s) — stop the service that reads it (`mfe down`), then upgrade it (`mfe up` or `mfe events upgrade-queues`)")]
    QueueInUse { queue: String, consumers: u32 },
    #[error("rabbitmq: the upgrade of queue {queue} stopped: {reason} — no message is lost; run it again to finish")]
    UpgradeStopped { queue: String, reason: String },
    #[error("refusing to delete the topology of exchange {exchange:?}: it is not an isolated (test) topology")]
    NotIsolated { exchange: String },
    #[error("the hub is closed")]
    Closed,
}

impl HubError {
    pub(crate) fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> HubError {
        let what = what.into();
        move |source| HubError::Amqp { what, source }
    }
}

/// Whether the broker refused a declaration because the queue exists with other arguments
/// (or other flags): AMQP 406 PRECONDITION_FAILED.
pub(crate) fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Whether the broker answered that a queue (or exchange) does not exist: AMQP 404 NOT_FOUND.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e, lapin::Error::ProtocolError(p) if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// A handler's failure: retried with backoff, or (`fatal`) dead-lettered at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub reason: String,
    /// True when retrying cannot help (e.g. a malformed payload): straight to the DLQ.
    pub fatal: bool,
}

impl HandlerError {
    /// A failure worth retrying (a database or downstream hiccup).
    pub fn retry(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), fatal: false }
    }

    /// A failure no retry can fix: the message goes straight to the dead-letter queue.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), fatal: true }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HandlerError {}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::retry(format!("database: {e}"))
    }
}

impl From<anyhow::Error> for HandlerError {
    fn from(e: anyhow::Error) -> Self {
        HandlerError::retry(format!("{e:#}"))
    }
}
