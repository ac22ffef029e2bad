//! `mfe migrate import`: the chunk files of an export into the split databases, services side
//! by side and the chunks of each service on a few connections at once, each chunk committed
//! with its checkpoint — so an import killed half-way is run again and goes on from there.
//!
//! Order of work, so that a bad export never writes anything:
//! 1. read `manifest.json` and check every file's size and sha256 (nothing is written before);
//! 2. per service, holding the migration lock for the whole run ([`bookkeeping`]): find the
//!    batch of the same manifest (by its sha256) and go on with it — an unfinished one resumes,
//!    a complete one has every chunk in already — or start a batch;
//! 3. decide once per table how it loads, and record it: an EMPTY table is loaded `direct` —
//!    its keys, indexes and foreign keys dropped first ([`bulkload`]), the drops recorded in the
//!    same transaction — while a table holding rows already is loaded `staged`: each chunk is
//!    copied into a temporary table and `INSERT … ON CONFLICT (id) DO NOTHING` adds the new ids;
//! 4. load the chunks not yet committed, each in ONE transaction holding its rows, the ids it
//!    inserted (`imported_ids`, for rollback) and its checkpoint row — a chunk is in with its
//!    checkpoint or not at all, so no row is ever copied twice;
//! 5. rebuild what was dropped (indexes in parallel, then keys, then foreign keys), each
//!    statement committed with the deletion of its record;
//! 6. mark the batch complete. Only then is the service's import reported done.
//!
//! # Atomicity, resume, rollback
//! A service's rows are no longer visible all at once (SPEC §6 once said "each service's import
//! is atomic"): chunks become visible as they commit. What holds instead: a failed or killed
//! import leaves a batch in state `loading` whose every committed chunk is recorded; running
//! `mfe migrate import` again with the same export skips those chunks, loads the rest and
//! rebuilds what is still dropped; `mfe migrate rollback` instead deletes the rows the batch
//! inserted and rebuilds what it dropped. Either returns the database to a clean state, and the
//! error line of a failed import says which to run. An import of ANOTHER export finding an
//! unfinished batch first rebuilds that batch's indexes and marks it `superseded` (its rows stay,
//! recorded, so rollback still removes them), then loads `staged` on top of it.
//!
//! # Why drop the indexes and rebuild at the end
//! Measured on 100 000 payments + 300 000 transactions (`mfe fixtures generate --users 10000`,
//! `--chunk-mb 8`, 3 workers, release build, the shared 2-core machine): loading the chunks
//! unindexed and building each index once from sorted input took 4.0 and 5.5 s for the whole
//! import; loading them into the indexed tables took 8.2 and 10.1 s — twice as long already,
//! and the gap grows with the table (random inserts into a 3 M-entry text index no longer fit
//! the 128 MB of shared buffers). Keeping the indexes would have made every chunk transaction
//! independent of any recorded state; the price of the faster way is the `dropped` records and
//! the rule that a direct-loaded table has no keys until the import (or a rollback) finishes —
//! the split services must not write to it meanwhile (the migration runs before they start;
//! a duplicate written meanwhile makes the key rebuild fail, loudly).
//!
//! A table's indexes are built as soon as its last chunk is in, while the next table's chunks
//! still load (`Schedule`): 2.6–3.1 s for the import above, against 3.3–5.6 s with a separate
//! rebuild phase after all chunks. The ids a direct load records for rollback are read from the
//! chunk file as it streams to the server (the first field of every tuple), so no chunk ever
//! scans the table it loads into.

use super::checksum::TupleScanner;
use super::manifest::{self, ChunkEntry, Manifest, TableEntry};
use super::progress::{say, Progress, StepStats};
use super::tables::{self, TableSpec};
use super::{bookkeeping, bulkload};
use crate::config::{Config, DbService};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use sqlx::{PgConnection, PgPool};
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

/// Chunks loaded at once per service. The split pool holds 4 connections, one of which keeps the
/// migration lock; three COPY streams keep the two cores of the benchmark machine busy.
pub const IMPORT_WORKERS: usize = 3;

/// How an import runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Chunks loaded at once per service (1 to [`IMPORT_WORKERS`]).
    pub workers: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { workers: IMPORT_WORKERS }
    }
}

