//! Error reporting to Sentry, on only when `SENTRY_DSN` is set.
//!
//! The client is initialised once by `init_tracing` (environment from `SENTRY_ENVIRONMENT`,
//! release from the crate version); a `tracing` layer sends `error!` events as Sentry events and
//! `warn!`/`info!` as breadcrumbs, and panics are reported. Unset, nothing is installed.

use std::sync::OnceLock;

/// The variable that turns Sentry on.
pub const DSN_VAR: &str = "SENTRY_DSN";

static GUARD: OnceLock<sentry::ClientInitGuard> = OnceLock::new();

/// The configured DSN, when set and non-empty.
pub fn dsn_from_env() -> Option<String> {
    mfe_core::env::lookup("SENTRY_DSN")
}

/// Whether the Sentry client is initialised and enabled.
pub fn enabled() -> bool {
    GUARD.get().is_some_and(|g| g.is_enabled())
}

/// Initialises the client for `service` with `dsn`; an invalid DSN is logged and ignored by the
/// caller (the service still starts).
pub(crate) fn install(service: &str, dsn: &str) -> Result<(), String> {
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| format!("invalid {DSN_VAR}: {e}"))?;
    let environment = mfe_core::env::lookup("SENTRY_ENVIRONMENT");
    let guard = sentry::init(sentry::ClientOptions {
        dsn: Some(dsn),
        environment: environment.map(Into::into),
        release: Some(format!("{service}@{}", env!("CARGO_PKG_VERSION")).into()),
        server_name: Some(service.to_string().into()),
        ..Default::default()
    });
    sentry::configure_scope(|scope| scope.set_tag("service", service));
    let _ = GUARD.set(guard);
    Ok(())
}

/// Sends queued events (bounded wait); call once when the process ends.
pub fn flush() {
    if let Some(g) = GUARD.get() {
        g.flush(Some(std::time::Duration::from_secs(2)));
    }
}
