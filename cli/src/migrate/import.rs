//! `mfe migrate import`: the files of an export into the split databases.
//!
//! Order of work, so that a bad export never writes anything:
//! 1. read `manifest.json` and check every file's size and sha256;
//! 2. per service, in ONE transaction: take an advisory lock, create the bookkeeping tables if
//!    missing, and for each table in foreign-key order COPY the file in, recording which ids
//!    this import inserted ([`super::bookkeeping`]);
//! 3. commit. A failure or a kill anywhere in 2 rolls the whole service back.
//!
//! A table that is empty (checked under a lock that blocks concurrent writers) gets the COPY
//! straight into it; otherwise rows go through a temporary staging table and
//! `INSERT … ON CONFLICT (id) DO NOTHING`, so re-running an import adds nothing and fails nothing.

use super::manifest::{self, Manifest, TableEntry};
use super::progress::{Progress, StepStats};
use super::tables::{self, TableSpec};
use super::{bookkeeping, bulkload};
use crate::config::{Config, DbService};
use anyhow::Context;
use sqlx::{PgConnection, Postgres, Transaction};
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

/// What one table's import did.
#[derive(Debug, Clone, PartialEq)]
pub struct TableImport {
    pub label: String,
    pub rows_in_file: u64,
    pub rows_inserted: u64,
    pub bytes: u64,
    /// `direct` (empty table, COPY into it) or `staged` (COPY into staging, insert the new ids).
    pub mode: &'static str,
}

/// What one service's import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceImport {
    pub service: DbService,
    pub batch_id: Uuid,
    pub tables: Vec<TableImport>,
}

/// Everything an import did.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub services: Vec<ServiceImport>,
    pub stats: StepStats,
}

impl ImportOutcome {
    pub fn batch_ids(&self, db: DbService) -> Vec<Uuid> {
        self.services.iter().filter(|s| s.service == db).map(|s| s.batch_id).collect()
    }
}

/// Imports the services' tables from the export in `dir`.
pub async fn import(cfg: &Config, services: &[DbService], dir: &Path) -> anyhow::Result<ImportOutcome> {
    let started = Instant::now();
    let manifest = Manifest::read(dir)?;
    let mut wanted: Vec<TableEntry> = Vec::new();
    for spec in tables::tables_of(services) {
        let entry = manifest.entry(spec.name).with_context(|| {
            format!(
                "import refused: {} lists no `{}` table (exported with another --service?) — re-run `mfe migrate export`; nothing was written",
                Manifest::path(dir).display(),
                spec.name
            )
        })?;
        wanted.push(entry.clone());
    }
    manifest::verify_files(dir, &wanted).await?;

    let manifest_sha = super::checksum::file_sha256(&Manifest::path(dir))
        .with_context(|| format!("cannot read {}", Manifest::path(dir).display()))?
        .0;
    let total_bytes = wanted.iter().map(|e| e.bytes).sum();
    let progress = Progress::bytes("import", Some(total_bytes));
    let jobs = services.iter().map(|&db| import_service(cfg, db, dir, &manifest, &manifest_sha, &progress));
    let results = futures::future::join_all(jobs).await;
    progress.finish();
    let mut done = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(s) => done.push(s),
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = first_error {
        let committed: Vec<&str> = done.iter().map(|s| s.service.name()).collect();
        return Err(if committed.is_empty() {
            e
        } else {
            e.context(format!(
                "import failed (committed: {}; roll back with `mfe migrate rollback`)",
                committed.join(", ")
            ))
        });
    }
    let rows = done.iter().flat_map(|s| &s.tables).map(|t| t.rows_inserted).sum();
    let bytes = wanted.iter().map(|e| e.bytes).sum();
    Ok(ImportOutcome { services: done, stats: StepStats::new("import", rows, bytes, started) })
}

