//! What imports did, kept in each split database: which rows they inserted (so `rollback`
//! removes exactly those and nothing written before or by anyone else), which chunks are in
//! (so a killed import resumes where it stopped) and what a load dropped (so it is rebuilt).
//!
//! Schema `mfe_migration`, owned by this module (created by the first import):
//! - `batches`: one row per service import; `state` is `loading` until every chunk is in and
//!   everything dropped is rebuilt, then `complete` (`superseded` when an import of another
//!   export took over an unfinished one). Rows of the one-transaction imports of earlier
//!   versions read as `complete` (the column's default).
//! - `imported_ids`: the inserted ids of each table, 10 000 per row, which costs a fraction of
//!   one row per id; written in the transaction of the chunk that inserted them. Ids that are
//!   all canonical uuids (every generated and sample dataset) go in `row_uuids`, a `uuid[]`
//!   sent in binary and stored uncompressed (`STORAGE EXTERNAL`: random bytes do not compress);
//!   any other ids in `row_ids`, a `text[]`. As text they were parsed and pglz-compressed row
//!   by row, and recording them took 1.5–2.6 s of a 16 s import of 2.2 M rows (alternating
//!   runs with and without the record).
//! - `chunks`: the checkpoint of every chunk file committed, in the same transaction as its rows
//!   and its ids — so a chunk is in with its checkpoint or not at all, and the primary key
//!   `(batch_id, table_name, chunk)` refuses a second commit of one chunk.
//! - `loads`: how each table of a batch is loaded (`direct` into the emptied-of-indexes table,
//!   or `staged` through a temporary table and `ON CONFLICT DO NOTHING`), decided once.
//! - `dropped`: the rebuild statements of what [`super::bulkload`] dropped, deleted one by one as
//!   each rebuild commits.
//!
//! Locks: an import holds the session-level advisory lock [`LOCK_IMPORT`] for its whole run,
//! `rollback` the transaction-level one, so one of them runs per database at a time. Each chunk
//! transaction also holds [`LOCK_CHUNKS`] shared; a new import or a rollback takes it exclusive
//! once, which waits for the chunk transactions of a killed import to end (the server notices
//! the dead client only when it next reads from it) before it reads the checkpoints.

use super::bulkload::{Phase, Rebuild};
use super::tables::TableSpec;
use anyhow::Context;
use sqlx::PgConnection;
use uuid::Uuid;

/// Ids per `imported_ids` row.
const IDS_PER_ROW: i64 = 10_000;

/// Advisory lock key of "an import or a rollback is running on this database".
pub const LOCK_IMPORT: &str = "hashtext('mfe_migration')";
/// Advisory lock key each chunk transaction holds shared.
pub const LOCK_CHUNKS: &str = "hashtext('mfe_migration.chunks')";

const DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS mfe_migration;
CREATE TABLE IF NOT EXISTS mfe_migration.batches (
    batch_id uuid PRIMARY KEY,
    manifest_sha256 text NOT NULL,
    snapshot_time text NOT NULL,
    tool_version text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    rolled_back_at timestamptz
);
ALTER TABLE mfe_migration.batches ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'complete';
ALTER TABLE mfe_migration.batches ADD COLUMN IF NOT EXISTS completed_at timestamptz;
CREATE TABLE IF NOT EXISTS mfe_migration.imported_ids (
    batch_id uuid NOT NULL REFERENCES mfe_migration.batches (batch_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    chunk int NOT NULL,
    row_ids text[] NOT NULL,
    PRIMARY KEY (batch_id, table_name, chunk)
);
ALTER TABLE mfe_migration.imported_ids ADD COLUMN IF NOT EXISTS row_uuids uuid[];
ALTER TABLE mfe_migration.imported_ids ALTER COLUMN row_uuids SET STORAGE EXTERNAL;
ALTER TABLE mfe_migration.imported_ids ALTER COLUMN row_ids DROP NOT NULL;
CREATE SEQUENCE IF NOT EXISTS mfe_migration.imported_ids_chunk AS int;
CREATE TABLE IF NOT EXISTS mfe_migration.chunks (
    batch_id uuid NOT NULL REFERENCES mfe_migration.batches (batch_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    chunk int NOT NULL,
    rows_in_file int8 NOT NULL,
    rows_inserted int8 NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, table_name, chunk)
);
CREATE TABLE IF NOT EXISTS mfe_migration.loads (
    batch_id uuid NOT NULL REFERENCES mfe_migration.batches (batch_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    mode text NOT NULL,
    PRIMARY KEY (batch_id, table_name)
);
CREATE TABLE IF NOT EXISTS mfe_migration.dropped (
    batch_id uuid NOT NULL REFERENCES mfe_migration.batches (batch_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    seq int NOT NULL,
    phase int NOT NULL,
    rebuild_sql text NOT NULL,
    PRIMARY KEY (batch_id, table_name, seq)
);
"#;

/// Creates the bookkeeping tables, or brings those of an earlier version up to date.
pub async fn prepare(conn: &mut PgConnection, label: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(DDL)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot create the mfe_migration bookkeeping tables"))?;
    Ok(())
}

/// The advisory lock a rollback takes for its whole transaction; it waits for a running import
/// (which holds the same lock for its session) and for the chunk transactions of a killed one.
pub async fn lock(conn: &mut PgConnection, label: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({LOCK_IMPORT}), pg_advisory_xact_lock({LOCK_CHUNKS})"))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot take the migration lock"))?;
    Ok(())
}

/// The lock an import holds for its session (on a connection it keeps to the end), then a wait
/// for the chunk transactions of an import that was killed.
pub async fn lock_session(conn: &mut PgConnection, label: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("SELECT pg_advisory_lock({LOCK_IMPORT})"))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot take the migration lock"))?;
    sqlx::query(&format!("SELECT pg_advisory_lock({LOCK_CHUNKS}), pg_advisory_unlock({LOCK_CHUNKS})"))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot wait for the chunks of an earlier import"))?;
    Ok(())
}

/// What every chunk transaction takes first (see the module doc).
pub async fn lock_chunk(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query(&format!("SELECT pg_advisory_xact_lock_shared({LOCK_CHUNKS})")).execute(&mut *conn).await?;
    Ok(())
}

/// True when the database has the bookkeeping tables (an import ever ran there).
pub async fn exists(conn: &mut PgConnection) -> anyhow::Result<bool> {
    let (found,): (bool,) =
        sqlx::query_as("SELECT to_regclass('mfe_migration.imported_ids') IS NOT NULL").fetch_one(&mut *conn).await?;
    Ok(found)
}

/// An unfinished batch (not complete, not rolled back).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBatch {
    pub batch_id: Uuid,
    pub manifest_sha256: String,
    pub imported_at: String,
}

/// The unfinished batches of the database, oldest first.
pub async fn open_batches(conn: &mut PgConnection) -> anyhow::Result<Vec<OpenBatch>> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT batch_id, manifest_sha256, to_char(imported_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
         FROM mfe_migration.batches WHERE state = 'loading' AND rolled_back_at IS NULL ORDER BY imported_at",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(batch_id, manifest_sha256, imported_at)| OpenBatch { batch_id, manifest_sha256, imported_at })
        .collect())
}

/// The batch of this manifest that a run should go on with: unfinished, or complete (then every
/// chunk is in and the run has nothing to load), never rolled back or superseded.
pub async fn batch_of_manifest(conn: &mut PgConnection, manifest_sha256: &str) -> anyhow::Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT batch_id FROM mfe_migration.batches WHERE manifest_sha256 = $1 AND rolled_back_at IS NULL \
         AND state IN ('loading', 'complete') ORDER BY imported_at DESC LIMIT 1",
    )
    .bind(manifest_sha256)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Starts a batch in state `loading`.
