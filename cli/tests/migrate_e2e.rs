//! `mfe migrate` end to end: the built binary against fresh databases (named by a UUID) on each
//! PostgreSQL server of the test stack — never the shared default database names.
//!
//! Needs the test stack: `set -a; source test.env; set +a; mfe infra start` (or `make test`).

use mfe::migrate::checksum::table_checksum_sql;
use mfe::migrate::tables::{TableSpec, TABLES};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DB_VARS: [(&str, &str); 5] = [
    ("LEGACY_DATABASE_URL", "legacy"),
    ("AUTH_DATABASE_URL", "auth"),
    ("PAYMENTS_DATABASE_URL", "payments"),
    ("ADMIN_DATABASE_URL", "admin"),
    ("PROFILE_DATABASE_URL", "profile"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Five fresh, migrated databases (legacy + the four split ones) and a scratch directory.
struct Stack {
    name: String,
    /// Variable → URL of this test's database.
    urls: BTreeMap<&'static str, String>,
    dir: tempfile::TempDir,
}

impl Stack {
    async fn new() -> Self {
        let name = format!("mfe_mig_{}", uuid::Uuid::new_v4().simple());
        let mut urls = BTreeMap::new();
        for (var, service) in DB_VARS {
            let base = mfe_kit::env::get(var);
            let mut admin = url::Url::parse(&base).unwrap();
            admin.set_path("/postgres");
            let mut conn = PgConnection::connect(admin.as_str()).await.unwrap_or_else(|e| {
                panic!(
                    "{var}: cannot reach the test stack at {admin}: {e} — start it with \
                     `set -a; source test.env; set +a; cargo run -p mfe -- infra start`"
                )
            });
            sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.unwrap();
            let mut url = url::Url::parse(&base).unwrap();
            url.set_path(&format!("/{name}"));
            let pool = PgPoolOptions::new().max_connections(1).connect(url.as_str()).await.unwrap();
            let migrator = sqlx::migrate::Migrator::new(repo_root().join("migrations").join(service)).await.unwrap();
            migrator.run(&pool).await.unwrap_or_else(|e| panic!("migrations of {service}: {e}"));
            pool.close().await;
            urls.insert(var, url.to_string());
        }
        Stack { name, urls, dir: tempfile::tempdir().unwrap() }
    }

    async fn pool(&self, var: &str) -> PgPool {
        PgPoolOptions::new().max_connections(2).connect(&self.urls[var]).await.unwrap()
    }

    async fn legacy(&self) -> PgPool {
        self.pool("LEGACY_DATABASE_URL").await
    }

    async fn split(&self, spec: &TableSpec) -> PgPool {
        self.pool(spec.service.url_var()).await
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(args).current_dir(self.dir.path()).env("MFE_ROOT", repo_root()).env_remove("RUST_LOG");
        for (var, url) in &self.urls {
            cmd.env(var, url);
        }
        cmd
    }

    /// Runs `mfe <args>` to completion.
    fn mfe(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the mfe binary runs")
    }

    fn export_dir(&self) -> PathBuf {
        self.dir.path().join("migration-data")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let urls: Vec<String> = self.urls.values().cloned().collect();
        let name = self.name.clone();
        // Drop runs outside any runtime the test may still hold: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for url in urls {
                    let mut admin = url::Url::parse(&url).unwrap();
                    admin.set_path("/postgres");
                    if let Ok(mut conn) = PgConnection::connect(admin.as_str()).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                }
            })
        })
        .join();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), String::from_utf8_lossy(&o.stdout));
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

/// The 1 MB text of the dataset: multi-byte characters, tabs and newlines throughout.
fn megabyte_text() -> String {
    "ünïcødé\t✓\n\\ \"q\" 'x' ".repeat(40_000)
}

