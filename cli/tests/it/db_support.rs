//! Shared by the `db_*` and `fixtures_*` tests: one fresh database per service on the test
//! stack's PostgreSQL servers (`mfe_testkit::db`), and the built `mfe` binary pointed at them.

use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::repo_root;

/// The URL variable of each service database, in the order `mfe db migrate --service all` uses.
pub const SERVICES: [(&str, &str); 5] = [
    ("auth", "AUTH_DATABASE_URL"),
    ("payments", "PAYMENTS_DATABASE_URL"),
    ("admin", "ADMIN_DATABASE_URL"),
    ("profile", "PROFILE_DATABASE_URL"),
    ("legacy", "LEGACY_DATABASE_URL"),
];

/// One fresh database per service, and the `mfe` binary configured to use them.
pub struct TestDbs {
    pub urls: Vec<(&'static str, String)>,
    pub migrations_dir: Option<PathBuf>,
}

impl TestDbs {
    pub async fn new() -> Self {
        let mut urls = Vec::new();
        for (service, var) in SERVICES {
            urls.push((service, mfe_testkit::db::fresh_database_of(var).await));
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
            mfe_testkit::drop_database(url).await;
        }
    }
}

/// The JSON report printed on stdout by `--json`.
pub fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}
