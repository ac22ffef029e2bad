//! The admin service: the platform's audit log and system configuration on their own database
//! (admin_db), user listing through the auth service, and a health view of every service.
//! Every route is ADMIN only.
//!
//! # Layout
//! - [`audit`]: the audit consumer (every event `#`, once per event id), the filtered list, and
//!   the `admin.audit.created` announcement of every row written.
//! - [`announcements`]: `POST /api/admin/announcements` → `notification:new` on every socket.
//! - [`system_config`]: configuration entries; a change commits its event and audit row together.
//! - [`routes`]: the HTTP API under `/api/admin/`.
//! - [`startup`]: [`Settings`], [`AppState`] and [`Application`] (`build`, `port()`,
//!   `run_until(stop)`, `run_until_stopped()`), on the kit's skeleton ([`mfe_kit::startup`]).
//!
//! # Invariants
//! - Cross-service reads go over HTTP (users from the auth service, health from each service) or
//!   come from events; this service never connects to another service's database.
//! - An audit row's id is the id of the event it records, so an event is audited at most once
//!   whether the consumer or the writer of the event (config changes) records it first.
pub mod announcements;
pub mod audit;
pub mod routes;
pub mod startup;
pub mod system_config;

pub use startup::{AppState, Application, Settings};

/// The schema of admin_db, embedded: `migrations/admin`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/admin");
