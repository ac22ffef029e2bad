//! The profile service (SPEC §4): `GET/PUT /api/profile/me` on its own database `profile_db`,
//! and the consumer that creates an empty profile when `auth.user.registered` arrives.
//!
//! # Layout
//! - [`startup`]: [`Settings`] (the common [`mfe_kit::ServiceConfig`] plus the subscription),
//!   [`AppState`] and [`Application`] (`build`, `port()`, `run_until(stop)`,
//!   `run_until_stopped()`), on the kit's skeleton ([`mfe_kit::startup`]).
//! - [`profiles`]: the HTTP routes, validation and the Redis cache of profiles.
//! - [`consumer`]: the `auth.user.registered` handler (idempotent via `processed_events`).

pub mod consumer;
pub mod profiles;
pub mod startup;

use std::time::Duration;

pub use startup::{default_subscription, AppState, Application, Settings};

/// The profile_db schema, embedded; run at start-up and by the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/profile");

/// The consumer name recorded in `processed_events` and on dead-lettered messages.
pub const CONSUMER: &str = "profile";

/// How long a profile stays in Redis, under `profile:{userId}` (the seed's key and lifetime).
pub const PROFILE_CACHE_TTL: Duration = Duration::from_secs(300);
