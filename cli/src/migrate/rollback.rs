//! `mfe migrate rollback`: deletes what imports inserted — and only that — from the split
//! databases, children before parents, one transaction per service. Rows that were there before
//! an import, or that did not come from one, stay.
//!
//! It also undoes an import that failed or was killed half-way: the chunks it committed are
//! recorded like any others, so their rows go, and whatever its load dropped (keys, indexes,
//! foreign keys: [`super::bulkload`]) is rebuilt — after the deletion, so the rebuild has
//! only the rows that were there before to index.

use super::progress::StepStats;
use super::tables;
use super::{bookkeeping, bulkload};
use crate::config::{Config, DbService};
use crate::report::Check;
use anyhow::Context;
use std::time::Instant;
use uuid::Uuid;

/// Rolls back the imports of `services`: every batch not yet rolled back, or only `only_batches`
/// when given (what `run` uses to undo its own import). Returns one check per service.
pub async fn rollback(
    cfg: &Config,
    services: &[DbService],
    only_batches: Option<&[Uuid]>,
) -> anyhow::Result<(Vec<Check>, StepStats)> {
    let started = Instant::now();
    let jobs = services.iter().map(|&db| rollback_service(cfg, db, only_batches));
    let mut checks = Vec::new();
    let mut n_deleted = 0;
    for r in futures::future::join_all(jobs).await {
        let (check, n) = r?;
        n_deleted += n;
        checks.push(check);
    }
    Ok((checks, StepStats::new("rollback", n_deleted, 0, started)))
}

async fn rollback_service(cfg: &Config, db: DbService, only_batches: Option<&[Uuid]>) -> anyhow::Result<(Check, u64)> {
    let label = db.component().name();
    let started = Instant::now();
    let pool = super::split_pool(cfg, db).await?;
    let mut tx = pool.begin().await.with_context(|| format!("{label}: cannot start the rollback transaction"))?;
    if !bookkeeping::exists(&mut tx).await? {
        return Ok((Check::new(format!("rollback {label}"), true, "no import recorded: nothing to roll back"), 0));
    }
    // Waits for a running import, and for the chunk transactions of a killed one to end.
    bookkeeping::lock(&mut tx, label).await?;
    bookkeeping::prepare(&mut tx, label).await?;
    let batches: Vec<Uuid> = sqlx::query_scalar(
        "SELECT batch_id FROM mfe_migration.batches WHERE rolled_back_at IS NULL AND ($1::uuid[] IS NULL OR batch_id = ANY($1))",
    )
    .bind(only_batches.map(|b| b.to_vec()))
    .fetch_all(&mut *tx)
    .await
    .with_context(|| format!("{label}: cannot read the import batches"))?;
    let mut parts = Vec::new();
    let mut n_deleted = 0;
    for spec in tables::tables_of(&[db]).into_iter().rev() {
        let n = bookkeeping::delete_imported(&mut tx, &batches, spec)
            .await
            .with_context(|| format!("{label}: rollback of {} failed; nothing was removed", spec.name))?;
        n_deleted += n;
        parts.push(format!("{} {n}", spec.name));
    }
    let pending = bookkeeping::pending_rebuilds(&mut tx, &batches).await?;
    for p in &pending {
        bulkload::rebuild(&mut tx, &p.rebuild)
            .await
            .with_context(|| format!("{label}: rollback cannot rebuild what an import dropped; nothing was removed"))?;
        bookkeeping::rebuilt(&mut tx, p).await?;
    }
    sqlx::query("DELETE FROM mfe_migration.imported_ids WHERE batch_id = ANY($1)")
        .bind(&batches)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE mfe_migration.batches SET rolled_back_at = now() WHERE batch_id = ANY($1)")
        .bind(&batches)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.with_context(|| format!("{label}: cannot commit the rollback"))?;
    pool.close().await;
    parts.reverse();
    let mut detail = format!("{} import batch(es) undone; rows deleted: {}", batches.len(), parts.join(", "));
    if !pending.is_empty() {
        detail.push_str(&format!("; {} index(es)/key(s) an unfinished import had dropped rebuilt", pending.len()));
    }
    let stats = StepStats::new(format!("rollback {label}"), n_deleted, 0, started);
    Ok((stats.check(true, detail), n_deleted))
}
