//! `mfe-core`: what every crate of the workspace agrees on, with no workspace dependency of its
//! own (the bottom of the crate graph of ARCHITECTURE.md).
//!
//! # Layout
//! - [`env`]: the environment contract (SPEC §2 and every tuning knob): the [`env::VARS`] table,
//!   the one parser ([`env::parse_env`] and its duration siblings), `.env` loading and the
//!   `.env.example` renderer.
//! - [`service`]: the table of the services ([`Service`], [`service::SERVICES`]): name, port,
//!   database, variables and gateway route of each. Adding a service starts there.
//! - [`secret`]: [`Secret`], a value that never prints.
//! - [`redact`]: [`redact_url_password`] and [`cause_chain`], for messages and logs.
pub mod env;
pub mod redact;
pub mod secret;
pub mod service;

pub use env::{parse_env, parse_env_ms, parse_env_secs, EnvError};
pub use redact::{cause_chain, redact_url_password};
pub use secret::Secret;
pub use service::{replica_name, Service, ServiceSpec, SERVICES};
