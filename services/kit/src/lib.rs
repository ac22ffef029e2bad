//! The shared service kit: what every service and the gateway have in common, one home each.
//!
//! # Layout
//! - [`config`]: a service's typed configuration ([`config::ServiceConfig`]), read through
//!   `mfe_core::env` (the contract, its parser and `.env` loading live in `mfe-core`).
//! - [`telemetry`]: tracing setup (log format, OpenTelemetry, Sentry switches) and the
//!   correlation-id middleware/extractor.
//! - [`otel`]: OTLP span export and W3C trace-context propagation (HTTP headers, events).
//! - [`otlp`]: the receiving end: an OTLP/HTTP export body decoded into plain spans.
//! - [`sentry`]: Sentry error reporting when `SENTRY_DSN` is set.
//! - [`jwt`]: access tokens (HS256 pinned) and [`jwt::Role`].
//! - [`auth`]: the `AuthUser` extractor and role guards.
//! - [`error`]: `ApiError` → `{"error":{"code","message"}}` and the `Json` extractor wrapper
//!   (generic 400s, the field path, control characters refused).
//! - [`input`]: control characters refused in JSON bodies and query strings (one rule).
//! - [`client_ip`]: the client's address behind trusted proxies (`TRUSTED_PROXIES`).
//! - [`health`]: `/health` checking the database, broker and Redis.
//! - [`metrics`]: Prometheus registry, request middleware and `/metrics`.
//! - [`cache`]: the Redis JSON cache with hit/miss counters.
//! - [`pagination`]: the keyset cursor of newest-first lists.
//! - [`replicas`]: the replicas of a service another one calls (round robin, one retry at the
//!   next on a refused connection) and the one parser of `*_SERVICE_URL` lists.
//! - [`revocation`]: the Redis denylist of ended sessions the extractor checks; with
//!   [`auth::Caller`] (user or service token) and [`accounts`] (whether a token's user still
//!   has an account, asked of auth before writes), the token hardening of issue 23.
//! - [`startup`]: how every service starts: its dependencies under the one availability
//!   policy (lazy database with migrations retried, optional Redis, background broker link)
//!   and the [`startup::Server`] every `Application` wraps.
//! - [`server`]: common routes and middleware (the request body limit), bind, serve loop.
//! - [`run`]: the shared `main` of the service binaries and the gateway (`.env`, runtime,
//!   tracing, serve, flush, exit code).
//! - [`shutdown`]: SIGTERM/SIGINT handling for graceful shutdown.
pub mod accounts;
pub mod auth;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod health;
pub mod input;
pub mod jwt;
pub mod metrics;
pub mod otel;
pub mod otlp;
pub mod pagination;
pub mod replicas;
pub mod revocation;
pub mod run;
pub mod sentry;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

pub use auth::Caller;
pub use auth::{AuthUser, RequireAdmin};
pub use client_ip::ClientIp;
pub use config::ServiceConfig;
pub use error::{ApiError, Json};
pub use jwt::{Claims, JwtKeys, Role};
pub use telemetry::CorrelationId;
