//! Shared by the `migrate_*` tests: five fresh, migrated databases on the test stack's
//! PostgreSQL servers (legacy + the four split ones, `mfe_testkit::db`), the built `mfe` binary
//! pointed at them, and readers of their state.
//!
//! Needs the test stack: `set -a; source test.env; set +a; mfe infra start` (or `make test`).

use mfe::migrate::checksum::table_checksum_sql;
use mfe::migrate::tables::{TableSpec, TABLES};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::repo_root;

pub const DB_VARS: [(&str, &str); 5] = [
    ("LEGACY_DATABASE_URL", "legacy"),
    ("AUTH_DATABASE_URL", "auth"),
    ("PAYMENTS_DATABASE_URL", "payments"),
    ("ADMIN_DATABASE_URL", "admin"),
    ("PROFILE_DATABASE_URL", "profile"),
];

/// Five fresh, migrated databases (legacy + the four split ones) and a scratch directory.
pub struct Stack {
    /// Variable → URL of this test's database.
    pub urls: BTreeMap<&'static str, String>,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn new() -> Self {
        Self::migrated(false).await
    }

    /// The stack of the online tests: every server must run `wal_level = logical` (the stack
    /// `mfe infra start` makes from this tree does).
    pub async fn logical() -> Self {
        Self::migrated(true).await
    }

    async fn migrated(logical: bool) -> Self {
        let mut urls = BTreeMap::new();
        for (var, service) in DB_VARS {
            if logical {
                let mut conn = mfe_testkit::db::admin_connection(&mfe_core::env::get(var)).await;
                let (level,): (String,) = sqlx::query_as("SHOW wal_level").fetch_one(&mut conn).await.unwrap();
                assert_eq!(
                    level, "logical",
                    "{var}: this server runs wal_level={level}; restart the stack from this tree (`mfe infra stop && mfe infra start`)"
                );
                conn.close().await.ok();
            }
            let migrator = sqlx::migrate::Migrator::new(repo_root().join("migrations").join(service)).await.unwrap();
            let (url, _) = mfe_testkit::fresh_migrated_database(var, &migrator).await;
            urls.insert(var, url);
        }
        Stack { urls, dir: tempfile::tempdir().unwrap() }
    }

    pub async fn pool(&self, var: &str) -> PgPool {
        PgPoolOptions::new().max_connections(2).connect(&self.urls[var]).await.unwrap()
    }

    pub async fn legacy(&self) -> PgPool {
        self.pool("LEGACY_DATABASE_URL").await
    }

    pub async fn split(&self, spec: &TableSpec) -> PgPool {
        self.pool(spec.service.url_var()).await
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(args).current_dir(self.dir.path()).env("MFE_ROOT", repo_root()).env_remove("RUST_LOG");
        for (var, url) in &self.urls {
            cmd.env(var, url);
        }
        cmd
    }

    /// Runs `mfe <args>` to completion.
    pub fn mfe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the mfe binary runs")
    }

    /// Runs `mfe <args>` to completion on a blocking thread, so tasks of the test (a POC-2
    /// writer) keep running meanwhile.
    pub async fn mfe_async(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("the mfe binary runs")).await.unwrap()
    }

    pub fn export_dir(&self) -> PathBuf {
        self.dir.path().join("migration-data")
    }

    /// Replication objects of this test still on any of its servers.
    pub async fn replication_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for url in self.urls.values() {
            let mut conn = PgConnection::connect(url).await.unwrap();
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database() \
                 UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
                   WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 UNION ALL SELECT 'publication ' || pubname FROM pg_publication",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            out.extend(rows);
        }
        out
    }
}

