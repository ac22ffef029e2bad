//! Integration tests of the profile service over real HTTP, against the real PostgreSQL,
//! RabbitMQ and Redis of the test stack (see test.env). Each test spawns its own app on a
//! free port with a fresh database and a private, exclusive consumer queue.

mod helpers;
mod profiles;
