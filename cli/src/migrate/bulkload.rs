//! Loading an empty table the way `pg_restore` does: its keys, indexes and foreign keys are
//! dropped before the first chunk and rebuilt after the last one. A sorted index build and one
//! foreign-key validation query cost far less than maintaining every index and firing the
//! foreign-key trigger row by row.
//!
//! The chunks of an import commit one by one, so the drops cannot ride in the rows'
//! transaction any more: [`drop_for_load`] returns the statements that put everything back,
//! the import stores them in `mfe_migration.dropped` in the same transaction as the drops
//! ([`super::bookkeeping`]), and each rebuild statement later commits together with the
//! deletion of its row. Whoever comes next — the import finishing, an import resumed after a
//! kill, or `mfe migrate rollback` — knows exactly what is still missing.
//!
//! A rebuild comes in three phases so the expensive part runs in parallel:
//! 1. [`Phase::Index`]: every index, those behind primary and unique keys too, built with
//!    `CREATE [UNIQUE] INDEX` — which takes a SHARE lock, so several builds on one table run at
//!    once (`ALTER TABLE … ADD PRIMARY KEY` would take an ACCESS EXCLUSIVE lock and queue them);
//! 2. [`Phase::Key`]: `ALTER TABLE … ADD CONSTRAINT … PRIMARY KEY USING INDEX`, instant;
//! 3. [`Phase::ForeignKey`]: the foreign keys, each validated by one join.
//!
//! A rebuild that fails (a duplicate id, a dangling key) fails the import with the statement
//! and the server's reason; its row stays in `mfe_migration.dropped`.

use super::tables::{quote_ident, TableSpec};
use sqlx::PgConnection;

/// When a rebuild statement may run: every statement of a phase after all of the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Index = 0,
    Key = 1,
    ForeignKey = 2,
}

impl Phase {
    pub fn from_i32(n: i32) -> Self {
        match n {
            0 => Phase::Index,
            1 => Phase::Key,
            _ => Phase::ForeignKey,
        }
    }
}

/// One statement that puts back something [`drop_for_load`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub phase: Phase,
    pub sql: String,
}

/// Drops the table's indexes, keys and foreign keys (its own and those of tables referencing
/// it); returns what rebuilds them.
pub async fn drop_for_load(conn: &mut PgConnection, spec: &TableSpec) -> anyhow::Result<Vec<Rebuild>> {
    let table = spec.ident();
    // Foreign keys of other tables that point at this one (they depend on its primary key).
    let referencing: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE contype = 'f' AND confrelid = $1::regclass AND conrelid <> $1::regclass",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;
    // The table's own foreign keys.
    let foreign: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1::regclass AND contype = 'f' ORDER BY conname",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;
    // Its primary and unique keys, with the definition of the index behind each.
    let keys: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT conname::text, contype::text, pg_get_indexdef(conindid), condeferrable, condeferred \
         FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;
    // Indexes that back no constraint of the table (unique indexes included).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         WHERE i.indrelid = $1::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) \
         ORDER BY 1",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;

    let mut drops = Vec::new();
    let mut rebuild = Vec::new();
    for (other, name, def) in &referencing {
        drops.push(format!("ALTER TABLE {other} DROP CONSTRAINT {}", quote_ident(name)));
        rebuild.push(Rebuild {
            phase: Phase::ForeignKey,
            sql: format!("ALTER TABLE {other} ADD CONSTRAINT {} {def}", quote_ident(name)),
        });
    }
    for (name, def) in &foreign {
        drops.push(format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name)));
        rebuild.push(Rebuild {
            phase: Phase::ForeignKey,
            sql: format!("ALTER TABLE {table} ADD CONSTRAINT {} {def}", quote_ident(name)),
        });
    }
    for (name, contype, index_def, deferrable, deferred) in &keys {
        drops.push(format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name)));
        // The constraint's index keeps the constraint's name, so `USING INDEX` finds it.
        rebuild.push(Rebuild { phase: Phase::Index, sql: index_def.clone() });
        let kind = if contype == "p" { "PRIMARY KEY" } else { "UNIQUE" };
        let timing = match (deferrable, deferred) {
            (true, true) => " DEFERRABLE INITIALLY DEFERRED",
            (true, false) => " DEFERRABLE",
            _ => "",
        };
        rebuild.push(Rebuild {
            phase: Phase::Key,
            sql: format!(
                "ALTER TABLE {table} ADD CONSTRAINT {name} {kind} USING INDEX {name}{timing}",
                name = quote_ident(name)
            ),
        });
    }
    for (index, def) in &indexes {
        drops.push(format!("DROP INDEX {index}"));
        rebuild.push(Rebuild { phase: Phase::Index, sql: def.clone() });
    }
    for sql in &drops {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    rebuild.sort_by_key(|r| r.phase);
    Ok(rebuild)
}

/// Runs one rebuild statement on `conn` (inside the caller's transaction) with 256 MB for the
/// sort of an index build (the one-transaction import used the same; the test servers'
/// default is 64 MB, which spills the sort of a large table to disk).
pub async fn rebuild(conn: &mut PgConnection, statement: &Rebuild) -> anyhow::Result<()> {
    sqlx::query("SET LOCAL maintenance_work_mem = '256MB'").execute(&mut *conn).await?;
    sqlx::query(&statement.sql).execute(&mut *conn).await.map_err(|e| {
        anyhow::anyhow!("rebuilding after the load failed ({}): {}", statement.sql, crate::pg::short_sqlx_error(&e))
    })?;
    Ok(())
}
