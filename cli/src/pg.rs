//! Connecting to the platform's PostgreSQL databases with one clear error line on failure:
//! `payments_db at 127.0.0.1:5433: connection refused — is the infrastructure running? try \`mfe infra start\``.

use crate::config::{Config, DbService};
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// A small pool to one service's database, with the error line SPEC §3 asks for.
pub async fn connect(cfg: &Config, db: DbService) -> anyhow::Result<PgPool> {
    let target = cfg.pg(db)?;
    connect_url(db.component().name(), &target.url).await
}

/// A pool to `url`; `label` names the database in errors.
pub async fn connect_url(label: &str, url: &str) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url).with_context(|| format!("{label}: invalid database URL"))?;
    let addr = format!("{}:{}", opts.get_host(), opts.get_port());
    // One direct attempt first: the pool retries until its timeout and would turn a refused
    // connection into "timed out", hiding the real cause.
    match tokio::time::timeout(Duration::from_secs(10), <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts))
        .await
    {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Ok(Err(e)) => return Err(unreachable_error(label, &addr, &e)),
        Err(_) => anyhow::bail!(
            "{label} at {addr}: no answer within 10 s — is the infrastructure running? try `mfe infra start`"
        ),
    }
    // The server answered above, so a slow acquire is load, not an outage: 5 s once failed an
    // export on a 2-core machine running nine migration tests at once (scram authentication
    // of a new connection alone took that long there).
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await
        .map_err(|e| unreachable_error(label, &addr, &e))
}

fn unreachable_error(label: &str, addr: &str, e: &sqlx::Error) -> anyhow::Error {
    match e {
        // The server answered (bad password, no such database): the start hint would mislead.
        sqlx::Error::Database(_) => anyhow::anyhow!("{label} at {addr}: {}", short_sqlx_error(e)),
        _ => anyhow::anyhow!(
            "{label} at {addr}: {} — is the infrastructure running? try `mfe infra start`",
            short_sqlx_error(e)
        ),
    }
}

/// The shortest faithful text of a sqlx error (io errors lose their wrapper).
pub fn short_sqlx_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string().to_lowercase().replace(" (os error 111)", ""),
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        other => other.to_string(),
    }
}
