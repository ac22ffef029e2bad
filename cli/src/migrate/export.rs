//! `mfe migrate export`: every legacy table of the chosen services, read from one snapshot,
//! streamed as binary COPY into `<out>/<service>/<table>.pgcopy`, then `manifest.json`.
//!
//! One coordinating REPEATABLE READ READ ONLY transaction exports its snapshot; a few workers
//! adopt it (`SET TRANSACTION SNAPSHOT`) and copy tables in parallel, so concurrent writes to the
//! legacy database cannot make the files disagree with each other. Each chunk is written, hashed
//! (sha256 of the file) and scanned (rows, content checksum) as it arrives: memory stays flat
//! whatever the table size.

use super::checksum::TupleScanner;
use super::manifest::{Manifest, Source, TableEntry, FORMAT};
use super::progress::{Progress, StepStats};
use super::tables::{self, TableSpec};
use crate::config::{Config, DbService};
use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgPool};
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Tables copied at once (each on its own connection sharing the snapshot).
const EXPORT_WORKERS: usize = 3;

/// The snapshot each exported table is read from.
#[derive(Debug, Clone, Copy)]
pub enum Snapshots<'a> {
    /// The export opens one REPEATABLE READ transaction, exports its snapshot and every table
    /// adopts it (the offline path).
    Own,
    /// Each service's tables adopt the snapshot given for that service, exported by someone who
    /// keeps it alive for the whole export (the online path: a replication slot's
    /// `EXPORT_SNAPSHOT`, one slot per service).
    PerService(&'a [(DbService, String)]),
}

/// Exports the tables of `services` into `out` from one snapshot of its own; returns the
/// manifest written and the step figures.
pub async fn export(cfg: &Config, services: &[DbService], out: &Path) -> anyhow::Result<(Manifest, StepStats)> {
    export_from(cfg, services, out, Snapshots::Own).await
}

/// Exports the tables of `services` into `out`, each read from the snapshot `snapshots` names.
pub async fn export_from(
    cfg: &Config,
    services: &[DbService],
    out: &Path,
    snapshots: Snapshots<'_>,
) -> anyhow::Result<(Manifest, StepStats)> {
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the export directory {}", out.display()))?;
    // An old manifest must not vouch for files this export is about to replace.
    let old_manifest = Manifest::path(out);
    if old_manifest.exists() {
        std::fs::remove_file(&old_manifest).with_context(|| format!("cannot remove {}", old_manifest.display()))?;
    }
    let legacy = super::legacy_pool(cfg).await?;
    let target = cfg.pg(DbService::Legacy)?;

    let mut coordinator = legacy.acquire().await.context("legacy_db: cannot open the snapshot connection")?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *coordinator)
        .await
        .context("legacy_db: cannot start the export transaction")?;
    let (own_snapshot, snapshot_time, server_version): (String, String, String) = sqlx::query_as(
        "SELECT pg_export_snapshot(), \
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                current_setting('server_version')",
    )
    .fetch_one(&mut *coordinator)
    .await
    .context("legacy_db: cannot export a snapshot")?;
    let snapshot_of = |db: DbService| -> anyhow::Result<String> {
        match snapshots {
            Snapshots::Own => Ok(own_snapshot.clone()),
            Snapshots::PerService(list) => list
                .iter()
                .find(|(s, _)| *s == db)
                .map(|(_, id)| id.clone())
                .with_context(|| format!("export: no snapshot given for {}", db.name())),
        }
    };

    let progress = Progress::bytes("export", None);
    let specs = tables::tables_of(services);
    let jobs =
        specs.iter().map(|&spec| snapshot_of(spec.service).map(|id| (spec, id))).collect::<anyhow::Result<Vec<_>>>()?;
    let mut entries: Vec<TableEntry> = futures::stream::iter(jobs)
        .map(|(spec, snapshot_id)| {
            let (legacy, out, progress) = (&legacy, out, &progress);
            async move { export_table(legacy, spec, &snapshot_id, out, progress).await }
        })
        .buffer_unordered(EXPORT_WORKERS)
        .try_collect()
        .await?;
    progress.finish();
    // The snapshot may go once every worker has its rows.
    sqlx::query("COMMIT").execute(&mut *coordinator).await.context("legacy_db: cannot end the export transaction")?;
    drop(coordinator);
    legacy.close().await;

    let snapshot_id = match snapshots {
        Snapshots::Own => own_snapshot,
        Snapshots::PerService(list) => {
            list.iter().map(|(db, id)| format!("{}={id}", db.name())).collect::<Vec<_>>().join(",")
        }
    };
    entries.sort_by_key(|e| tables::TABLES.iter().position(|t| t.name == e.table));
    let manifest = Manifest {
        format: FORMAT.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        source: Source {
            database: format!("{}/{}", target.addr(), target.database),
            server_version,
            snapshot_time,
            snapshot_id,
        },
        tables: entries,
    };
    manifest.write(out)?;
    let rows = manifest.tables.iter().map(|t| t.rows).sum();
    let bytes = manifest.tables.iter().map(|t| t.bytes).sum();
    Ok((manifest, StepStats::new("export", rows, bytes, started)))
}

/// Copies one table, inside the shared snapshot, into its file.
async fn export_table(
    legacy: &PgPool,
    spec: &'static TableSpec,
    snapshot_id: &str,
    out: &Path,
    progress: &Progress,
) -> anyhow::Result<TableEntry> {
    let rel = format!("{}/{}.pgcopy", spec.service.name(), spec.name);
    let path = out.join(&rel);
    let dir = path.parent().expect("a file inside a service directory");
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;

    let mut conn = legacy.acquire().await.context("legacy_db: cannot open an export connection")?;
    let mut tx = conn.begin().await.context("legacy_db: cannot start an export transaction")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot_id}'"))
        .execute(&mut *tx)
        .await
        .context("legacy_db: cannot adopt the export snapshot")?;

    let file = tokio::fs::File::create(&path).await.with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut sha = Sha256::new();
    let mut scanner = TupleScanner::new();
    let mut n_bytes = 0u64;
    let statement = format!("COPY {} ({}) TO STDOUT (FORMAT binary)", spec.ident(), spec.column_list());
    {
        let mut stream = tx.copy_out_raw(&statement).await.map_err(|e| copy_error(spec, &e))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| copy_error(spec, &e))?;
            sha.update(&chunk);
            scanner.feed(&chunk).map_err(|e| anyhow::anyhow!("legacy_db: export of {}: {e}", spec.name))?;
            writer.write_all(&chunk).await.with_context(|| format!("cannot write {}", path.display()))?;
            n_bytes += chunk.len() as u64;
            progress.inc(chunk.len() as u64);
        }
    }
    writer.flush().await.with_context(|| format!("cannot write {}", path.display()))?;
    tx.commit().await.context("legacy_db: cannot end an export transaction")?;
    if !scanner.finished() {
        bail!("legacy_db: export of {} ended before the end of the COPY stream — re-run the export", spec.name);
    }
    Ok(TableEntry {
        service: spec.service.name().into(),
        table: spec.name.into(),
        file: rel,
        copy_format: "binary".into(),
        columns: spec.columns.iter().map(|c| c.to_string()).collect(),
        rows: scanner.n_rows,
        bytes: n_bytes,
        sha256: hex::encode(sha.finalize()),
        content_checksum: scanner.content_checksum(),
    })
}

fn copy_error(spec: &TableSpec, e: &sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "legacy_db: cannot export {}: {} — does the legacy schema exist? try `mfe db migrate --service legacy`",
        spec.name,
        crate::pg::short_sqlx_error(e)
    )
}
