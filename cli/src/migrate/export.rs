//! `mfe migrate export`: every legacy table of the chosen services, read from one snapshot,
//! streamed as binary COPY into `<out>/<service>/<table>.pgcopy` — or, for a large table, into
//! chunk files `<table>.0000.pgcopy`, `<table>.0001.pgcopy`, ... — then `manifest.json`.
//!
//! One coordinating REPEATABLE READ READ ONLY transaction exports its snapshot; a few workers
//! adopt it (`SET TRANSACTION SNAPSHOT`) and copy in parallel, so concurrent writes to the
//! legacy database cannot make the files disagree with each other. Each file is written, hashed
//! (sha256) and scanned (rows, content checksum) as it streams: memory stays flat whatever the
//! table size.
//!
//! # Chunks
//! A table larger than the chunk size (`--chunk-mb`, [`DEFAULT_CHUNK_BYTES`]) is cut into ranges
//! of its heap pages, each read by `COPY (SELECT … WHERE ctid >= '(a,0)' AND ctid < '(b,0)')`,
//! which PostgreSQL ≥ 14 answers with a TID range scan: only those pages are read, no index, no
//! sort, and the ranges cover the table exactly once (the last one is open-ended, so pages
//! added after the size was read are covered too). Chunks are what lets the two cores work on
//! one big table at once — here and in the import — and what an import checkpoints: a killed
//! import re-copies at most the chunks it had in flight. Page ranges were chosen over id
//! ranges because ids are text: finding id quantiles costs a sorted pass over the table, a
//! page count costs nothing.

use super::checksum::TupleScanner;
use super::manifest::{ChunkEntry, Manifest, Source, TableEntry, FORMAT};
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

/// Files copied at once, each on its own connection sharing the snapshot. Three keep both cores
/// of the benchmark machine busy: the server's COPY and our hashing take turns on each stream.
const EXPORT_WORKERS: usize = 3;

/// Heap bytes per chunk file by default. 64 MB: about 420 000 rows of the generated
/// payment_transactions (46 MB per 300 000 rows), so the benchmark's 3 M-row table makes 8
/// chunks and its 1 M payments 6 — enough to share between workers and to resume from, each a
/// transaction of a few seconds on import, and a chunk's ids (kept for the rollback
/// bookkeeping) stay around 12 MB in memory.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 20;

/// The most chunks a table is cut into, whatever the chunk size asked for.
const MAX_CHUNKS: u64 = 4096;

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

/// How an export cuts tables into files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    /// Heap bytes per chunk file: a table larger than this is cut into several files.
    pub chunk_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { chunk_bytes: DEFAULT_CHUNK_BYTES }
    }
}

/// Exports the tables of `services` into `out` from one snapshot of its own; returns the
/// manifest written and the step figures.
pub async fn export(cfg: &Config, services: &[DbService], out: &Path) -> anyhow::Result<(Manifest, StepStats)> {
    export_with(cfg, services, out, Snapshots::Own, ExportOptions::default()).await
}

/// Exports the tables of `services` into `out`, each read from the snapshot `snapshots` names.
pub async fn export_from(
    cfg: &Config,
    services: &[DbService],
    out: &Path,
    snapshots: Snapshots<'_>,
) -> anyhow::Result<(Manifest, StepStats)> {
    export_with(cfg, services, out, snapshots, ExportOptions::default()).await
}

/// One file to write: a whole table, or a range of its heap pages.
#[derive(Debug, Clone)]
struct ChunkJob {
    spec: &'static TableSpec,
    index: usize,
    n_chunks: usize,
    first_page: u64,
    end_page: Option<u64>,
    snapshot_id: String,
}

impl ChunkJob {
    /// `payments/payments.pgcopy` for a table in one file, `payments/payments.0003.pgcopy` for
    /// its fourth chunk otherwise.
    fn file(&self) -> String {
        if self.n_chunks == 1 {
            format!("{}/{}.pgcopy", self.spec.service.name(), self.spec.name)
        } else {
            format!("{}/{}.{:04}.pgcopy", self.spec.service.name(), self.spec.name, self.index)
        }
    }