/// Legacy rows with every awkward value SPEC §6 names.
async fn seed_awkward_dataset(legacy: &PgPool) {
    let mut tx = legacy.begin().await.unwrap();
    let users = [
        ("u-emoji", "emoji@example.com", "Zoë 🚀 😀 name", "ADMIN", true),
        ("u-rtl", "rtl@example.com", "مرحبا بالعالم שלום", "CUSTOMER", false),
        ("u-quotes", "q@example.com", "tab\there\nnew line \\ back \"double\" 'single'", "VENDOR", false),
        ("u-plain", "plain@example.com", "Plain", "CUSTOMER", true),
    ];
    for (id, email, name, role, verified) in users {
        sqlx::query(
            "INSERT INTO users VALUES ($1, $2, 'argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', $3, $4::\"Role\", $5, \
             '2024-02-29 23:59:59.999', '2024-03-01 00:00:00.001')",
        )
        .bind(id)
        .bind(email)
        .bind(name)
        .bind(role)
        .bind(verified)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for sql in [
        "INSERT INTO refresh_tokens VALUES ('rt-1', 'u-emoji', 'tok-1', '2030-01-01 00:00:00.001', '2024-01-01 12:00:00')",
        "INSERT INTO refresh_tokens VALUES ('rt-2', 'u-rtl', E'tok\\t2', '2030-06-30 23:59:59.999', '2024-01-01')",
        "INSERT INTO payments VALUES ('p-big', 'u-emoji', 'u-rtl', 12345678901234.5678, 'USD', 'completed', 'instant', \
             'café ☕ payment', 'psp-1', '{\"nested\": {\"list\": [1, 2.50, {\"deep\": null}], \"emoji\": \"😀\", \"esc\": \"a\\\\\\\\b\\\"c\"}}', \
             '2024-01-01 00:00:00.123', '2024-01-01 00:00:01', '2024-01-02 03:04:05.678')",
        "INSERT INTO payments VALUES ('p-small', 'u-quotes', NULL, 0.0001, 'EUR', 'pending', 'scheduled', NULL, NULL, NULL, \
             '1999-12-31 23:59:59.999', '2000-01-01 00:00:00', NULL)",
        "INSERT INTO payments VALUES ('p-neg', 'u-plain', 'u-emoji', -99999.9999, 'JPY', 'failed', 'recurring', E'line1\\nline2\\r\\n\\ttab', NULL, '[]', now(), now(), NULL)",
        "INSERT INTO payment_transactions VALUES ('t-1', 'p-big', 'pending', NULL, NULL, NULL, '2024-01-01 00:00:00.1')",
        "INSERT INTO payment_transactions VALUES ('t-2', 'p-big', 'completed', E'ok \\\\ done', 'psp-1', '{\"code\": 0}', '2024-01-01 00:00:00.2')",
        "INSERT INTO audit_logs VALUES ('a-1', 'u-emoji', 'user.login', 'user', 'u-emoji', '{\"ip\": \"::1\", \"ua\": [\"x\", null]}', '::1', 'curl/8.5 \"quoted\"', '2024-01-01')",
        "INSERT INTO audit_logs VALUES ('a-2', NULL, 'system.boot', NULL, NULL, NULL, NULL, NULL, '2024-01-01')",
        "INSERT INTO system_config VALUES ('c-1', 'feature.flags', '{\"a\": true, \"b\": {\"c\": [1e3, \"x\"]}}', 'flags ✓', '2024-01-01', 'u-emoji')",
        "INSERT INTO system_config VALUES ('c-2', 'limit', '42', NULL, '2024-01-01', NULL)",
        "INSERT INTO user_profiles VALUES ('pr-1', 'u-emoji', 'https://example.com/a.png', '+1 555 0100', E'1 Main St\\nApt \"2\"', NULL, '{\"theme\": \"dark\", \"langs\": [\"ar\", \"he\"]}', '2024-01-01', '2024-01-01')",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    sqlx::query(
        "INSERT INTO user_profiles VALUES ('pr-big', 'u-rtl', NULL, NULL, NULL, $1, NULL, '2024-01-01', '2024-01-01')",
    )
    .bind(megabyte_text())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every row of a table (legacy columns only), as PostgreSQL renders it, ordered by id.
async fn rows_text(pool: &PgPool, spec: &TableSpec) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT t.\"id\", ROW({})::text FROM {} AS t ORDER BY t.\"id\" COLLATE \"C\"",
        spec.columns.iter().map(|c| format!("t.\"{c}\"")).collect::<Vec<_>>().join(", "),
        spec.ident()
    );
    sqlx::query_as(&sql).fetch_all(pool).await.unwrap()
}

/// Every row of a split table with all its columns (extra ones too), ordered by id.
async fn full_rows(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" AS t ORDER BY t.\"id\" COLLATE \"C\""))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The state of every split table.
async fn split_state(stack: &Stack) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for spec in &TABLES {
        out.push(full_rows(&stack.split(spec).await, spec.name).await);
    }
    out
}

/// Every index and constraint of the split databases' public schemas (the import rebuilds the
/// ones it drops for the load: they must all be back, unchanged).
async fn split_schema_objects(stack: &Stack) -> Vec<String> {
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
async fn legacy_checksums(legacy: &PgPool) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for spec in &TABLES {
        out.push(sqlx::query_as(&table_checksum_sql(spec)).fetch_one(legacy).await.unwrap());
    }
    out
}

