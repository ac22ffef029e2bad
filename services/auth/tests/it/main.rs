//! Integration tests of the auth service over real HTTP, against the real PostgreSQL,
//! RabbitMQ and Redis of the test stack (see test.env). Each test spawns its own app on a
//! free port with a fresh database.

mod accounts;
mod devices;
mod helpers;
mod migrated;
mod ops;
mod security;
mod tokens;
mod two_tabs;