async fn import_service(
    cfg: &Config,
    db: DbService,
    dir: &Path,
    manifest: &Manifest,
    manifest_sha: &str,
    progress: &Progress,
) -> anyhow::Result<ServiceImport> {
    let label = db.component().name();
    let pool = super::split_pool(cfg, db).await?;
    let mut tx = pool.begin().await.with_context(|| format!("{label}: cannot start the import transaction"))?;
    bookkeeping::prepare(&mut tx, label).await?;
    let batch_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO mfe_migration.batches (batch_id, manifest_sha256, snapshot_time, tool_version) VALUES ($1, $2, $3, $4)",
    )
    .bind(batch_id)
    .bind(manifest_sha)
    .bind(&manifest.source.snapshot_time)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(&mut *tx)
    .await
    .with_context(|| format!("{label}: cannot record the import batch"))?;

    let mut done = Vec::new();
    for spec in tables::tables_of(&[db]) {
        let entry = manifest.entry(spec.name).expect("checked before the import started");
        let t = async {
            let t = import_table(&mut tx, spec, &dir.join(&entry.file), entry, batch_id, progress).await?;
            fail_point(spec.name)?;
            anyhow::Ok(t)
        }
        .await
        .with_context(|| format!("{label}: import of {} failed; nothing of {label} was written", spec.name))?;
        done.push(t);
    }
    tx.commit().await.with_context(|| format!("{label}: cannot commit the import"))?;
    pool.close().await;
    Ok(ServiceImport { service: db, batch_id, tables: done })
}

/// Tests prove atomicity by failing an import right after a given table (a kill is the other way).
fn fail_point(table: &str) -> anyhow::Result<()> {
    match std::env::var("MFE_MIGRATE_FAIL_AFTER_TABLE") {
        Ok(t) if t == table => anyhow::bail!("injected failure after {table} (MFE_MIGRATE_FAIL_AFTER_TABLE)"),
        _ => Ok(()),
    }
}

async fn import_table(
    tx: &mut Transaction<'static, Postgres>,
    spec: &'static TableSpec,
    path: &Path,
    entry: &TableEntry,
    batch_id: Uuid,
    progress: &Progress,
) -> anyhow::Result<TableImport> {
    let conn: &mut PgConnection = tx;
    // SHARE ROW EXCLUSIVE blocks concurrent inserts/updates/deletes until commit, so "empty"
    // stays true while we fill the table.
    sqlx::query(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", spec.ident())).execute(&mut *conn).await?;
    let (is_empty,): (bool,) =
        sqlx::query_as(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", spec.ident())).fetch_one(&mut *conn).await?;
    let cols = spec.column_list();
    let (target, mode) = if is_empty {
        (spec.ident(), "direct")
    } else {
        let stage = tables::quote_ident(&format!("mfe_stage_{}", spec.name));
        sqlx::query(&format!(
            "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
            spec.ident()
        ))
        .execute(&mut *conn)
        .await?;
        (stage, "staged")
    };

    // An empty table is loaded without its keys and indexes, rebuilt after the COPY.
    let dropped = if is_empty { Some(bulkload::drop_for_load(conn, spec).await?) } else { None };
    let mut file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
    let mut copy = conn.copy_in_raw(&format!("COPY {target} ({cols}) FROM STDIN (FORMAT binary)")).await?;
    // 1 MiB blocks: few file reads, few CopyData messages, flat memory.
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block).await.with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        copy.send(&block[..n]).await?;
        progress.inc(n as u64);
    }
    let n_copied = copy.finish().await?;
    if n_copied != entry.rows {
        anyhow::bail!("{} holds {n_copied} rows, the manifest says {}", path.display(), entry.rows);
    }

    if let Some(dropped) = dropped {
        dropped.restore(conn).await?;
    }
    let rows_inserted = if mode == "direct" {
        bookkeeping::record_all(conn, batch_id, spec).await?
    } else {
        bookkeeping::insert_new_and_record(conn, batch_id, spec, &target).await?
    };
    Ok(TableImport { label: spec.label(), rows_in_file: entry.rows, rows_inserted, bytes: entry.bytes, mode })
}
