//! The helpers of the workspace's integration tests, in one place: a dev-dependency only, never
//! linked into a binary that ships. Tests talk to the real test stack (`mfe infra start` with
//! `test.env`); these helpers give each test its own corner of it.
//!
//! - [`db`]: a fresh database per test on the server a URL or a variable points at;
//! - [`net`]: a port nothing listens on, and a TCP [`net::Forwarder`] that can be cut and
//!   restored, to play an outage of a shared server without touching it;
//! - [`otlp`]: a local OTLP/HTTP collector that records the spans it is sent;
//! - [`service`]: a service's configuration on port 0 with a fresh database, and a stand-in for
//!   the auth service's account lookup;
//! - [`events`]: an [`events::EventRecorder`] of everything published under some patterns;
//! - [`logging`]: the services' tracing output, shown only when `TEST_LOG` is set;
//! - [`serial`]: the tests of one former test file at a time inside a crate's one test binary.
//!
//! It sits above `mfe-kit` and `mfe-events` (ARCHITECTURE.md, the crate graph): those crates'
//! own integration tests may use it; their unit tests may not (they would link a second copy).

pub mod db;
pub mod events;
pub mod logging;
pub mod net;
pub mod otlp;
pub mod serial;
pub mod service;

/// What to run when the test stack is not reachable.
pub const START_HINT: &str =
    "start the test stack: `set -a; source test.env; set +a; cargo build -p mfe && target/debug/mfe infra start`";

pub use db::{drop_database, fresh_database, fresh_migrated_database};
pub use events::EventRecorder;
pub use net::closed_port;
pub use service::{fake_auth_users, test_config};