    fn statement(&self) -> String {
        let (table, cols) = (self.spec.ident(), self.spec.column_list());
        if self.n_chunks == 1 {
            return format!("COPY {table} ({cols}) TO STDOUT (FORMAT binary)");
        }
        let mut range = format!("ctid >= '({},0)'::tid", self.first_page);
        if let Some(end) = self.end_page {
            range.push_str(&format!(" AND ctid < '({end},0)'::tid"));
        }
        format!("COPY (SELECT {cols} FROM {table} WHERE {range}) TO STDOUT (FORMAT binary)")
    }
}

/// Exports the tables of `services` into `out`, each read from the snapshot `snapshots` names,
/// cut into chunks as `options` says.
pub async fn export_with(
    cfg: &Config,
    services: &[DbService],
    out: &Path,
    snapshots: Snapshots<'_>,
    options: ExportOptions,
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
    let (own_snapshot, snapshot_time, server_version, version_num): (String, String, String, i32) = sqlx::query_as(
        "SELECT pg_export_snapshot(), \
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                current_setting('server_version'), current_setting('server_version_num')::int4",
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

    // Plan the files: a table's size in pages decides its chunks. The size is read outside any
    // snapshot (it is not transactional), which is why the last range is open-ended.
    let chunk_pages = (options.chunk_bytes / 8192).max(1);
    let mut jobs = Vec::new();
    for spec in tables::tables_of(services) {
        let snapshot_id = snapshot_of(spec.service)?;
        let pages = table_pages(&mut coordinator, spec).await?;
        // TID range scans arrived in PostgreSQL 14; an older server reads each table whole.
        let n_chunks = if version_num >= 140_000 { pages.div_ceil(chunk_pages).clamp(1, MAX_CHUNKS) } else { 1 };
        let per_chunk = pages.div_ceil(n_chunks).max(1);
        for index in 0..n_chunks {
            let end_page = if index + 1 == n_chunks { None } else { Some((index + 1) * per_chunk) };
            jobs.push((
                pages,
                ChunkJob {
                    spec,
                    index: index as usize,
                    n_chunks: n_chunks as usize,
                    first_page: index * per_chunk,
                    end_page,
                    snapshot_id: snapshot_id.clone(),
                },
            ));
        }
        remove_stale_files(out, spec)?;
    }
    // The chunks of the largest tables first, so no big file starts last and runs alone.
    jobs.sort_by_key(|(pages, job)| (std::cmp::Reverse(*pages), job.spec.name, job.index));

    let progress = Progress::bytes("export", None);
    let mut written: Vec<(ChunkJob, ChunkEntry, u64)> = futures::stream::iter(jobs.into_iter().map(|(_, job)| job))
        .map(|job| {
            let (legacy, progress) = (&legacy, &progress);
            async move {
                let (entry, sum) = export_chunk(legacy, &job, out, progress).await?;
                anyhow::Ok((job, entry, sum))
            }
        })
        .buffer_unordered(EXPORT_WORKERS)
        .try_collect()
        .await?;
    progress.finish();
    // The snapshot may go once every worker has its rows.
    sqlx::query("COMMIT").execute(&mut *coordinator).await.context("legacy_db: cannot end the export transaction")?;
    drop(coordinator);
    legacy.close().await;

    written.sort_by_key(|(job, _, _)| (tables::TABLES.iter().position(|t| t.name == job.spec.name), job.index));
    let mut entries: Vec<TableEntry> = Vec::new();
    let mut sums: Vec<u64> = Vec::new();
    for (job, chunk, sum) in written {
        if entries.last().map(|e| e.table.as_str()) != Some(job.spec.name) {
            entries.push(TableEntry {
                service: job.spec.service.name().into(),
                table: job.spec.name.into(),
                copy_format: "binary".into(),
                columns: job.spec.columns.iter().map(|c| c.to_string()).collect(),
                rows: 0,
                bytes: 0,
                content_checksum: String::new(),
                chunks: Vec::new(),
            });
            sums.push(0);
        }
        let entry = entries.last_mut().expect("pushed above");
        let total = sums.last_mut().expect("pushed above");
        entry.rows += chunk.rows;
        entry.bytes += chunk.bytes;
        *total = total.wrapping_add(sum);
        entry.chunks.push(chunk);
    }
    for (entry, sum) in entries.iter_mut().zip(sums) {
        entry.content_checksum = format!("{sum:016x}");
    }

    let snapshot_id = match snapshots {
        Snapshots::Own => own_snapshot,
        Snapshots::PerService(list) => {
            list.iter().map(|(db, id)| format!("{}={id}", db.name())).collect::<Vec<_>>().join(",")
        }
    };
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

/// The table's size in heap pages.
async fn table_pages(conn: &mut sqlx::PgConnection, spec: &TableSpec) -> anyhow::Result<u64> {
    let pages: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int8 FROM pg_class c \
         WHERE c.oid = to_regclass($1)",
    )
    .bind(spec.ident())
    .fetch_optional(&mut *conn)
    .await
    .with_context(|| format!("legacy_db: cannot read the size of {}", spec.name))?
    .ok_or_else(|| {
        anyhow::anyhow!(
            "legacy_db: cannot export {}: the table does not exist — does the legacy schema exist? try `mfe db migrate --service legacy`",
            spec.name
        )
    })?;
    Ok(pages.max(0) as u64)
}

/// Removes the files an earlier export wrote for `spec` (its chunking may have been another).
fn remove_stale_files(out: &Path, spec: &TableSpec) -> anyhow::Result<()> {
    let dir = out.join(spec.service.name());
    let Ok(listing) = std::fs::read_dir(&dir) else { return Ok(()) };
    for item in listing.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(spec.name).and_then(|r| r.strip_suffix(".pgcopy")) else { continue };
        let is_chunk = rest.is_empty()
            || (rest.len() == 5 && rest.starts_with('.') && rest[1..].bytes().all(|b| b.is_ascii_digit()));
        if is_chunk {
            std::fs::remove_file(item.path()).with_context(|| format!("cannot remove {}", item.path().display()))?;
        }
    }
    Ok(())
}

