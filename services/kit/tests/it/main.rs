//! The integration tests of `mfe-kit`, one binary: the cache during a Redis outage.
// otel_*.rs stay separate binaries: each installs a global tracing subscriber / OTel provider (one per process).

mod redis_outage;
