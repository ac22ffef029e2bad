//! Loading an empty table the way `pg_restore` does: keys, indexes and foreign keys are dropped
//! for the COPY and rebuilt after it, inside the import's transaction. A sorted index build and
//! one foreign-key validation query cost far less than maintaining every index and firing the
//! foreign-key trigger row by row. Everything is transactional: a failed or killed import
//! rolls the drops back with the rows, and a rebuild that fails (duplicate id, dangling key)
//! fails the import.

use super::tables::{quote_ident, TableSpec};
use sqlx::PgConnection;

/// The statements that put back what [`drop_for_load`] removed, in the order to run them.
#[derive(Debug, Default)]
pub struct Dropped {
    restore: Vec<String>,
}

/// Drops the table's indexes, keys and foreign keys (its own and those of tables referencing it).
pub async fn drop_for_load(conn: &mut PgConnection, spec: &TableSpec) -> anyhow::Result<Dropped> {
    let table = spec.ident();
    // Foreign keys of other tables that point at this one (they depend on its primary key).
    let referencing: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE contype = 'f' AND confrelid = $1::regclass AND conrelid <> $1::regclass",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;
    // The table's own constraints: foreign keys, then primary/unique keys.
    let own: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conname::text, contype::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'f') ORDER BY contype = 'f' DESC, conname",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;
    // Indexes that back no constraint of the table (unique indexes included).
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         WHERE i.indrelid = $1::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)",
    )
    .bind(&table)
    .fetch_all(&mut *conn)
    .await?;

    let mut drops = Vec::new();
    let mut restore = Vec::new();
    for (other, name, _) in &referencing {
        drops.push(format!("ALTER TABLE {other} DROP CONSTRAINT {}", quote_ident(name)));
    }
    for (name, _, _) in &own {
        drops.push(format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name)));
    }
    for (index, _) in &indexes {
        drops.push(format!("DROP INDEX {index}"));
    }
    for (_, def) in &indexes {
        restore.push(def.clone());
    }
    for (name, _, def) in own.iter().rev() {
        restore.push(format!("ALTER TABLE {table} ADD CONSTRAINT {} {def}", quote_ident(name)));
    }
    for (other, name, def) in &referencing {
        restore.push(format!("ALTER TABLE {other} ADD CONSTRAINT {} {def}", quote_ident(name)));
    }
    for sql in &drops {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    Ok(Dropped { restore })
}

impl Dropped {
    /// Rebuilds everything that was dropped (indexes, keys, then foreign keys).
    pub async fn restore(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        sqlx::query("SET LOCAL maintenance_work_mem = '256MB'").execute(&mut *conn).await?;
        for sql in &self.restore {
            sqlx::query(sql).execute(&mut *conn).await.map_err(|e| {
                anyhow::anyhow!("rebuilding after the load failed ({}): {}", sql, crate::pg::short_sqlx_error(&e))
            })?;
        }
        Ok(())
    }
}