pub async fn begin_batch(conn: &mut PgConnection, manifest_sha256: &str, snapshot_time: &str) -> anyhow::Result<Uuid> {
    let batch_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO mfe_migration.batches (batch_id, manifest_sha256, snapshot_time, tool_version, state) \
         VALUES ($1, $2, $3, $4, 'loading')",
    )
    .bind(batch_id)
    .bind(manifest_sha256)
    .bind(snapshot_time)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(&mut *conn)
    .await?;
    Ok(batch_id)
}

/// Sets a batch's state (`complete`, `superseded`).
pub async fn set_state(conn: &mut PgConnection, batch_id: Uuid, state: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE mfe_migration.batches SET state = $2, completed_at = coalesce(completed_at, now()) WHERE batch_id = $1",
    )
    .bind(batch_id)
    .bind(state)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The chunks of a batch already committed: `(table, chunk) → rows inserted`.
pub async fn committed_chunks(
    conn: &mut PgConnection,
    batch_id: Uuid,
) -> anyhow::Result<std::collections::HashMap<(String, i32), u64>> {
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT table_name, chunk, rows_inserted FROM mfe_migration.chunks WHERE batch_id = $1")
            .bind(batch_id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(t, c, n)| ((t, c), n as u64)).collect())
}

/// How a table of a batch is loaded, if that was decided already.
pub async fn load_mode(conn: &mut PgConnection, batch_id: Uuid, spec: &TableSpec) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT mode FROM mfe_migration.loads WHERE batch_id = $1 AND table_name = $2")
        .bind(batch_id)
        .bind(spec.name)
        .fetch_optional(&mut *conn)
        .await?)
}

/// Records how a table of a batch is loaded and, for a direct load, what was dropped for it.
pub async fn record_load(
    conn: &mut PgConnection,
    batch_id: Uuid,
    spec: &TableSpec,
    mode: &str,
    dropped: &[Rebuild],
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO mfe_migration.loads (batch_id, table_name, mode) VALUES ($1, $2, $3)")
        .bind(batch_id)
        .bind(spec.name)
        .bind(mode)
        .execute(&mut *conn)
        .await?;
    let seqs: Vec<i32> = (0..dropped.len() as i32).collect();
    let phases: Vec<i32> = dropped.iter().map(|r| r.phase as i32).collect();
    let sqls: Vec<&str> = dropped.iter().map(|r| r.sql.as_str()).collect();
    sqlx::query(
        "INSERT INTO mfe_migration.dropped (batch_id, table_name, seq, phase, rebuild_sql) \
         SELECT $1, $2, s, p, q FROM unnest($3::int4[], $4::int4[], $5::text[]) AS u(s, p, q)",
    )
    .bind(batch_id)
    .bind(spec.name)
    .bind(&seqs)
    .bind(&phases)
    .bind(&sqls)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One rebuild still to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRebuild {
    pub batch_id: Uuid,
    pub table_name: String,
    pub seq: i32,
    pub rebuild: Rebuild,
}

/// The rebuilds still to run for `batches`, in phase order.
pub async fn pending_rebuilds(conn: &mut PgConnection, batches: &[Uuid]) -> anyhow::Result<Vec<PendingRebuild>> {
    let rows: Vec<(Uuid, String, i32, i32, String)> = sqlx::query_as(
        "SELECT batch_id, table_name, seq, phase, rebuild_sql FROM mfe_migration.dropped \
         WHERE batch_id = ANY($1) ORDER BY phase, table_name, seq",
    )
    .bind(batches)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(batch_id, table_name, seq, phase, sql)| PendingRebuild {
            batch_id,
            table_name,
            seq,
            rebuild: Rebuild { phase: Phase::from_i32(phase), sql },
        })
        .collect())
}