/// Copies one chunk, inside the shared snapshot, into its file; returns its entry and its
/// content sum.
async fn export_chunk(
    legacy: &PgPool,
    job: &ChunkJob,
    out: &Path,
    progress: &Progress,
) -> anyhow::Result<(ChunkEntry, u64)> {
    let spec = job.spec;
    let rel = job.file();
    let path = out.join(&rel);
    let dir = path.parent().expect("a file inside a service directory");
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;

    let mut conn = legacy.acquire().await.context("legacy_db: cannot open an export connection")?;
    let mut tx = conn.begin().await.context("legacy_db: cannot start an export transaction")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{}'", job.snapshot_id))
        .execute(&mut *tx)
        .await
        .context("legacy_db: cannot adopt the export snapshot")?;

    let file = tokio::fs::File::create(&path).await.with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut sha = Sha256::new();
    let mut scanner = TupleScanner::new();
    let mut n_bytes = 0u64;
    {
        let mut stream = tx.copy_out_raw(&job.statement()).await.map_err(|e| copy_error(spec, &e))?;
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
    let entry = ChunkEntry {
        file: rel,
        first_page: job.first_page,
        end_page: job.end_page,
        rows: scanner.n_rows,
        bytes: n_bytes,
        sha256: hex::encode(sha.finalize()),
        content_checksum: scanner.content_checksum(),
    };
    Ok((entry, scanner.content_sum))
}

fn copy_error(spec: &TableSpec, e: &sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "legacy_db: cannot export {}: {} — does the legacy schema exist? try `mfe db migrate --service legacy`",
        spec.name,
        crate::pg::short_sqlx_error(e)
    )
}
