//! The payments service: payments on their own database (payments_db), each write carrying its
//! status history row and its event through the transactional outbox.
//!
//! # Layout
//! - [`domain`]: amounts, currencies, payment types and the status state machine (no I/O).
//! - [`store`]: every SQL statement; writes are one transaction with their history row and event.
//! - [`service`]: [`service::PaymentsService`], the use cases (create, change status, reads).
//! - [`routes`]: the HTTP API under `/api/payments/` (parse, call the use case, map).
//! - [`list_cache`]: the Redis cache of list pages, invalidated by per-user tags.
//! - [`payment_cache`]: the Redis cache of single payments (`payment:{id}`, 1 min), written
//!   through on every write.
//! - [`psp`]: the stubbed payment provider that completes payments when configured.
//! - [`metrics`]: business metrics (payments created, amounts) beside the kit's.
//! - [`startup`]: [`Settings`], [`AppState`] and [`Application`] (`build`, `port()`,
//!   `run_until(stop)`, `run_until_stopped()`), wiring the above on the kit's skeleton.
//!
//! # Invariants
//! - The service reads and writes payments_db only; users are plain ids from tokens.
//! - A status change happens only along the state machine of [`domain::PaymentStatus::can_become`],
//!   and every change (creation included) commits exactly one `payment_transactions` row and
//!   exactly one outbox event with it.
pub mod domain;
pub mod list_cache;
pub mod metrics;
pub mod payment_cache;
pub mod psp;
pub mod routes;
pub mod service;
pub mod startup;
pub mod store;

pub use service::PaymentsService;
pub use startup::{AppState, Application, Settings};

/// The schema of payments_db, embedded: `migrations/payments`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/payments");