/// Removes what a test made, also when it failed: subscriptions first (they hold slots on other
/// servers), then slots, then the databases. Offline tests have no replication objects; the
/// first two steps then find nothing.
impl Drop for Stack {
    fn drop(&mut self) {
        let urls: Vec<String> = self.urls.values().cloned().collect();
        // Drop runs outside any runtime the test may still hold: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for url in &urls {
                    let Ok(mut conn) = PgConnection::connect(url).await else { continue };
                    let subs: Vec<String> = sqlx::query_scalar(
                        "SELECT subname::text FROM pg_subscription \
                         WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    )
                    .fetch_all(&mut conn)
                    .await
                    .unwrap_or_default();
                    for s in subs {
                        for sql in [
                            format!("ALTER SUBSCRIPTION \"{s}\" DISABLE"),
                            format!("ALTER SUBSCRIPTION \"{s}\" SET (slot_name = NONE)"),
                            format!("DROP SUBSCRIPTION \"{s}\""),
                        ] {
                            let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                        }
                    }
                }
                for url in &urls {
                    let name = mfe_testkit::db::database_name(url);
                    let admin = mfe_testkit::db::with_database(url, "postgres");
                    let Ok(mut conn) = PgConnection::connect(&admin).await else { continue };
                    let (n_slots,): (i64,) =
                        sqlx::query_as("SELECT count(*) FROM pg_replication_slots WHERE database = $1")
                            .bind(&name)
                            .fetch_one(&mut conn)
                            .await
                            .unwrap_or((0,));
                    if n_slots > 0 {
                        let _ = sqlx::query(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = sqlx::query(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                    }
                    conn.close().await.ok();
                    mfe_testkit::drop_database(url).await;
                }
            })
        })
        .join();
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), String::from_utf8_lossy(&o.stdout));
}

pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

/// Every row of a table (legacy columns only), as PostgreSQL renders it, ordered by id.
pub async fn rows_text(pool: &PgPool, spec: &TableSpec) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT t.\"id\", ROW({})::text FROM {} AS t ORDER BY t.\"id\" COLLATE \"C\"",
        spec.columns.iter().map(|c| format!("t.\"{c}\"")).collect::<Vec<_>>().join(", "),
        spec.ident()
    );
    sqlx::query_as(&sql).fetch_all(pool).await.unwrap()
}

/// Every row of a split table with all its columns (extra ones too), ordered by id.
pub async fn full_rows(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" AS t ORDER BY t.\"id\" COLLATE \"C\""))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The state of every split table.
pub async fn split_state(stack: &Stack) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for spec in &TABLES {
        out.push(full_rows(&stack.split(spec).await, spec.name).await);
    }
    out
}

/// Every index and constraint of the split databases' public schemas (the import rebuilds the
/// ones it drops for the load: they must all be back, unchanged).
pub async fn split_schema_objects(stack: &Stack) -> Vec<String> {
    let mut out = Vec::new();
    for (var, _) in &DB_VARS[1..] {
        let pool = stack.pool(var).await;
        let objects: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
             UNION ALL SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        out.extend(objects.into_iter().map(|o| format!("{var}: {o}")));
    }
    out
}

/// Count + checksum of every legacy table.
pub async fn legacy_checksums(legacy: &PgPool) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for spec in &TABLES {
        out.push(sqlx::query_as(&table_checksum_sql(spec)).fetch_one(legacy).await.unwrap());
    }
    out
}

pub fn failed_checks(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["detail"].as_str().unwrap().to_string()))
        .collect()
}

/// Waits until no session but ours is inside a transaction on `pool`'s database: the server
/// aborts a killed client's transactions once it notices the closed connection.
pub async fn wait_for_other_transactions_to_end(pool: &PgPool) {
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND pid <> pg_backend_pid() AND xact_start IS NOT NULL";
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(others).fetch_one(pool).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the killed import's sessions did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids that occur more than once in a split table, and ids recorded more than once (or not at
/// all) as imported, for the tables of `stack`: all must be empty after any import.
pub async fn duplicates(stack: &Stack) -> Vec<String> {
    let mut found = Vec::new();
    for spec in &TABLES {
        let pool = stack.split(spec).await;
        let dup: Vec<String> =
            sqlx::query_scalar(&format!("SELECT id FROM {} GROUP BY id HAVING count(*) > 1 LIMIT 5", spec.ident()))
                .fetch_all(&pool)
                .await
                .unwrap();
        found.extend(dup.into_iter().map(|id| format!("{}: row {id} twice", spec.name)));
        let recorded: bool = sqlx::query_scalar("SELECT to_regclass('mfe_migration.imported_ids') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        if recorded {
            let twice: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM mfe_migration.imported_ids i JOIN mfe_migration.batches b USING (batch_id), \
                 unnest(i.row_ids) AS id WHERE i.table_name = $1 AND b.rolled_back_at IS NULL \
                 GROUP BY id HAVING count(*) > 1 LIMIT 5",
            )
            .bind(spec.name)
            .fetch_all(&pool)
            .await
            .unwrap();
            found.extend(twice.into_iter().map(|id| format!("{}: id {id} recorded twice", spec.name)));
        }
    }
    found
}
