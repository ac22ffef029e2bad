//! `mfe db` end to end against the test stack's PostgreSQL servers: every test migrates fresh
//! databases named by a UUID, through the built binary, and inspects them with SQL.

use crate::db_support::{self, json_report, TestDbs};
use sqlx::PgPool;
use std::collections::BTreeSet;

/// One column as information_schema describes it, in a form easy to compare and to read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Col {
    name: String,
    ty: String,
    nullable: bool,
    default: Option<String>,
}

/// name, data_type, udt_name, is_nullable, default, numeric precision, scale, datetime precision.
type ColumnRow = (String, String, String, String, Option<String>, Option<i32>, Option<i32>, Option<i32>);

async fn columns(pool: &PgPool, table: &str) -> Vec<Col> {
    let rows: Vec<ColumnRow> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, udt_name::text, is_nullable::text, column_default::text,
                    numeric_precision::int, numeric_scale::int, datetime_precision::int
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1
             ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(name, data_type, udt, nullable, default, prec, scale, dt_prec)| Col {
            name,
            ty: match data_type.as_str() {
                "USER-DEFINED" => udt,
                "numeric" => format!("numeric({},{})", prec.unwrap_or(0), scale.unwrap_or(0)),
                "timestamp without time zone" => format!("timestamp({})", dt_prec.unwrap_or(-1)),
                _ => data_type,
            },
            nullable: nullable == "YES",
            default,
        })
        .collect()
}

fn col(spec: &str) -> Col {
    // "name type [null] [= default]"
    let (head, default) = match spec.split_once(" = ") {
        Some((h, d)) => (h, Some(d.to_string())),
        None => (spec, None),
    };
    let parts: Vec<&str> = head.split_whitespace().collect();
    Col { name: parts[0].into(), ty: parts[1].into(), nullable: parts.get(2) == Some(&"null"), default }
}

const NOW: &str = "CURRENT_TIMESTAMP";

/// SPEC §5, column for column (Prisma defaults: created_at = CURRENT_TIMESTAMP, updated_at none).
fn spec_section_5() -> Vec<(&'static str, Vec<Col>)> {
    let ts = |n: &str| col(&format!("{n} timestamp(3) = {NOW}"));
    vec![
        (
            "users",
            vec![
                col("id text"),
                col("email text"),
                col("password_hash text"),
                col("name text"),
                col("role Role = 'CUSTOMER'::\"Role\""),
                col("email_verified boolean = false"),
                ts("created_at"),
                col("updated_at timestamp(3)"),
            ],
        ),
        (
            "refresh_tokens",
            vec![
                col("id text"),
                col("user_id text"),
                col("token text"),
                col("expires_at timestamp(3)"),
                ts("created_at"),
            ],
        ),
        (
            "payments",
            vec![
                col("id text"),
                col("sender_id text"),
                col("recipient_id text null"),
                col("amount numeric(19,4)"),
                col("currency text = 'USD'::text"),
                col("status PaymentStatus = 'pending'::\"PaymentStatus\""),
                col("type PaymentType = 'instant'::\"PaymentType\""),
                col("description text null"),
                col("psp_transaction_id text null"),
                col("metadata jsonb null"),
                ts("created_at"),
                col("updated_at timestamp(3)"),
                col("completed_at timestamp(3) null"),
            ],
        ),
        (
            "payment_transactions",
            vec![
                col("id text"),
                col("payment_id text"),
                col("status PaymentStatus"),
                col("status_message text null"),
                col("psp_transaction_id text null"),
                col("metadata jsonb null"),
                ts("created_at"),
            ],
        ),
        (
            "audit_logs",
            vec![
                col("id text"),
                col("user_id text null"),
                col("action text"),
                col("resource_type text null"),
                col("resource_id text null"),
                col("details jsonb null"),
                col("ip_address text null"),
                col("user_agent text null"),
                ts("created_at"),
            ],
        ),
        (
            "system_config",
            vec![
                col("id text"),
                col("key text"),
                col("value jsonb"),
                col("description text null"),
                col("updated_at timestamp(3)"),
                col("updated_by text null"),
            ],
        ),
        (
            "user_profiles",
            vec![
                col("id text"),
                col("user_id text"),
                col("avatar_url text null"),
                col("phone text null"),
                col("address text null"),
                col("bio text null"),
                col("preferences jsonb null"),
                ts("created_at"),
                col("updated_at timestamp(3)"),
            ],
        ),
    ]
}

