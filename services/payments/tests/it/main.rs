//! The integration tests of the payments service, one binary, one module per former test file:
//! tokens that must not act, the HTTP API, the outbox during a broker outage and the payment
//! cache, against the test stack of test.env. Each test joins its module's
//! `mfe_testkit::serial::group`, so the tests of one module run side by side and never beside
//! another module's, as when each file was its own binary.

mod accounts;
mod api;
mod common;
mod outbox;
mod payment_cache;
