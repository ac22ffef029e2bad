//! The auth service (SPEC §4): users, access/refresh tokens and device sessions, on its own
//! database `auth_db`.
//!
//! # Layout
//! - [`startup`]: [`Settings`] (the common [`mfe_kit::ServiceConfig`] plus
//!   `AUTH_REFRESH_GRACE_SECONDS`), [`AppState`] and [`Application`] (`build`, `port()`,
//!   `run_until(stop)`, `run_until_stopped()`), on the kit's skeleton ([`mfe_kit::startup`]).
//! - [`users`]: signup, signin, me, user lookup for other services, admin listing.
//! - [`sessions`]: refresh tokens (rotation, the two-tab grace window, reuse detection,
//!   migrated POC-2 tokens), logout.
//! - [`devices`]: device sessions (register, list, revoke, logout-others) and [`ClientMeta`].
//! - [`throttle`]: failed sign-ins counted per email and client address (429 past the limit).
//! - [`password`]: input rules, argon2id hashing, verification of POC-2 hashes (bcrypt, argon2).
//!
//! Every state change that others care about is written to the transactional outbox in the
//! same transaction as the change; the relay publishes it (`auth.user.*`, `auth.session.revoked`).

pub mod devices;
pub mod password;
pub mod sessions;
pub mod startup;
pub mod throttle;
pub mod users;

use std::time::Duration;

pub use devices::ClientMeta;
pub use startup::{AppState, Application, Settings};

/// The auth_db schema, embedded; run at start-up and by the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/auth");

/// The name events carry as `source`.
pub const SOURCE: &str = "auth-service";

/// Lifetime of an access token: short, since a revoked session keeps it until it expires.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token (each rotation issues a new one with a fresh lifetime).
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a user lookup stays in Redis, under `user:{id}` (the seed's key and lifetime, 5 min).
/// No write changes what the cache holds of a user (the password hash is not in it), so the
/// lifetime only bounds how long a user deleted straight from the database is still seen.
pub const USER_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
/// The name of the user cache: its keys are `user:{id}`, its hit/miss counters `cache="user"`.
pub const USER_CACHE: &str = "user";

/// `AUTH_REFRESH_GRACE_SECONDS` when unset: long enough for the tabs of one browser that woke
/// up together (each refreshes the moment its access token expires), short enough that a
/// thief replaying a rotated token a little later is still caught.
pub const DEFAULT_REFRESH_GRACE: Duration = Duration::from_secs(5);