/// How a table is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// The table was empty: COPY straight into it, keys and indexes dropped until the end.
    Direct,
    /// The table held rows: COPY into a temporary table, insert the ids not there yet.
    Staged,
}

impl LoadMode {
    pub fn name(self) -> &'static str {
        match self {
            LoadMode::Direct => "direct",
            LoadMode::Staged => "staged",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "direct" {
            LoadMode::Direct
        } else {
            LoadMode::Staged
        }
    }
}

/// What one table's import did.
#[derive(Debug, Clone, PartialEq)]
pub struct TableImport {
    pub label: String,
    pub rows_in_file: u64,
    /// Rows this run inserted (chunks committed by an earlier run not counted).
    pub rows_inserted: u64,
    pub bytes: u64,
    /// `direct` (empty table, COPY into it) or `staged` (COPY into staging, insert the new ids).
    pub mode: &'static str,
    pub n_chunks: usize,
    /// Chunks an earlier, interrupted run of the same export had committed.
    pub chunks_skipped: usize,
    /// Rows those chunks had inserted.
    pub rows_skipped: u64,
}

impl TableImport {
    /// `1000 of 1000 rows inserted (direct)`, plus the chunks a resumed import skipped.
    pub fn detail(&self) -> String {
        let mut s = format!("{} of {} rows inserted ({}", self.rows_inserted, self.rows_in_file, self.mode);
        if self.n_chunks > 1 {
            s.push_str(&format!(", {} chunks", self.n_chunks));
        }
        if self.chunks_skipped > 0 {
            s.push_str(&format!(
                "; {} chunk(s) with {} rows skipped: committed by an earlier run",
                self.chunks_skipped, self.rows_skipped
            ));
        }
        s.push(')');
        s
    }
}

/// What one service's import did.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceImport {
    pub service: DbService,
    pub batch_id: Uuid,
    /// True when an earlier run of the same export had started this batch (and maybe finished it:
    /// then every chunk is skipped).
    pub resumed: bool,
    pub tables: Vec<TableImport>,
}

/// Everything an import did.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    pub services: Vec<ServiceImport>,
    pub stats: StepStats,
}

impl ImportOutcome {
    /// Chunks skipped because an earlier run had committed them.
    pub fn chunks_skipped(&self) -> usize {
        self.services.iter().flat_map(|s| &s.tables).map(|t| t.chunks_skipped).sum()
    }
}

/// Imports the services' tables from the export in `dir`.
pub async fn import(cfg: &Config, services: &[DbService], dir: &Path) -> anyhow::Result<ImportOutcome> {
    import_with(cfg, services, dir, ImportOptions::default()).await
}

/// Imports the services' tables from the export in `dir`, as `options` says.
pub async fn import_with(
    cfg: &Config,
    services: &[DbService],
    dir: &Path,
    options: ImportOptions,
) -> anyhow::Result<ImportOutcome> {
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
    let workers = options.workers.clamp(1, IMPORT_WORKERS);
    let run = Run { dir, manifest: &manifest, manifest_sha: &manifest_sha, progress: &progress, workers };
    let jobs = services.iter().map(|&db| import_service(cfg, db, &run));
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
        let complete: Vec<&str> = done.iter().map(|s| s.service.component().name()).collect();
        return Err(if complete.is_empty() {
            e
        } else {
            e.context(format!("import failed (complete: {})", complete.join(", ")))
        });
    }
    for s in done.iter().filter(|s| s.resumed) {
        let skipped: usize = s.tables.iter().map(|t| t.chunks_skipped).sum();
        let total: usize = s.tables.iter().map(|t| t.n_chunks).sum();
        say(&format!(
            "{}: resumed batch {}: {skipped} of {total} chunks skipped (committed by an earlier run)",
            s.service.component().name(),
            s.batch_id
        ));
    }
    let rows = done.iter().flat_map(|s| &s.tables).map(|t| t.rows_inserted).sum();
    let bytes = wanted.iter().map(|e| e.bytes).sum();
    Ok(ImportOutcome { services: done, stats: StepStats::new("import", rows, bytes, started) })
}

/// What every service's import shares.
struct Run<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    manifest_sha: &'a str,
    progress: &'a Progress,
    workers: usize,
}

