//! The integration tests of `mfe-events`, one binary: the hub, dead letters, the outbox, an
//! outbox relay crash before its stamp, broker outages, queue upgrades, and the reliability
//! scenarios `mfe test event-hub` runs (`mfe_events::scenarios`). All run against the test
//! stack of test.env; the broker-outage tests hold the broker for themselves
//! (`common::exclusive_broker`), the rest share it.

mod common;
mod crash_before_stamp;
mod dlq;
mod hub;
mod outbox;
mod reconnect;
mod scenarios;
mod upgrade;
