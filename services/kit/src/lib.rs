//! The shared service kit: what every service and the gateway have in common, one home each.
//!
//! # Layout
//! - [`env`]: the environment contract of SPEC §2 (variables, defaults, `.env` loading).
pub mod env;