async fn import_service(cfg: &Config, db: DbService, run: &Run<'_>) -> anyhow::Result<ServiceImport> {
    let label = db.component().name();
    let pool = super::split_pool(cfg, db).await?;
    let mut coordinator =
        pool.acquire().await.with_context(|| format!("{label}: cannot open the import connection"))?;
    bookkeeping::lock_session(&mut coordinator, label).await?;
    let mut state = ServiceState::default();
    let result = import_locked(&pool, &mut coordinator, db, run, &mut state).await;
    // The lock is the session's: give it back before the connection returns to the pool.
    let _ = sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *coordinator).await;
    drop(coordinator);
    pool.close().await;
    result.map_err(|e| match state.batch_id {
        None => e.context(format!("{label}: import failed; nothing of {label} was written")),
        Some(batch) => e.context(format!(
            "{label}: import incomplete ({} of {} chunks in, batch {batch}) — run `mfe migrate import --in {}` again to resume it, or `mfe migrate rollback --service {}` to undo it",
            state.n_committed,
            state.n_chunks,
            run.dir.display(),
            db.name()
        )),
    })
}

/// Where a service's import got to, for its error line.
#[derive(Debug, Default)]
struct ServiceState {
    /// Set once the batch exists (from then on the database may hold some of its rows).
    batch_id: Option<Uuid>,
    n_chunks: usize,
    n_committed: usize,
}

/// One chunk file to load.
struct ChunkJob<'a> {
    spec: &'static TableSpec,
    index: usize,
    chunk: &'a ChunkEntry,
    mode: LoadMode,
}

