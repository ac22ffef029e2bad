//! `mfe-events`: the event hub every service and the gateway use (SPEC §7).
//!
//! Events are [`Envelope`]s published to the topic exchange `events` with their type as routing
//! key. Each consuming service reads its own durable queue; failures are retried with
//! exponential backoff through per-queue retry queues (so only the failing consumer sees the
//! retry) and then dead-lettered to `events.dlq` with the reason in headers, where an operator
//! lists, replays (to the failing consumer only) or purges them ([`dlq`]).
//!
//! # Layout
//! - [`envelope`]: the envelope and the event type names ([`types`]).
//! - [`config`]: [`HubConfig`], read from `RABBITMQ_URL`, `RABBITMQ_QUEUE_TYPE`, `EVENT_RETRY_DELAYS_MS`.
//! - [`topology`]: exchanges, queues and bindings as data, matching `rabbitmq/definitions.json`.
//! - [`hub`]: [`Hub`], the connection manager, confirmed publisher and consumer runner.
//! - [`handler`]: the [`Handler`] trait and [`handler_fn`] for closures.
//! - [`outbox`]: the transactional outbox and its relay.
//! - [`dlq`]: list, show, replay and purge dead letters (named operations on [`Hub`]).
//! - [`tail`]: a live view of the events passing through the exchange.
//! - [`ops`]: named broker operations for tools and tests (ping, existence checks, declare a
//!   plan, get one [`Message`]); no other crate handles AMQP types.
//! - [`idempotency`]: once-per-consumer processing of an event id.
//! - [`trace`]: W3C trace context carried from the emitting request to the consumer.
//! - [`crash_point`]: the chaos suite's consumer crash between commit and ack (SIGUSR1).
//! - [`upgrade`]: recreating a service queue whose arguments changed, messages kept.
//! - [`scenarios`]: the event hub's reliability scenarios, run by `mfe test event-hub` against a
//!   live broker and by this crate's integration tests.
//!
//! The tables (`event_outbox`, `processed_events`) are in `migrations/_shared/event_hub.up.sql`,
//! which each service's migrations include.

pub mod config;
pub mod crash_point;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod handler;
pub mod hub;
pub mod idempotency;
pub mod ops;
pub mod outbox;
pub mod scenarios;
pub mod service_link;
pub mod tail;
pub mod topology;
pub mod trace;
pub mod upgrade;

pub use config::{HubConfig, QueueType};
pub use dlq::{DeadLetter, DeadLetterFilter, DeadLetterList, PurgeReport, ReplayReport};
pub use envelope::{types, Envelope};
pub use error::{HandlerError, HubError};
pub use handler::{handler_fn, Handler};
pub use hub::{Hub, SubscriptionHandle};
pub use ops::{Message, QueueCounts};
pub use outbox::{OutboxRelay, RelayHandle};
pub use scenarios::{BrokerControl, ScenarioOutcome, Scenarios};
pub use tail::{Tail, TailedEvent};
pub use topology::Subscription;
pub use upgrade::QueueUpgrade;

/// The DDL of the event hub tables, for tests and tools that create scratch databases.
pub const EVENT_HUB_DDL: &str = include_str!("../../../migrations/_shared/event_hub.up.sql");