async fn foreign_keys(pool: &PgPool) -> BTreeSet<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(t, def)| format!("{t}: {def}")).collect()
}

async fn unique_columns(pool: &PgPool) -> BTreeSet<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indrelid::regclass::text, string_agg(a.attname::text, ',' ORDER BY a.attnum)
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.indisunique AND n.nspname = 'public' AND c.relname <> '_sqlx_migrations'
         GROUP BY i.indexrelid, i.indrelid",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(t, c)| format!("{t}({c})")).collect()
}

async fn enum_labels(pool: &PgPool) -> BTreeSet<String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT t.typname::text, string_agg(e.enumlabel::text, ',' ORDER BY e.enumsortorder)
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(t, l)| format!("{t}: {l}")).collect()
}

async fn tables(pool: &PgPool) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_legacy_schema_matches_spec_section_5_column_for_column() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    dbs.mfe_ok(&["db", "migrate", "--service", "legacy"]);
    let pool = dbs.pool("legacy").await;
    for (table, expected) in spec_section_5() {
        assert_eq!(columns(&pool, table).await, expected, "columns of legacy {table}");
    }
    assert_eq!(
        enum_labels(&pool).await,
        set(&[
            "PaymentStatus: pending,processing,completed,failed,cancelled",
            "PaymentType: instant,scheduled,recurring",
            "Role: ADMIN,CUSTOMER,VENDOR",
        ])
    );
    assert_eq!(
        foreign_keys(&pool).await,
        set(&[
            "audit_logs: FOREIGN KEY (user_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL",
            "payment_transactions: FOREIGN KEY (payment_id) REFERENCES payments(id) ON UPDATE CASCADE ON DELETE CASCADE",
            "payments: FOREIGN KEY (recipient_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL",
            "payments: FOREIGN KEY (sender_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE RESTRICT",
            "refresh_tokens: FOREIGN KEY (user_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE",
            "system_config: FOREIGN KEY (updated_by) REFERENCES users(id) ON UPDATE CASCADE ON DELETE SET NULL",
            "user_profiles: FOREIGN KEY (user_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE",
        ])
    );
    let uniques = unique_columns(&pool).await;
    for u in ["users(email)", "refresh_tokens(token)", "system_config(key)", "user_profiles(user_id)", "payments(id)"] {
        assert!(uniques.contains(u), "missing unique {u} in {uniques:?}");
    }
    pool.close().await;
    dbs.drop_all().await;
}

#[tokio::test]
async fn split_tables_carry_the_legacy_columns_in_the_same_order_without_cross_service_keys() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    dbs.mfe_ok(&["db", "migrate", "--service", "all"]);
    let legacy = dbs.pool("legacy").await;
    let carried = [
        ("auth", vec!["users", "refresh_tokens"]),
        ("payments", vec!["payments", "payment_transactions"]),
        ("admin", vec!["audit_logs", "system_config"]),
        ("profile", vec!["user_profiles"]),
    ];
    for (service, service_tables) in &carried {
        let pool = dbs.pool(service).await;
        for table in service_tables {
            let legacy_cols = columns(&legacy, table).await;
            let split_cols = columns(&pool, table).await;
            assert!(split_cols.len() >= legacy_cols.len(), "{service}.{table} lost columns");
            assert_eq!(&split_cols[..legacy_cols.len()], legacy_cols.as_slice(), "{service}.{table} vs legacy");
            // Anything added after the legacy columns must not stop a plain COPY of legacy rows.
            for extra in &split_cols[legacy_cols.len()..] {
                assert!(extra.nullable || extra.default.is_some(), "{service}.{table}.{} needs a value", extra.name);
            }
        }
        let all = tables(&pool).await;
        for t in ["event_outbox", "processed_events", "_sqlx_migrations"] {
            assert!(all.contains(t), "{service} lacks {t} (event hub migration read through the symlink?)");
        }
        pool.close().await;
    }
    let auth = dbs.pool("auth").await;
    let extra: Vec<String> = columns(&auth, "refresh_tokens").await.into_iter().skip(5).map(|c| c.name).collect();
    assert_eq!(extra, ["family_id", "rotated_at", "revoked_at", "device_id"]);
    assert!(tables(&auth).await.contains("devices"));
    assert_eq!(
        foreign_keys(&auth).await,
        set(&[
            "devices: FOREIGN KEY (user_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE",
            "refresh_tokens: FOREIGN KEY (user_id) REFERENCES users(id) ON UPDATE CASCADE ON DELETE CASCADE",
        ])
    );
    assert_eq!(enum_labels(&auth).await, set(&["Role: ADMIN,CUSTOMER,VENDOR"]));
    let payments = dbs.pool("payments").await;
    assert_eq!(
        foreign_keys(&payments).await,
        set(&["payment_transactions: FOREIGN KEY (payment_id) REFERENCES payments(id) ON UPDATE CASCADE ON DELETE CASCADE"])
    );
    for service in ["admin", "profile"] {
        let pool = dbs.pool(service).await;
        assert!(foreign_keys(&pool).await.is_empty(), "{service} has foreign keys");
        pool.close().await;
    }
    for p in [legacy, auth, payments] {
        p.close().await;
    }
    dbs.drop_all().await;
}