async fn import_locked(
    pool: &PgPool,
    coordinator: &mut PgConnection,
    db: DbService,
    run: &Run<'_>,
    state: &mut ServiceState,
) -> anyhow::Result<ServiceImport> {
    let label = db.component().name();
    bookkeeping::prepare(coordinator, label).await?;
    let (batch_id, resumed) = match bookkeeping::batch_of_manifest(coordinator, run.manifest_sha).await? {
        Some(id) => (id, true),
        None => {
            for other in bookkeeping::open_batches(coordinator).await? {
                say(&format!(
                    "{label}: an unfinished import of another export (batch {}, started {} UTC) is superseded: rebuilding its indexes; its rows stay and `mfe migrate rollback` removes them",
                    other.batch_id, other.imported_at
                ));
                rebuild_dropped(pool, coordinator, &[other.batch_id], run.workers).await.with_context(|| {
                    format!("{label}: cannot rebuild what the unfinished import {} dropped", other.batch_id)
                })?;
                bookkeeping::set_state(coordinator, other.batch_id, "superseded").await?;
            }
            let id = bookkeeping::begin_batch(coordinator, run.manifest_sha, &run.manifest.source.snapshot_time)
                .await
                .with_context(|| format!("{label}: cannot record the import batch"))?;
            (id, false)
        }
    };
    state.batch_id = Some(batch_id);
    let committed = bookkeeping::committed_chunks(coordinator, batch_id).await?;

    // How each table loads: decided once per batch, in foreign-key order.
    let mut plans = Vec::new();
    for spec in tables::tables_of(&[db]) {
        let entry = run.manifest.entry(spec.name).expect("checked before the import started");
        let mode = match bookkeeping::load_mode(coordinator, batch_id, spec).await? {
            Some(m) => LoadMode::parse(&m),
            None => decide_mode(pool, batch_id, spec)
                .await
                .with_context(|| format!("{label}: cannot prepare the load of {}", spec.name))?,
        };
        plans.push((spec, entry, mode));
    }

    let mut tables_done: Vec<TableImport> = Vec::new();
    let mut jobs_by_table: Vec<Vec<ChunkJob>> = Vec::new();
    for (spec, entry, mode) in &plans {
        let mut t = TableImport {
            label: spec.label(),
            rows_in_file: entry.rows,
            rows_inserted: 0,
            bytes: entry.bytes,
            mode: mode.name(),
            n_chunks: entry.chunks.len(),
            chunks_skipped: 0,
            rows_skipped: 0,
        };
        let mut jobs = Vec::new();
        for (index, chunk) in entry.chunks.iter().enumerate() {
            match committed.get(&(spec.name.to_string(), index as i32)) {
                Some(&n) => {
                    t.chunks_skipped += 1;
                    t.rows_skipped += n;
                    run.progress.inc(chunk.bytes);
                }
                None => jobs.push(ChunkJob { spec, index, chunk, mode: *mode }),
            }
        }
        state.n_chunks += t.n_chunks;
        state.n_committed += t.chunks_skipped;
        tables_done.push(t);
        jobs_by_table.push(jobs);
    }

    let pending = bookkeeping::pending_rebuilds(coordinator, &[batch_id]).await?;
    let all_direct = plans.iter().all(|(_, _, m)| *m == LoadMode::Direct);
    let mut schedule = Schedule::new(&plans, jobs_by_table, &pending, all_direct);
    let started = Instant::now();
    let (n_to_load, n_rebuilds) = (schedule.n_chunks(), pending.len());
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        while running.len() < run.workers {
            let Some(job) = schedule.next() else { break };
            running.push(async move {
                let done = match &job {
                    Job::Chunk(c) => import_chunk(pool, batch_id, c, run)
                        .await
                        .with_context(|| format!("{label}: import of {} chunk {} failed", c.spec.name, c.index))?,
                    Job::Rebuild(_, p) => {
                        rebuild_one(pool, p).await.with_context(|| format!("{label}: import of {}", p.table_name))?;
                        0
                    }
                };
                anyhow::Ok((job, done))
            });
        }
        let Some(result) = running.next().await else { break };
        let (job, n) = result?;
        if let Job::Chunk(c) = &job {
            state.n_committed += 1;
            let t = tables_done.iter_mut().find(|t| t.label == c.spec.label()).expect("every table");
            t.rows_inserted += n;
        }
        if let Some(table) = schedule.done(&job) {
            fail_point(table).with_context(|| format!("{label}: import of {table} failed"))?;
        }
    }
    say(&format!(
        "{label}: {n_to_load} chunk(s) loaded and {n_rebuilds} key(s)/index(es) rebuilt in {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    bookkeeping::set_state(coordinator, batch_id, "complete")
        .await
        .with_context(|| format!("{label}: cannot mark the import complete"))?;
    Ok(ServiceImport { service: db, batch_id, resumed, tables: tables_done })
}

/// A unit of work of a service's import, on one connection.
enum Job<'a> {
    Chunk(ChunkJob<'a>),
    /// A rebuild of what the load of table number `.0` dropped.
    Rebuild(usize, &'a bookkeeping::PendingRebuild),
}

/// What may run next in a service's import. A table's indexes are built as soon as its last
/// chunk is in — while the chunks of the next table still load, so the two cores stay busy to
/// the end instead of idling through a separate rebuild phase — then its keys over them; the
/// foreign keys, which read two tables, wait for everything else.
struct Schedule<'a> {
    tables: Vec<TableWork<'a>>,
    foreign_keys: std::collections::VecDeque<&'a bookkeeping::PendingRebuild>,
    foreign_key_running: bool,
    /// Every table direct: no foreign key is in force during the load, so the chunks of all
    /// tables may go at once. A staged table keeps its foreign keys, so then the tables load one
    /// after the other in foreign-key order (each one's chunks still in parallel).
    all_direct: bool,
}

struct TableWork<'a> {
    name: &'static str,
    chunks: std::collections::VecDeque<ChunkJob<'a>>,
    /// Chunks not yet committed (queued or running).
    chunks_left: usize,
    indexes: std::collections::VecDeque<&'a bookkeeping::PendingRebuild>,
    indexes_left: usize,
    keys: std::collections::VecDeque<&'a bookkeeping::PendingRebuild>,
    keys_left: usize,
}

impl TableWork<'_> {
    fn finished(&self) -> bool {
        self.chunks_left == 0 && self.indexes_left == 0 && self.keys_left == 0
    }
}

