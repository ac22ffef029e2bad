//! The integration tests of `mfe`, in one binary: one module per former test file, and the
//! helpers they share. Tests of one module run side by side, modules one after another, as the
//! separate binaries did: every test starts with
//! `let _serial = mfe_testkit::serial::group(module_path!());` (`mfe_testkit::serial`).
//!
//! Run one module with a filter: `cargo test -p mfe --test it docker_runtime:: -- --nocapture`.
//! Most need the test stack (`set -a; source test.env; set +a; mfe infra start`).

mod chaos;
mod dashboard;
mod dashboard_browser;
mod db_migrations;
mod degraded;
mod docker_runtime;
mod events_dlq;
mod fixtures_data;
mod ha_cluster;
mod hostile_clients;
mod migrate_e2e;
mod migrate_online;
mod migrate_resume;
mod native_runtime;
mod nginx_native;
mod observability_correlation;
mod prometheus_native;
mod proxy_through_gateway;
mod quiet_output;
mod readme_table;
mod replicas;
mod security;
mod ssl_generate;
mod test_ports;
mod upload_refused_through_gateway;
mod ws_probe;

// Shared by several of the modules above.
mod db_support;
mod migrate_support;
mod nginx_support;
mod own_stack;
mod processes;
mod proxy_support;

/// The repository's root (the workspace the `mfe` crate is in).
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
