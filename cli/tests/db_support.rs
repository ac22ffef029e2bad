//! Shared by the `db_*` and `fixtures_*` tests (included with `#[path]`): fresh databases named by
//! a UUID on the test stack's PostgreSQL servers, and the built `mfe` binary pointed at them.
#![allow(dead_code)]

use sqlx::{Connection, PgConnection, PgPool};
use std::path::PathBuf;
use std::process::{Command, Output};

/// The URL variable of each service database, in the order `mfe db migrate --service all` uses.
pub const SERVICES: [(&str, &str); 5] = [
    ("auth", "AUTH_DATABASE_URL"),
    ("payments", "PAYMENTS_DATABASE_URL"),
    ("admin", "ADMIN_DATABASE_URL"),
    ("profile", "PROFILE_DATABASE_URL"),
    ("legacy", "LEGACY_DATABASE_URL"),
];

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("a valid database URL in the environment");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Creates an empty database named by a UUID on the server of `var`'s URL and returns its URL.
pub async fn create_database(var: &str) -> String {
    let base = mfe_core::env::get(var);
    let admin_url = with_database(&base, "postgres");
    let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL for {var} at {admin_url} is unreachable ({e}) — start the test stack: \
             `set -a; source test.env; set +a; cargo run -p mfe -- infra start`"
        )
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("create the test database");
    with_database(&base, &name)
}

/// Drops a database created by [`create_database`] (best effort; the test outcome never depends on it).
pub async fn drop_database(url: &str) {
    let name = url::Url::parse(url).unwrap().path().trim_start_matches('/').to_string();
    if let Ok(mut conn) = PgConnection::connect(&with_database(url, "postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await;
    }
}

/// One fresh database per service, and the `mfe` binary configured to use them.
pub struct TestDbs {
    pub urls: Vec<(&'static str, String)>,
    pub migrations_dir: Option<PathBuf>,
}

impl TestDbs {
    pub async fn new() -> Self {
        let mut urls = Vec::new();
        for (service, var) in SERVICES {
            urls.push((service, create_database(var).await));
        }
        Self { urls, migrations_dir: None }
    }

    pub fn url(&self, service: &str) -> &str {
        &self.urls.iter().find(|(s, _)| *s == service).expect("a known service").1
    }

    pub async fn pool(&self, service: &str) -> PgPool {
        PgPool::connect(self.url(service)).await.expect("connect to the test database")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(args).env("MFE_ROOT", repo_root()).env_remove("MFE_MIGRATIONS_DIR");
        for ((_, var), (_, url)) in SERVICES.iter().zip(&self.urls) {
            cmd.env(var, url);
        }
        if let Some(dir) = &self.migrations_dir {
            cmd.env("MFE_MIGRATIONS_DIR", dir);
        }
        cmd
    }

    /// Runs `mfe args...` and returns its output (whatever the exit status).
    pub fn mfe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the mfe binary runs")
    }

    /// Runs `mfe args...` and panics with its stderr unless it succeeded.
    pub fn mfe_ok(&self, args: &[&str]) -> Output {
        let out = self.mfe(args);
        assert!(out.status.success(), "mfe {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub async fn drop_all(self) {
        for (_, url) in &self.urls {
            drop_database(url).await;
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The JSON report printed on stdout by `--json`.
pub fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
