//! The integration tests of the admin service, one binary, one module per former test file:
//! announcements end to end through the real gateway, and the HTTP API with its audit trail,
//! against the test stack of test.env. Each test joins its module's
//! `mfe_testkit::serial::group`, so the tests of one module run side by side and never beside
//! another module's, as when each file was its own binary.

mod announcements;
mod api;
mod common;