impl<'a> Schedule<'a> {
    fn new(
        plans: &[(&'static TableSpec, &TableEntry, LoadMode)],
        chunks: Vec<Vec<ChunkJob<'a>>>,
        pending: &'a [bookkeeping::PendingRebuild],
        all_direct: bool,
    ) -> Self {
        let mut tables: Vec<TableWork> = plans
            .iter()
            .zip(chunks)
            .map(|((spec, _, _), chunks)| TableWork {
                name: spec.name,
                chunks_left: chunks.len(),
                chunks: chunks.into(),
                indexes: Default::default(),
                indexes_left: 0,
                keys: Default::default(),
                keys_left: 0,
            })
            .collect();
        let mut foreign_keys = std::collections::VecDeque::new();
        for p in pending {
            let table = tables.iter_mut().find(|t| t.name == p.table_name);
            match (p.rebuild.phase, table) {
                (bulkload::Phase::Index, Some(t)) => {
                    t.indexes.push_back(p);
                    t.indexes_left += 1;
                }
                (bulkload::Phase::Key, Some(t)) => {
                    t.keys.push_back(p);
                    t.keys_left += 1;
                }
                _ => foreign_keys.push_back(p),
            }
        }
        Self { tables, foreign_keys, foreign_key_running: false, all_direct }
    }

    fn n_chunks(&self) -> usize {
        self.tables.iter().map(|t| t.chunks.len()).sum()
    }

    /// The next job that may start, if any may now.
    fn next(&mut self) -> Option<Job<'a>> {
        for (i, t) in self.tables.iter_mut().enumerate() {
            if t.chunks_left > 0 {
                continue;
            }
            if let Some(p) = t.indexes.pop_front() {
                return Some(Job::Rebuild(i, p));
            }
            if t.indexes_left == 0 {
                if let Some(p) = t.keys.pop_front() {
                    return Some(Job::Rebuild(i, p));
                }
            }
        }
        for i in 0..self.tables.len() {
            let earlier_loaded = self.tables[..i].iter().all(|t| t.chunks_left == 0);
            if self.all_direct || earlier_loaded {
                if let Some(c) = self.tables[i].chunks.pop_front() {
                    return Some(Job::Chunk(c));
                }
            }
        }
        if !self.foreign_key_running && self.tables.iter().all(TableWork::finished) {
            if let Some(p) = self.foreign_keys.pop_front() {
                self.foreign_key_running = true;
                return Some(Job::Rebuild(usize::MAX, p));
            }
        }
        None
    }

    /// Records a job as done; returns the table whose last chunk it was, if it was.
    fn done(&mut self, job: &Job) -> Option<&'static str> {
        match job {
            Job::Chunk(c) => {
                let t = self.tables.iter_mut().find(|t| t.name == c.spec.name).expect("every table");
                t.chunks_left -= 1;
                (t.chunks_left == 0).then_some(t.name)
            }
            Job::Rebuild(i, p) => {
                match (p.rebuild.phase, self.tables.get_mut(*i)) {
                    (bulkload::Phase::Index, Some(t)) => t.indexes_left -= 1,
                    (bulkload::Phase::Key, Some(t)) => t.keys_left -= 1,
                    _ => self.foreign_key_running = false,
                }
                None
            }
        }
    }
}

