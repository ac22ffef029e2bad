//! `mfe migrate` end to end: the built binary against fresh databases (named by a UUID) on each
//! PostgreSQL server of the test stack — never the shared default database names.
//!
//! Needs the test stack: `set -a; source test.env; set +a; mfe infra start` (or `make test`).

use crate::migrate_support::*;
use mfe::migrate::tables::TABLES;
use sqlx::postgres::PgPool;
use std::process::Stdio;
use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread")]
async fn awkward_values_migrate_byte_for_byte_and_validate_clean() {
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
async fn an_import_killed_midway_is_undone_by_rollback_and_the_same_export_then_imports_cleanly() {
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let schema_before = split_schema_objects(&stack).await;

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
    wait_for_other_transactions_to_end(&payments).await;
    // The load dropped the table's keys and indexes; the killed import could not rebuild them.
    assert_ne!(split_schema_objects(&stack).await, schema_before, "the killed import rebuilt its indexes?");

    // Rollback removes what the killed import committed and rebuilds what it dropped.
    let out = stack.mfe(&["--json", "migrate", "rollback", "--service", "payments"]);
    assert_ok(&out, "rollback after the kill");
    assert!(json(&out)["checks"][0]["detail"].as_str().unwrap().contains("rebuilt"), "{}", json(&out));
    assert_eq!(split_state(&stack).await, before, "rollback left rows of the killed import behind");
    assert_eq!(split_schema_objects(&stack).await, schema_before, "rollback did not rebuild the dropped indexes");

    // And the same export imports cleanly afterwards.
    assert_ok(&stack.mfe(&["migrate", "import", "--service", "payments"]), "import after the kill");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_transactions").fetch_one(&payments).await.unwrap();
    assert_eq!(n, 600_002);
    assert_eq!(duplicates(&stack).await, Vec::<String>::new());
    assert_eq!(split_schema_objects(&stack).await, schema_before, "indexes or constraints differ after the import");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_failing_after_its_first_table_says_how_to_finish_and_running_it_again_completes_it() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new().await;
    let legacy = stack.legacy().await;
    seed_awkward_dataset(&legacy).await;
    assert_ok(&stack.mfe(&["migrate", "export"]), "export");
    let before = split_state(&stack).await;
    let schema_before = split_schema_objects(&stack).await;
    let out = stack
        .command(&["migrate", "import", "--service", "auth"])
        .env("MFE_MIGRATE_FAIL_AFTER_TABLE", "users")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for part in [
        "auth_db: import incomplete",
        "run `mfe migrate import --in migration-data` again to resume it",
        "`mfe migrate rollback --service auth` to undo it",
        "injected failure after users",
    ] {
        assert!(err.contains(part), "stderr lacks `{part}`: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    // Run again: the chunks that committed are skipped, the rest goes in, the keys come back.
    let out = stack.mfe(&["--json", "migrate", "import", "--service", "auth"]);
    assert_ok(&out, "import run again");
    let report = json(&out);
    let users = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "auth_db.users").unwrap();
    assert_eq!(users["metrics"]["chunks_skipped"], 1, "{report}");
    assert!(users["detail"].as_str().unwrap().contains("skipped: committed by an earlier run"), "{report}");
    assert!(stderr(&out).contains("auth_db: resumed batch"), "{}", stderr(&out));
    for spec in TABLES.iter().filter(|t| t.service.name() == "auth") {
        assert_eq!(rows_text(&legacy, spec).await, rows_text(&stack.split(spec).await, spec).await, "{}", spec.name);
    }
    assert_eq!(duplicates(&stack).await, Vec::<String>::new());
    assert_eq!(split_schema_objects(&stack).await, schema_before, "indexes or constraints differ after the import");

    // A third run of the same export finds every chunk in and inserts nothing.
    let out = stack.mfe(&["--json", "migrate", "import", "--service", "auth"]);
    assert_ok(&out, "import of a complete export");
    assert!(stderr(&out).contains("2 of 2 chunks skipped"), "{}", stderr(&out));
    assert_eq!(json(&out)["checks"][0]["metrics"]["rows_inserted"], 0);

    // Rollback returns everything to the state before the first import.
    assert_ok(&stack.mfe(&["migrate", "rollback"]), "rollback");
    assert_eq!(split_state(&stack).await, before);
    assert_eq!(split_schema_objects(&stack).await, schema_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_removes_only_what_the_import_inserted() {
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