/// Marks a rebuild done (in the transaction that ran it).
pub async fn rebuilt(conn: &mut PgConnection, pending: &PendingRebuild) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM mfe_migration.dropped WHERE batch_id = $1 AND table_name = $2 AND seq = $3")
        .bind(pending.batch_id)
        .bind(&pending.table_name)
        .bind(pending.seq)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The checkpoint of a chunk, in the chunk's transaction; a second commit of the same chunk
/// fails on the primary key.
pub async fn record_chunk(
    conn: &mut PgConnection,
    batch_id: Uuid,
    spec: &TableSpec,
    chunk: usize,
    rows_in_file: u64,
    rows_inserted: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO mfe_migration.chunks (batch_id, table_name, chunk, rows_in_file, rows_inserted) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(batch_id)
    .bind(spec.name)
    .bind(chunk as i32)
    .bind(rows_in_file as i64)
    .bind(rows_inserted as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records `ids` as inserted by `batch_id` into `spec`'s table (a direct load: every row of the
/// chunk file went in, and the file's ids are these), one `imported_ids` row per
/// [`IDS_PER_ROW`]; returns the number recorded.
pub async fn record_ids(
    conn: &mut PgConnection,
    batch_id: Uuid,
    spec: &TableSpec,
    ids: &super::checksum::Ids,
) -> anyhow::Result<u64> {
    let per_row = IDS_PER_ROW as usize;
    for from in (0..ids.len()).step_by(per_row) {
        let to = (from + per_row).min(ids.len());
        let insert = |column: &str| {
            format!(
                "INSERT INTO mfe_migration.imported_ids (batch_id, table_name, chunk, {column}) \
                 VALUES ($1, $2, nextval('mfe_migration.imported_ids_chunk')::int4, $3)"
            )
        };
        match ids.slice_uuids(from, to) {
            Some(part) => {
                let sql = insert("row_uuids");
                sqlx::query(&sql).bind(batch_id).bind(spec.name).bind(part).execute(&mut *conn).await?
            }
            None => {
                let part = ids.slice_strings(from, to).map_err(|e| anyhow::anyhow!(e))?;
                let sql = insert("row_ids");
                sqlx::query(&sql).bind(batch_id).bind(spec.name).bind(part).execute(&mut *conn).await?
            }
        };
    }
    Ok(ids.len() as u64)
}

/// Inserts the staged rows whose id is new, records exactly those ids, and returns their number.
pub async fn insert_new_and_record(
    conn: &mut PgConnection,
    batch_id: Uuid,
    spec: &TableSpec,
    stage: &str,
) -> anyhow::Result<u64> {
    let cols = spec.column_list();
    let sql = format!(
        "WITH new_rows AS ( \
            INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT (\"id\") DO NOTHING RETURNING \"id\" AS id), \
         rec AS ( \
            INSERT INTO mfe_migration.imported_ids (batch_id, table_name, chunk, row_ids) \
            SELECT $1, $2, nextval('mfe_migration.imported_ids_chunk')::int4, array_agg(id) \
            FROM (SELECT id, row_number() OVER () - 1 AS n FROM new_rows) s GROUP BY n / {IDS_PER_ROW} \
            RETURNING cardinality(row_ids) AS k) \
         SELECT coalesce(sum(k), 0)::int8 FROM rec",
        table = spec.ident()
    );
    let (n,): (i64,) = sqlx::query_as(&sql).bind(batch_id).bind(spec.name).fetch_one(&mut *conn).await?;
    Ok(n as u64)
}

/// Deletes the rows of `spec`'s table that `batches` inserted; returns how many went.
pub async fn delete_imported(conn: &mut PgConnection, batches: &[Uuid], spec: &TableSpec) -> anyhow::Result<u64> {
    let sql = format!(
        "DELETE FROM {} WHERE \"id\" IN ( \
            SELECT unnest(coalesce(row_ids, row_uuids::text[])) FROM mfe_migration.imported_ids \
            WHERE batch_id = ANY($1) AND table_name = $2)",
        spec.ident()
    );
    let done = sqlx::query(&sql).bind(batches).bind(spec.name).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}