fn status_checks(dbs: &TestDbs, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["db", "status", "--json"];
    full.extend_from_slice(args);
    json_report(&dbs.mfe(&full))
}

#[tokio::test]
async fn every_service_migrates_reverts_and_migrates_again() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    let out = dbs.mfe_ok(&["db", "migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("payments: applied 20261125000001 payments schema"), "{stderr}");
    let status = status_checks(&dbs, &[]);
    assert_eq!(status["passed"], true, "{status}");
    let names: Vec<&str> = status["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["auth", "payments", "admin", "profile"]);
    // The default selection leaves the legacy database alone.
    assert_eq!(status_checks(&dbs, &["--service", "legacy"])["checks"][0]["metrics"]["applied"], 0);

    // Reverting the latest migration leaves exactly that one pending.
    let out = dbs.mfe_ok(&["db", "revert", "--service", "payments"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("payments: reverted 20261125000002 event hub"));
    let status = status_checks(&dbs, &["--service", "payments"]);
    assert_eq!(status["passed"], false);
    assert_eq!(status["checks"][0]["metrics"]["pending"], 1);
    assert_eq!(status["checks"][0]["metrics"]["last_version"], 20261125000001i64);

    // Every service down to nothing and back up.
    dbs.mfe_ok(&["db", "migrate", "--service", "legacy"]);
    for (service, _) in db_support::SERVICES {
        dbs.mfe_ok(&["db", "revert", "--service", service, "--all"]);
        let pool = dbs.pool(service).await;
        assert_eq!(tables(&pool).await, set(&["_sqlx_migrations"]), "{service} after revert --all");
        let left: Vec<String> =
            sqlx::query_scalar("SELECT typname::text FROM pg_type WHERE typtype = 'e'").fetch_all(&pool).await.unwrap();
        assert!(left.is_empty(), "{service} kept enum types {left:?}");
        pool.close().await;
    }
    dbs.mfe_ok(&["db", "migrate", "--service", "all"]);
    let status = status_checks(&dbs, &["--service", "all"]);
    assert_eq!(status["passed"], true, "{status}");
    // checks[0] is auth: every migration of its directory is applied again.
    let n_auth = std::fs::read_dir(crate::repo_root().join("migrations/auth"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".up.sql"))
        .count();
    assert_eq!(status["checks"][0]["name"], "auth");
    assert_eq!(status["checks"][0]["metrics"]["applied"], n_auth);
    dbs.drop_all().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // fs::copy follows the event-hub symlinks: the copy holds plain files.
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_migration_edited_after_it_was_applied_is_reported_and_nothing_runs() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let mut dbs = TestDbs::new().await;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&crate::repo_root().join("migrations"), dir.path());
    dbs.migrations_dir = Some(dir.path().to_path_buf());
    dbs.mfe_ok(&["db", "migrate"]);

    // auth gets a new migration (it would run first), payments an edited, applied one.
    std::fs::write(dir.path().join("auth/20261126000001_new_table.up.sql"), "CREATE TABLE late_table (id int);")
        .unwrap();
    std::fs::write(dir.path().join("auth/20261126000001_new_table.down.sql"), "DROP TABLE late_table;").unwrap();
    let edited = dir.path().join("payments/20261125000001_payments_schema.up.sql");
    let sql = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, format!("{sql}\n-- edited after it was applied\n")).unwrap();

    let out = dbs.mfe(&["db", "migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("payments: migration 20261125000001 was changed after it was applied (checksum mismatch)"),
        "{stderr}"
    );
    let auth = dbs.pool("auth").await;
    assert!(!tables(&auth).await.contains("late_table"), "auth ran a migration although payments was refused");
    auth.close().await;

    let status = status_checks(&dbs, &[]);
    assert_eq!(status["passed"], false);
    let payments = &status["checks"][1];
    assert_eq!(payments["metrics"]["checksum_ok"], false, "{status}");
    assert!(payments["detail"].as_str().unwrap().contains("changed after applying: 20261125000001"));
    dbs.drop_all().await;
}

#[tokio::test]
async fn two_concurrent_migrate_runs_apply_every_migration_exactly_once() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    let a = dbs.command(&["db", "migrate", "--service", "all"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let b = dbs.command(&["db", "migrate", "--service", "all"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "first run: {}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "second run: {}", String::from_utf8_lossy(&b.stderr));
    // Between them the two runs applied each migration once.
    let both = format!("{}{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert_eq!(both.matches("auth: applied 20261125000001").count(), 1, "{both}");
    let status = status_checks(&dbs, &["--service", "all"]);
    assert_eq!(status["passed"], true, "{status}");
    for (service, _) in db_support::SERVICES {
        let pool = dbs.pool(service).await;
        let (rows, distinct, failed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT version), count(*) FILTER (WHERE NOT success) FROM _sqlx_migrations",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((rows, failed), (distinct, 0), "{service}");
        pool.close().await;
    }
    dbs.drop_all().await;
}

#[test]
fn a_bad_database_url_fails_with_one_clear_line_and_exit_1() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let run = |url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mfe"))
            .args(["db", "migrate", "--service", "payments"])
            .env("MFE_ROOT", crate::repo_root())
            .env("PAYMENTS_DATABASE_URL", url)
            .output()
            .unwrap()
    };
    // Port 1 on loopback: nothing listens there.
    let refused = run("postgres://postgres:postgres@127.0.0.1:1/payments_db");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // The pool reports a refused connection as refused, or as a timeout after its retries.
    assert!(stderr.starts_with("error: payments_db at 127.0.0.1:1: "), "{stderr}");
    assert!(stderr.contains("— is the infrastructure running? try `mfe infra start`"), "{stderr}");
    let garbage = run("not a url");
    let stderr = String::from_utf8_lossy(&garbage.stderr);
    assert_eq!(garbage.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("PAYMENTS_DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn a_backup_of_the_legacy_database_restores_into_a_fresh_database() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    dbs.mfe_ok(&["fixtures", "load"]);
    let out_dir = tempfile::tempdir().unwrap();
    let out = dbs.mfe_ok(&["db", "backup", "--out", out_dir.path().to_str().unwrap(), "--json"]);
    let info = json_report(&out);
    let path = std::path::PathBuf::from(info["path"].as_str().unwrap());
    assert!(path.starts_with(out_dir.path()) && path.is_file(), "{info}");
    assert_eq!(info["bytes"].as_u64().unwrap(), std::fs::metadata(&path).unwrap().len());

    let restored_url = mfe_testkit::db::fresh_database_of("LEGACY_DATABASE_URL").await;
    let target = mfe::config::PgTarget::parse("restore", &restored_url).unwrap();
    let pg_restore =
        mfe::db::find_pg_tool("pg_restore").expect("pg_restore is installed (apt-get install postgresql-client)");
    let restore = std::process::Command::new(pg_restore)
        .args(["--no-owner", "--exit-on-error", "-h", &target.host, "-p", &target.port.to_string(), "-U", &target.user])
        .args(["-d", &target.database])
        .arg(&path)
        .env("PGPASSWORD", &target.password)
        .output()
        .unwrap();
    assert!(restore.status.success(), "pg_restore: {}", String::from_utf8_lossy(&restore.stderr));
    let original = dbs.pool("legacy").await;
    let restored = PgPool::connect(&restored_url).await.unwrap();
    for table in ["users", "payments", "payment_transactions", "audit_logs", "system_config", "user_profiles"] {
        let q = format!("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM \"{table}\" t");
        let a: (i64, Option<String>) = sqlx::query_as(&q).fetch_one(&original).await.unwrap();
        let b: (i64, Option<String>) = sqlx::query_as(&q).fetch_one(&restored).await.unwrap();
        assert!(a.0 > 0, "{table} is empty");
        assert_eq!(a, b, "{table} differs after restore");
    }
    original.close().await;
    restored.close().await;
    mfe_testkit::drop_database(&restored_url).await;
    dbs.drop_all().await;
}