fn failed_checks(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["detail"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn awkward_values_migrate_byte_for_byte_and_validate_clean() {
    let stack = Stack::new().await;
    let legacy = stack.legacy().await;
    seed_awkward_dataset(&legacy).await;
    let before = legacy_checksums(&legacy).await;
    let schema_before = split_schema_objects(&stack).await;

    let out = stack.mfe(&["--json", "migrate", "run"]);
    assert_ok(&out, "migrate run");
    let report = json(&out);
    assert_eq!(report["command"], "migrate run");
    assert_eq!(report["passed"], true, "{report}");
    let steps: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for step in [
        "backup",
        "schemas",
        "export",
        "import",
        "auth_db.users",
        "refs payments_db.payments.sender_id → auth_db.users",
    ] {
        assert!(steps.contains(&step), "step {step} missing from {steps:?}");
    }
    for line in ["export: 17 rows", "import: 17 rows", "validate: 17 rows", "rows/s"] {
        assert!(stderr(&out).contains(line), "stderr lacks `{line}`: {}", stderr(&out));
    }

    for spec in &TABLES {
        let split = stack.split(spec).await;
        let (l, s) = (rows_text(&legacy, spec).await, rows_text(&split, spec).await);
        assert!(!l.is_empty(), "{} has no rows in the dataset", spec.name);
        assert_eq!(l, s, "{} differs between legacy and split", spec.name);
    }
    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    let (amount, metadata): (String, String) =
        sqlx::query_as("SELECT amount::text, metadata::text FROM payments WHERE id = 'p-big'")
            .fetch_one(&payments)
            .await
            .unwrap();
    assert_eq!(amount, "12345678901234.5678");
    assert!(metadata.contains("😀") && metadata.contains("\"deep\": null"), "{metadata}");
    let profile = stack.pool("PROFILE_DATABASE_URL").await;
    let bio: String =
        sqlx::query_scalar("SELECT bio FROM user_profiles WHERE id = 'pr-big'").fetch_one(&profile).await.unwrap();
    assert_eq!(bio, megabyte_text());
    let auth = stack.pool("AUTH_DATABASE_URL").await;
    let name: String =
        sqlx::query_scalar("SELECT name FROM users WHERE id = 'u-quotes'").fetch_one(&auth).await.unwrap();
    assert_eq!(name, "tab\there\nnew line \\ back \"double\" 'single'");
    assert_eq!(split_schema_objects(&stack).await, schema_before, "indexes or constraints differ after the import");

    assert_eq!(legacy_checksums(&legacy).await, before, "the legacy database changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn running_migrate_run_twice_gives_the_same_result_as_once() {
    let stack = Stack::new().await;
    let legacy = stack.legacy().await;
    seed_awkward_dataset(&legacy).await;
    let before = legacy_checksums(&legacy).await;

    assert_ok(&stack.mfe(&["migrate", "run"]), "first migrate run");
    let once = split_state(&stack).await;
    let second = stack.mfe(&["--json", "migrate", "run"]);
    assert_ok(&second, "second migrate run");
    let report = json(&second);
    assert_eq!(report["passed"], true);
    assert_eq!(report["metrics"]["rows_inserted"], 0, "{report}");
    assert_eq!(split_state(&stack).await, once, "the second run changed the split databases");
    assert_eq!(legacy_checksums(&legacy).await, before, "the legacy database changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_one_row_in_a_split_database_fails_validate_naming_table_and_id() {
    let stack = Stack::new().await;
    seed_awkward_dataset(&stack.legacy().await).await;
    assert_ok(&stack.mfe(&["migrate", "export"]), "export");
    assert_ok(&stack.mfe(&["migrate", "import"]), "import");
    let clean = stack.mfe(&["--json", "migrate", "validate"]);
    assert_ok(&clean, "validate before tampering");

    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    sqlx::query("UPDATE payments SET amount = amount + 0.0001 WHERE id = 'p-small'").execute(&payments).await.unwrap();
    sqlx::query("DELETE FROM payment_transactions WHERE id = 't-2'").execute(&payments).await.unwrap();
    let admin = stack.pool("ADMIN_DATABASE_URL").await;
    sqlx::query("INSERT INTO audit_logs (id, user_id, action, created_at) VALUES ('a-forged', 'u-ghost', 'x', now())")
        .execute(&admin)
        .await
        .unwrap();

    let out = stack.mfe(&["--json", "migrate", "validate"]);
    assert_eq!(out.status.code(), Some(1), "validate must exit 1: {}", stderr(&out));
    let failed = failed_checks(&json(&out));
    let find = |name: &str| {
        failed
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("{name} not failed: {failed:?}"))
    };
    assert!(find("payments_db.payments").contains("1 changed row(s) (ids: p-small)"), "{failed:?}");
    assert!(find("payments_db.payment_transactions").contains("1 missing row(s) (ids: t-2)"), "{failed:?}");
    assert!(find("admin_db.audit_logs").contains("1 extra row(s) (ids: a-forged)"), "{failed:?}");
    assert!(find("refs admin_db.audit_logs.user_id → auth_db.users").contains("u-ghost"), "{failed:?}");
    assert_eq!(failed.len(), 4, "only the tampered tables fail: {failed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_or_truncated_export_file_is_refused_and_nothing_is_written() {
    let stack = Stack::new().await;
    seed_awkward_dataset(&stack.legacy().await).await;
    assert_ok(&stack.mfe(&["migrate", "export"]), "export");
    let before = split_state(&stack).await;

    let file = stack.export_dir().join("payments/payments.pgcopy");
    let pristine = std::fs::read(&file).unwrap();
    let mut altered = pristine.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    std::fs::write(&file, &altered).unwrap();
    let out = stack.mfe(&["migrate", "import"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("payments/payments.pgcopy") && err.contains("sha256") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    std::fs::write(&file, &pristine[..pristine.len() - 10]).unwrap();
    let err = stderr(&stack.mfe(&["migrate", "import"]));
    assert!(err.contains("payments/payments.pgcopy") && err.contains("truncated"), "{err}");

    std::fs::write(&file, &pristine).unwrap();
    std::fs::remove_file(stack.export_dir().join("profile/user_profiles.pgcopy")).unwrap();
    let err = stderr(&stack.mfe(&["migrate", "import"]));
    assert!(err.contains("profile/user_profiles.pgcopy is missing"), "{err}");

    assert_eq!(split_state(&stack).await, before, "a refused import wrote rows");
    for (var, _) in &DB_VARS[1..] {
        let pool = stack.pool(var).await;
        let bookkeeping: bool =
            sqlx::query_scalar("SELECT to_regnamespace('mfe_migration') IS NOT NULL").fetch_one(&pool).await.unwrap();
        assert!(!bookkeeping, "{var}: a refused import created its bookkeeping");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_midway_leaves_the_target_as_it_was() {
    let stack = Stack::new().await;
    let legacy = stack.legacy().await;
    seed_awkward_dataset(&legacy).await;
    // Enough rows that the COPY into payment_transactions lasts long enough to be seen and killed.
    sqlx::query(
        "INSERT INTO payment_transactions (id, payment_id, status, status_message, metadata, created_at) \
         SELECT 'bulk-' || g, 'p-big', 'processing', repeat('x', 200), '{\"n\": 1}', now() FROM generate_series(1, 600000) g",
    )
    .execute(&legacy)
    .await
    .unwrap();
    assert_ok(&stack.mfe(&["migrate", "export", "--service", "payments"]), "export");
    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    sqlx::query("INSERT INTO payments VALUES ('p-pre', 'u-x', NULL, 1, 'USD', 'pending', 'instant', NULL, NULL, NULL, now(), now(), NULL)")
        .execute(&payments)
        .await
        .unwrap();
    let before = split_state(&stack).await;

    let mut child = stack
        .command(&["migrate", "import", "--service", "payments"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let copying = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND query LIKE 'COPY \"payment_transactions\"%' AND state = 'active'";
    loop {
        let n: i64 = sqlx::query_scalar(copying).fetch_one(&payments).await.unwrap();
        if n > 0 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the import ended ({status}) before its COPY into payment_transactions was seen; make the table larger"
            );
        }
        assert!(Instant::now() < deadline, "no COPY into payment_transactions seen within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the import finished before the kill");

    // The server aborts the transaction once it notices the closed connection.
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND pid <> pg_backend_pid() AND xact_start IS NOT NULL";
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(others).fetch_one(&payments).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the killed import's session did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(split_state(&stack).await, before, "the killed import left rows behind");

    // And the same export imports cleanly afterwards.
    assert_ok(&stack.mfe(&["migrate", "import", "--service", "payments"]), "import after the kill");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_transactions").fetch_one(&payments).await.unwrap();
    assert_eq!(n, 600_002);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_failing_after_its_first_table_writes_nothing_of_that_service() {
    let stack = Stack::new().await;
    seed_awkward_dataset(&stack.legacy().await).await;
    assert_ok(&stack.mfe(&["migrate", "export"]), "export");
    let before = split_state(&stack).await;
    let out = stack
        .command(&["migrate", "import", "--service", "auth"])
        .env("MFE_MIGRATE_FAIL_AFTER_TABLE", "users")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing of auth_db was written"), "{}", stderr(&out));
    assert_eq!(split_state(&stack).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_removes_only_what_the_import_inserted() {
    let stack = Stack::new().await;
    let legacy = stack.legacy().await;
    seed_awkward_dataset(&legacy).await;
    let legacy_before = legacy_checksums(&legacy).await;
    // Rows already in the split databases: one unknown to legacy, one with an id legacy also
    // has (the import skips it, so rollback must keep it).
    let auth = stack.pool("AUTH_DATABASE_URL").await;
    sqlx::query(
        "INSERT INTO users VALUES ('u-local', 'local@example.com', 'h', 'Local', 'CUSTOMER', false, now(), now())",
    )
    .execute(&auth)
    .await
    .unwrap();
    sqlx::query("INSERT INTO users VALUES ('u-plain', 'plain@example.com', 'h', 'Already here', 'CUSTOMER', true, now(), now())")
        .execute(&auth)
        .await
        .unwrap();
    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    sqlx::query("INSERT INTO payments VALUES ('p-local', 'u-local', NULL, 5, 'USD', 'pending', 'instant', NULL, NULL, NULL, now(), now(), NULL)")
        .execute(&payments)
        .await
        .unwrap();
    let before = split_state(&stack).await;

    assert_ok(&stack.mfe(&["migrate", "export"]), "export");
    let imported = stack.mfe(&["--json", "migrate", "import"]);
    assert_ok(&imported, "import");
    let users: Vec<String> = sqlx::query_scalar("SELECT id FROM users ORDER BY id").fetch_all(&auth).await.unwrap();
    assert_eq!(users, ["u-emoji", "u-local", "u-plain", "u-quotes", "u-rtl"]);

    let out = stack.mfe(&["--json", "migrate", "rollback"]);
    assert_ok(&out, "rollback");
    assert_eq!(split_state(&stack).await, before, "rollback did not restore the pre-import state");
    // A second rollback has nothing left to do.
    assert_ok(&stack.mfe(&["migrate", "rollback"]), "second rollback");
    assert_eq!(split_state(&stack).await, before);
    assert_eq!(legacy_checksums(&legacy).await, legacy_before, "the legacy database changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_validation_in_run_rolls_back_that_runs_import() {
    let stack = Stack::new().await;
    seed_awkward_dataset(&stack.legacy().await).await;
    // A row in the split database that conflicts by id with different content: the import keeps
    // it, so validation reports it changed and run must undo everything else it inserted.
    let admin = stack.pool("ADMIN_DATABASE_URL").await;
    sqlx::query("INSERT INTO system_config VALUES ('c-2', 'limit', '7', NULL, now(), NULL)")
        .execute(&admin)
        .await
        .unwrap();
    let before = split_state(&stack).await;

    let out = stack.mfe(&["--json", "migrate", "run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&out);
    let failed = failed_checks(&report);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].0 == "admin_db.system_config" && failed[0].1.contains("ids: c-2"), "{failed:?}");
    assert!(stderr(&out).contains("rolling back"), "{}", stderr(&out));
    assert_eq!(split_state(&stack).await, before, "the failed run left its import behind");

    let kept = stack.mfe(&["--json", "migrate", "run", "--no-rollback"]);
    assert_eq!(kept.status.code(), Some(1));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs").fetch_one(&admin).await.unwrap();
    assert_eq!(n, 2, "--no-rollback keeps the imported rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_dataset_of_fixtures_load_migrates_and_validates_clean() {
    let stack = Stack::new().await;
    assert_ok(&stack.mfe(&["fixtures", "load"]), "fixtures load");
    let legacy = stack.legacy().await;
    let before = legacy_checksums(&legacy).await;
    let out = stack.mfe(&["--json", "migrate", "run"]);
    assert_ok(&out, "migrate run");
    assert_eq!(json(&out)["passed"], true);
    for spec in &TABLES {
        assert_eq!(rows_text(&legacy, spec).await, rows_text(&stack.split(spec).await, spec).await, "{}", spec.name);
    }
    assert_eq!(legacy_checksums(&legacy).await, before, "the legacy database changed");
}
