//! Which rows an import inserted, kept in each split database so `rollback` removes exactly
//! those and nothing written before (or by anyone else).
//!
//! Schema `mfe_migration`, owned by this module (created on first import, inside the import's
//! transaction): `batches` — one row per service import — and `imported_ids` — the inserted ids
//! of each table, 10 000 per row as a `text[]`, which costs a fraction of one row per id.

use super::tables::TableSpec;
use anyhow::Context;
use sqlx::PgConnection;
use uuid::Uuid;

/// Ids per `imported_ids` row.
const IDS_PER_CHUNK: i64 = 10_000;

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
CREATE TABLE IF NOT EXISTS mfe_migration.imported_ids (
    batch_id uuid NOT NULL REFERENCES mfe_migration.batches (batch_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    chunk int NOT NULL,
    row_ids text[] NOT NULL,
    PRIMARY KEY (batch_id, table_name, chunk)
);
"#;

/// Serialises imports and rollbacks of one database (transaction-scoped advisory lock), then
/// creates the bookkeeping tables if missing.
pub async fn prepare(conn: &mut PgConnection, label: &str) -> anyhow::Result<()> {
    lock(conn, label).await?;
    sqlx::raw_sql(DDL)
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot create the mfe_migration bookkeeping tables"))?;
    Ok(())
}

/// The advisory lock imports and rollbacks of one database take for their whole transaction.
pub async fn lock(conn: &mut PgConnection, label: &str) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('mfe_migration'))")
        .execute(&mut *conn)
        .await
        .with_context(|| format!("{label}: cannot take the migration lock"))?;
    Ok(())
}

/// True when the database has the bookkeeping tables (an import ever ran there).
pub async fn exists(conn: &mut PgConnection) -> anyhow::Result<bool> {
    let (found,): (bool,) =
        sqlx::query_as("SELECT to_regclass('mfe_migration.imported_ids') IS NOT NULL").fetch_one(&mut *conn).await?;
    Ok(found)
}

/// Records every id of `spec`'s table as inserted by `batch_id` (the table was empty and locked
/// before the COPY, so every row is this import's); returns the number recorded.
pub async fn record_all(conn: &mut PgConnection, batch_id: Uuid, spec: &TableSpec) -> anyhow::Result<u64> {
    let sql = format!(
        "WITH rec AS ( \
            INSERT INTO mfe_migration.imported_ids (batch_id, table_name, chunk, row_ids) \
            SELECT $1, $2, (n / {IDS_PER_CHUNK})::int, array_agg(id) \
            FROM (SELECT \"id\" AS id, row_number() OVER () - 1 AS n FROM {}) s GROUP BY n / {IDS_PER_CHUNK} \
            RETURNING cardinality(row_ids) AS k) \
         SELECT coalesce(sum(k), 0)::int8 FROM rec",
        spec.ident()
    );
    let (n,): (i64,) = sqlx::query_as(&sql).bind(batch_id).bind(spec.name).fetch_one(&mut *conn).await?;
    Ok(n as u64)
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
            SELECT $1, $2, (n / {IDS_PER_CHUNK})::int, array_agg(id) \
            FROM (SELECT id, row_number() OVER () - 1 AS n FROM new_rows) s GROUP BY n / {IDS_PER_CHUNK} \
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
            SELECT unnest(row_ids) FROM mfe_migration.imported_ids WHERE batch_id = ANY($1) AND table_name = $2)",
        spec.ident()
    );
    let done = sqlx::query(&sql).bind(batches).bind(spec.name).execute(&mut *conn).await?;
    Ok(done.rows_affected())
}
