//! `mfe fixtures` end to end: the sample dataset and the generator, each on a fresh legacy
//! database named by a UUID, through the built binary.

use crate::db_support::{self, TestDbs};
use sqlx::PgPool;

const LEGACY_TABLES: [&str; 7] =
    ["users", "refresh_tokens", "payments", "payment_transactions", "audit_logs", "system_config", "user_profiles"];

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A digest of every legacy table's full contents, to compare two loads.
async fn digest(pool: &PgPool) -> Vec<(String, i64, Option<String>)> {
    let mut out = Vec::new();
    for table in LEGACY_TABLES {
        let q = format!("SELECT count(*), md5(string_agg(t::text, '|' ORDER BY id)) FROM \"{table}\" t");
        let (n, sum): (i64, Option<String>) = sqlx::query_as(&q).fetch_one(pool).await.unwrap();
        out.push((table.to_string(), n, sum));
    }
    out
}

#[tokio::test]
async fn loading_the_sample_fills_every_legacy_table_and_awkward_values_survive() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    // The legacy schema is not migrated yet: load does it.
    dbs.mfe_ok(&["fixtures", "load"]);
    let pool = dbs.pool("legacy").await;
    for table in LEGACY_TABLES {
        assert!(count(&pool, &format!("SELECT count(*) FROM \"{table}\"")).await > 0, "{table} is empty");
    }
    assert_eq!(count(&pool, "SELECT count(DISTINCT role) FROM users").await, 3, "every role");
    assert_eq!(count(&pool, "SELECT count(DISTINCT (status, type)) FROM payments").await, 15, "every status × type");
    assert_eq!(count(&pool, "SELECT count(DISTINCT status) FROM payment_transactions").await, 5);
    assert!(count(&pool, "SELECT count(*) FROM payments WHERE recipient_id IS NULL").await > 0, "NULLs");

    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM users").fetch_all(&pool).await.unwrap();
    for expected in [
        "😀 Emoji Person 🎉",
        "山田 太郎",
        "محمد الأحمد",
        "Tab\tSeparated Name",
        "Line\nBreak Name",
        "Back\\slash C:\\Users\\bob",
        "Root \"Admin\" O'Neil",
        "Vendor\r\nWith CRLF",
    ] {
        assert!(names.iter().any(|n| n == expected), "name {expected:?} did not round-trip");
    }
    let amount: String = sqlx::query_scalar("SELECT max(amount)::text FROM payments").fetch_one(&pool).await.unwrap();
    assert_eq!(amount, "999999999999999.9999");
    assert!(count(&pool, "SELECT count(*) FROM payments WHERE amount = 0.0001").await > 0);
    let nested: String =
        sqlx::query_scalar("SELECT metadata #>> '{nested,a,b,c,2,d}' FROM payments WHERE metadata ? 'nested' LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(nested, "true");
    let escaped: String =
        sqlx::query_scalar("SELECT metadata ->> 'escaped' FROM payments WHERE metadata ? 'escaped' LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(escaped, "tab\there \"quote\" back\\slash\nnewline");
    // The ~1 MiB text generated from its marker at load time.
    assert_eq!(count(&pool, "SELECT max(octet_length(bio))::bigint FROM user_profiles").await, 1_048_576);
    let ms: String = sqlx::query_scalar("SELECT to_char(created_at, 'MS') FROM users ORDER BY id LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ms.len(), 3);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users LIMIT 1").fetch_one(&pool).await.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    pool.close().await;
    dbs.drop_all().await;
}

#[tokio::test]
async fn loading_the_sample_twice_gives_the_same_database() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    dbs.mfe_ok(&["fixtures", "load", "--dataset", "sample"]);
    let pool = dbs.pool("legacy").await;
    let first = digest(&pool).await;
    dbs.mfe_ok(&["fixtures", "load", "--dataset", crate::repo_root().join("fixtures/sample").to_str().unwrap()]);
    assert_eq!(digest(&pool).await, first);
    pool.close().await;
    dbs.drop_all().await;
}

#[tokio::test]
async fn a_dataset_with_a_missing_column_is_refused_and_nothing_changes() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    dbs.mfe_ok(&["fixtures", "load"]);
    let pool = dbs.pool("legacy").await;
    let before = digest(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.jsonl"), "{\"id\": \"u1\", \"email\": \"a@b.c\"}\n").unwrap();
    let out = dbs.mfe(&["fixtures", "load", "--dataset", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("users.jsonl line 1: column `password_hash` is missing"), "{stderr}");
    assert_eq!(digest(&pool).await, before);
    pool.close().await;
    dbs.drop_all().await;
}

#[tokio::test]
async fn generate_writes_the_requested_counts_as_a_consistent_dataset() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dbs = TestDbs::new().await;
    let args = ["fixtures", "generate", "--users", "50", "--payments-per-user", "4", "--transactions-per-payment", "3"];
    let out = dbs.mfe_ok(&[&args[..], &["--seed", "7", "--json"]].concat());
    let report = db_support::json_report(&out);
    assert_eq!(report["metrics"]["rows"], 50 * 4 + 50 * 4 * 3 + 50 * 4 + 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rows/s"));
    let pool = dbs.pool("legacy").await;
    for (table, n) in [
        ("users", 50),
        ("refresh_tokens", 50),
        ("payments", 200),
        ("payment_transactions", 600),
        ("audit_logs", 50),
        ("system_config", 4),
        ("user_profiles", 50),
    ] {
        assert_eq!(count(&pool, &format!("SELECT count(*) FROM \"{table}\"")).await, n, "{table}");
    }
    // Consistent although foreign-key triggers may be skipped during the load.
    let orphans = "SELECT (SELECT count(*) FROM payments p LEFT JOIN users u ON u.id = p.sender_id WHERE u.id IS NULL)
        + (SELECT count(*) FROM payments p LEFT JOIN users u ON u.id = p.recipient_id
           WHERE p.recipient_id IS NOT NULL AND u.id IS NULL)
        + (SELECT count(*) FROM payment_transactions t LEFT JOIN payments p ON p.id = t.payment_id WHERE p.id IS NULL)
        + (SELECT count(*) FROM user_profiles x LEFT JOIN users u ON u.id = x.user_id WHERE u.id IS NULL)";
    assert_eq!(count(&pool, orphans).await, 0, "dangling references");
    let last_status_differs = "SELECT count(*) FROM payments p WHERE p.status <> (SELECT t.status FROM
        payment_transactions t WHERE t.payment_id = p.id ORDER BY t.created_at DESC, t.id LIMIT 1)";
    assert_eq!(count(&pool, last_status_differs).await, 0, "a payment's last transaction carries its status");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM payments WHERE (status = 'completed') <> (completed_at IS NOT NULL)").await,
        0
    );

    // The same seed gives the same rows.
    let first = digest(&pool).await;
    dbs.mfe_ok(&[&args[..], &["--seed", "7"]].concat());
    assert_eq!(digest(&pool).await, first);
    pool.close().await;
    dbs.drop_all().await;
}
