//! Quiet tests: the services' tracing output goes to the test's output only when `TEST_LOG` is
//! set (any value), as in zero2prod. Without it no subscriber is installed and nothing is
//! printed; a failing test's own panic message is what `cargo test` shows.

/// Installs the services' subscriber (`mfe_kit::telemetry::init_tracing`, so `RUST_LOG` and
/// `LOG_FORMAT` apply) when `TEST_LOG` is set; otherwise does nothing. Safe to call from every
/// test: the first call of a process wins.
pub fn init(service: &str) {
    if std::env::var_os("TEST_LOG").is_some() {
        mfe_kit::telemetry::init_tracing(service);
    }
}
