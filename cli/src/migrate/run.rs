//! `mfe migrate run`: backup → schemas → export → import → validate, and a rollback of this
//! run's import when validation fails (unless `--no-rollback`). Every step prints its figures
//! and becomes a check of the report. Running it again changes nothing: the import finds every
//! id present and inserts none, and validation passes again.
//!
//! [`run_online`] is the same report for the online path: backup → schemas → `sync start`
//! (slots, export from their snapshots, import, subscriptions, first catch-up) → `cutover`, with
//! the write pause as a metric.

use super::progress::{human_bytes, round3, say, StepStats};
use super::{cutover, export, import, rollback, sync, validate};
use crate::config::{Config, DbService};
use crate::report::{Check, Report};
use std::path::Path;
use std::time::{Duration, Instant};

/// The backup step both paths start with: POC-2 as it was before anything moved.
async fn backup_step(cfg: &Config, out: &Path, compress: u8, report: &mut Report) -> anyhow::Result<()> {
    let t = Instant::now();
    let backup = crate::db::backup_legacy(cfg, &out.join("backup"), crate::db::DumpVia::Auto, compress).await?;
    let stats = StepStats::new("backup", 0, backup.bytes, t);
    say(&format!(
        "backup: {} written to {} in {:.2} s",
        human_bytes(backup.bytes),
        backup.path.display(),
        stats.seconds
    ));
    report.push(stats.check(true, backup.path.display().to_string()));
    Ok(())
}

/// The schemas step both paths take second: the split schemas at their latest version, so a run
/// against fresh databases needs no `mfe db migrate` first.
async fn schemas_step(cfg: &Config, services: &[DbService], report: &mut Report) -> anyhow::Result<()> {
    let t = Instant::now();
    let outcomes = crate::db::migrate_all(cfg, services).await?;
    let n_applied: usize = outcomes.iter().map(|o| o.n_applied()).sum();
    let stats = StepStats::new("schemas", 0, 0, t);
    say(&format!(
        "schemas: {n_applied} migration(s) applied to {} database(s) in {:.2} s",
        outcomes.len(),
        stats.seconds
    ));
    report.push(stats.check(true, format!("{n_applied} migration(s) applied")).metric("applied", n_applied));
    Ok(())
}

/// `backup_compress`: pg_dump's compression level for the backup.
pub async fn run(
    cfg: &Config,
    services: &[DbService],
    out: &Path,
    no_rollback: bool,
    backup_compress: u8,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report::new("migrate run");
    backup_step(cfg, out, backup_compress, &mut report).await?;

    schemas_step(cfg, services, &mut report).await?;

    let (manifest, stats) = export::export(cfg, services, out).await?;
    say(&stats.line());
    report.push(
        stats.check(true, format!("{} tables, snapshot {}", manifest.tables.len(), manifest.source.snapshot_time)),
    );
    let n_rows = stats.rows;

    let imported = import::import(cfg, services, out).await?;
    say(&imported.stats.line());
    let n_inserted = imported.stats.rows;
    report.push(
        imported
            .stats
            .check(true, format!("{n_inserted} rows inserted ({} already there)", n_rows - n_inserted.min(n_rows))),
    );

    let (checks, stats) = validate::validate(cfg, services).await?;
    say(&stats.line());
    let valid = checks.iter().all(|c| c.passed);
    for c in checks {
        report.push(c);
    }
    if !valid {
        if no_rollback {
            say("validation failed: the imported rows are kept (--no-rollback)");
        } else {
            let batches: Vec<_> = imported.services.iter().map(|s| s.batch_id).collect();
            say("validation failed: rolling back this run's import");
            let (checks, stats) = rollback::rollback(cfg, services, Some(&batches)).await?;
            say(&stats.line());
            for c in checks {
                report.push(Check { passed: true, ..c });
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    report.metric("rows", n_rows);
    report.metric("rows_inserted", n_inserted);
    report.metric("seconds", round3(seconds));
    report.metric("rows_per_s", if seconds > 0.0 { (n_rows as f64 / seconds).round() } else { 0.0 });
    say(&format!("migrate run: {n_rows} rows in {seconds:.2} s ({:.0} rows/s)", n_rows as f64 / seconds.max(1e-9)));
    Ok(report)
}

/// `mfe migrate run --online`: backup → schemas → sync start → (lag ≈ 0) → cutover. A failed cutover
/// leaves the sync running and POC-2 writable; the report says what differed.
pub async fn run_online(
    cfg: &Config,
    services: &[DbService],
    out: &Path,
    timeout: Duration,
    backup_compress: u8,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report::new("migrate run");
    backup_step(cfg, out, backup_compress, &mut report).await?;
    schemas_step(cfg, services, &mut report).await?;
    let opts = sync::StartOptions { reset: false, wait: Duration::from_secs(600) };
    let synced = sync::start(cfg, services, out, &opts).await?;
    for c in synced.report.checks {
        report.push(c);
    }
    let cut = cutover::cutover(cfg, services, timeout).await?;
    for c in cut.checks {
        report.push(c);
    }
    for key in ["write_pause_s", "rows_synced", "rechecked_rows"] {
        if let Some(v) = cut.metrics.get(key) {
            report.metric(key, v.clone());
        }
    }
    let n_rows = synced.rows_exported;
    let seconds = started.elapsed().as_secs_f64();
    report.metric("online", true);
    report.metric("rows", n_rows);
    report.metric("rows_inserted", synced.rows_inserted);
    report.metric("seconds", round3(seconds));
    report.metric("rows_per_s", if seconds > 0.0 { (n_rows as f64 / seconds).round() } else { 0.0 });
    say(&format!("migrate run --online: {n_rows} rows copied, then synced; {:.2} s in all", seconds));
    Ok(report)
}