/// Decides how a table loads for this batch and records it: under a lock that blocks writers,
/// an empty table gets its keys and indexes dropped (direct); any other is staged.
async fn decide_mode(pool: &PgPool, batch_id: Uuid, spec: &'static TableSpec) -> anyhow::Result<LoadMode> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", spec.ident())).execute(&mut *tx).await?;
    let (is_empty,): (bool,) =
        sqlx::query_as(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", spec.ident())).fetch_one(&mut *tx).await?;
    let (mode, dropped) = if is_empty {
        (LoadMode::Direct, bulkload::drop_for_load(&mut tx, spec).await?)
    } else {
        (LoadMode::Staged, Vec::new())
    };
    bookkeeping::record_load(&mut tx, batch_id, spec, mode.name(), &dropped).await?;
    tx.commit().await?;
    Ok(mode)
}

/// Loads one chunk in one transaction with its ids and checkpoint; returns the rows inserted.
async fn import_chunk(pool: &PgPool, batch_id: Uuid, job: &ChunkJob<'_>, run: &Run<'_>) -> anyhow::Result<u64> {
    let spec = job.spec;
    let path = run.dir.join(&job.chunk.file);
    let mut tx = pool.begin().await?;
    // A commit lost to a server crash loses the checkpoint with the rows (one WAL record
    // stream), so the chunk is simply loaded again: the wait for the WAL flush buys nothing.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    bookkeeping::lock_chunk(&mut tx).await?;
    let cols = spec.column_list();
    let target = match job.mode {
        LoadMode::Direct => spec.ident(),
        LoadMode::Staged => {
            let stage = tables::quote_ident(&format!("mfe_stage_{}", spec.name));
            sqlx::query(&format!(
                "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
                spec.ident()
            ))
            .execute(&mut *tx)
            .await?;
            stage
        }
    };

    let mut file = tokio::fs::File::open(&path).await.with_context(|| format!("cannot open {}", path.display()))?;
    // The ids of a direct load come from the file as it streams by: every row of it goes in.
    let mut scanner = if job.mode == LoadMode::Direct {
        TupleScanner::capturing_ids_for(job.chunk.rows)
    } else {
        TupleScanner::new()
    };
    let mut copy = tx.copy_in_raw(&format!("COPY {target} ({cols}) FROM STDIN (FORMAT binary)")).await?;
    // 1 MiB blocks: few file reads, few CopyData messages, flat memory.
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block).await.with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        if job.mode == LoadMode::Direct {
            scanner.feed(&block[..n]).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        copy.send(&block[..n]).await?;
        run.progress.inc(n as u64);
    }
    let n_copied = copy.finish().await?;
    if n_copied != job.chunk.rows {
        anyhow::bail!("{} holds {n_copied} rows, the manifest says {}", path.display(), job.chunk.rows);
    }
    let rows_inserted = match job.mode {
        LoadMode::Direct => {
            let ids = scanner.take_ids();
            if ids.len() as u64 != n_copied {
                anyhow::bail!("{}: {} ids read for {n_copied} rows copied", path.display(), ids.len());
            }
            bookkeeping::record_ids(&mut tx, batch_id, spec, &ids)
                .await
                .with_context(|| format!("{}: cannot record the ids it inserted", path.display()))?
        }
        LoadMode::Staged => bookkeeping::insert_new_and_record(&mut tx, batch_id, spec, &target).await?,
    };
    bookkeeping::record_chunk(&mut tx, batch_id, spec, job.index, job.chunk.rows, rows_inserted).await?;
    pause_point(spec.name, job.index).await;
    tx.commit().await?;
    Ok(rows_inserted)
}

/// Runs the rebuilds `batches` still have pending: every index at once (up to `workers`), then
/// the keys over them, then the foreign keys one by one; each in its own transaction with the
/// deletion of its record.
pub(crate) async fn rebuild_dropped(
    pool: &PgPool,
    coordinator: &mut PgConnection,
    batches: &[Uuid],
    workers: usize,
) -> anyhow::Result<usize> {
    let pending = bookkeeping::pending_rebuilds(coordinator, batches).await?;
    for phase in [bulkload::Phase::Index, bulkload::Phase::Key, bulkload::Phase::ForeignKey] {
        let width = if phase == bulkload::Phase::ForeignKey { 1 } else { workers };
        futures::stream::iter(pending.iter().filter(|p| p.rebuild.phase == phase))
            .map(|p| rebuild_one(pool, p))
            .buffer_unordered(width)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(pending.len())
}

/// Runs one rebuild in its own transaction with the deletion of its record.
async fn rebuild_one(pool: &PgPool, pending: &bookkeeping::PendingRebuild) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    bulkload::rebuild(&mut tx, &pending.rebuild).await?;
    bookkeeping::rebuilt(&mut tx, pending).await?;
    tx.commit().await?;
    Ok(())
}

/// Tests fail an import right after a given table's last chunk is in (a kill is the other way).
fn fail_point(table: &str) -> anyhow::Result<()> {
    match mfe_core::env::lookup("MFE_MIGRATE_FAIL_AFTER_TABLE") {
        Some(t) if t == table => anyhow::bail!("injected failure after {table} (MFE_MIGRATE_FAIL_AFTER_TABLE)"),
        _ => Ok(()),
    }
}

/// Tests hold an import inside chunk `k` of a table, rows sent but not committed, to kill it
/// there: `MFE_MIGRATE_PAUSE_IN_CHUNK=<table>:<k>` prints one line and waits (at most 10 min).
async fn pause_point(table: &str, index: usize) {
    let Some(v) = mfe_core::env::lookup("MFE_MIGRATE_PAUSE_IN_CHUNK") else { return };
    if v == format!("{table}:{index}") {
        say(&format!("paused in chunk {index} of {table} before its commit (MFE_MIGRATE_PAUSE_IN_CHUNK)"));
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
}
