//! `mfe migrate import` killed with SIGKILL in the middle of a chunked import, then run again:
//! it resumes from its checkpoints and the split databases end exactly as after a clean import.
//!
//! Needs the test stack: `set -a; source test.env; set +a; mfe infra start` (or `make test`).

use crate::migrate_support::*;
use mfe::migrate::manifest::Manifest;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

/// The chunk of payment_transactions the first import is killed in (rows sent, not committed).
const KILLED_CHUNK: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_with_sigkill_inside_a_chunk_resumes_to_the_state_of_a_clean_import() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::new().await;
    // 2 000 users × 10 payments × 3 transactions: payment_transactions is about 9 MB of heap,
    // so 1 MB chunks cut it (and payments) into several files.
    assert_ok(
        &stack.mfe(&["fixtures", "generate", "--users", "2000", "--payments-per-user", "10"]),
        "fixtures generate",
    );
    assert_ok(&stack.mfe(&["migrate", "export", "--chunk-mb", "1"]), "export");
    let manifest = Manifest::read(&stack.export_dir()).unwrap();
    let n_chunks: usize = manifest.tables.iter().map(|t| t.chunks.len()).sum();
    let transaction_chunks = manifest.entry("payment_transactions").unwrap().chunks.len();
    assert!(transaction_chunks > KILLED_CHUNK + 1, "payment_transactions has only {transaction_chunks} chunks");
    let schema_before = split_schema_objects(&stack).await;
    let state_before = split_state(&stack).await;

    // The reference: the same export imported cleanly into databases of its own.
    let clean = Stack::new().await;
    let mut cmd = clean.command(&["migrate", "import", "--in"]);
    cmd.arg(stack.export_dir());
    let out = cmd.output().unwrap();
    assert_ok(&out, "clean import");
    let clean_state = split_state(&clean).await;

    // First import: held inside a chunk of payment_transactions (its rows sent, no commit), then
    // killed with SIGKILL while other chunks are in flight too.
    let mut child = stack
        .command(&["migrate", "import"])
        .env("MFE_MIGRATE_PAUSE_IN_CHUNK", format!("payment_transactions:{KILLED_CHUNK}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stderr_of_child = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr_of_child).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains("paused in chunk") => break,
            Ok(line) => seen.push(line),
            Err(e) => panic!("the import never reached chunk {KILLED_CHUNK} ({e}); it said: {seen:?}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    wait_for_other_transactions_to_end(&payments).await;

    let committed: Vec<(String, i32)> =
        sqlx::query_as("SELECT table_name, chunk FROM mfe_migration.chunks ORDER BY table_name, chunk")
            .fetch_all(&payments)
            .await
            .unwrap();
    assert!(!committed.is_empty(), "no chunk of payments_db committed before the kill");
    assert!(
        !committed.contains(&("payment_transactions".into(), KILLED_CHUNK as i32)),
        "the chunk held before its commit is recorded as committed: {committed:?}"
    );
    let n_payments_chunks = manifest.tables.iter().filter(|t| t.service == "payments").map(|t| t.chunks.len()).sum();
    assert!(committed.len() < n_payments_chunks, "every chunk committed before the kill: {committed:?}");
    let state: String =
        sqlx::query_scalar("SELECT state FROM mfe_migration.batches").fetch_one(&payments).await.unwrap();
    assert_eq!(state, "loading");
    assert_eq!(duplicates(&stack).await, Vec::<String>::new(), "the killed import left a row twice");

    // Second import, same export: resumes, skipping exactly the chunks that committed.
    let out = stack.mfe(&["--json", "migrate", "import"]);
    assert_ok(&out, "import run again after the kill");
    let report = json(&out);
    let skipped_in_payments: u64 = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("payments_db."))
        .map(|c| c["metrics"]["chunks_skipped"].as_u64().unwrap())
        .sum();
    assert_eq!(skipped_in_payments, committed.len() as u64, "{report}");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "payments_db: resumed batch {}",
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT batch_id FROM mfe_migration.batches")
                .fetch_one(&payments)
                .await
                .unwrap()
        )) && said.contains(&format!("{} of {n_payments_chunks} chunks skipped", committed.len())),
        "{said}"
    );
    let n_checkpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM mfe_migration.chunks").fetch_one(&payments).await.unwrap();
    assert_eq!(n_checkpoints as usize, n_payments_chunks, "one checkpoint per chunk");
    let state: String =
        sqlx::query_scalar("SELECT state FROM mfe_migration.batches").fetch_one(&payments).await.unwrap();
    assert_eq!(state, "complete");

    // The end state is the clean import's: rows, counts, checksums, keys and indexes.
    assert_eq!(split_state(&stack).await, clean_state, "the resumed import differs from a clean one");
    assert_eq!(duplicates(&stack).await, Vec::<String>::new());
    assert_eq!(split_schema_objects(&stack).await, schema_before, "indexes or constraints differ after the import");
    let out = stack.mfe(&["--json", "migrate", "validate"]);
    assert_ok(&out, "validate after the resumed import");
    assert_eq!(json(&out)["passed"], true);
    assert!(n_chunks > n_payments_chunks, "the other services were exported too");

    // And rollback removes exactly what the two runs inserted.
    assert_ok(&stack.mfe(&["migrate", "rollback"]), "rollback");
    assert_eq!(split_state(&stack).await, state_before);
    assert_eq!(split_schema_objects(&stack).await, schema_before);
}
