//! `mfe migrate`: moves the data of the legacy shared database into the four split databases
//! (SPEC §6) — `export`, `import`, `validate`, `rollback`, and `run` which chains them.
//!
//! # Layout
//! - [`tables`]: the carried-over tables, their legacy columns and their user references.
//! - [`export`]: one snapshot, binary COPY out, per-service files (a large table in page-range
//!   chunks read in parallel) + [`manifest`].
//! - [`import`]: manifest and file checks first, then chunk by chunk, each chunk committed with
//!   its checkpoint, so a killed import resumes; which ids it inserted goes to [`bookkeeping`],
//!   which [`rollback`] reads to remove exactly those; empty tables load without their keys
//!   ([`bulkload`]), rebuilt as soon as the table's last chunk is in.
//! - [`validate`]: count + order-independent checksum per table on both sides ([`checksum`]),
//!   sample ids only on a mismatch, cross-service references.
//! - [`run`]: backup → schemas → export → import → validate → rollback on failure; with
//!   `--online`: backup → `sync start` → cutover.
//! - [`progress`]: the line (and the bar on a terminal) every step prints.
//! - The online path: [`sync`] (`sync start|status|stop`: publications, slots whose exported
//!   snapshots the export reads, subscriptions, lag), [`replication`] (the one replication-protocol
//!   connection it needs), [`cutover`] (write block, catch-up, validation, reverse path,
//!   `switch-back`, `finish`).
//!
//! # Invariants
//! - The legacy database's data is never written by mfe: every connection to it is opened with
//!   `default_transaction_read_only=on`, except the online migration's admin session
//!   ([`legacy_admin_pool`]), whose statements (publications, slots, reverse subscriptions, the
//!   write block) all go through [`sync::legacy_admin_statement`]. After cutover the reverse
//!   subscriptions' apply workers write the new services' changes back, and nothing else.
//! - Every migrate session pins DateStyle/IntervalStyle/TimeZone, so a row renders to the same
//!   text on both sides of a checksum.

pub mod bookkeeping;
pub mod bulkload;
pub mod checksum;
pub mod cutover;
pub mod export;
pub mod import;
pub mod manifest;
pub mod progress;
pub mod replication;
pub mod rollback;
pub mod run;
pub mod staged;
pub mod sync;
pub mod tables;
pub mod validate;

use crate::config::{Config, DbService};
use crate::report::Report;
use crate::Ctx;
use anyhow::Context;
use clap::{Args, Subcommand};
use progress::say;
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Export the legacy tables (one snapshot) into per-service files and a manifest.
    Export(ExportArgs),
    /// Import an export into the split databases (verified first; resumes an interrupted import).
    Import(ImportArgs),
    /// Compare legacy and split databases: counts, checksums, cross-service references.
    Validate(ServiceArg),
    /// Remove what imports inserted from the split databases.
    Rollback(ServiceArg),
    /// Backup, schemas, export, import, validate — and roll back if validation fails
    /// (`--online`: backup, sync start, cutover).
    Run(RunArgs),
    /// Online migration: logical replication from the legacy database while POC-2 keeps running.
    Sync(SyncArgs),
    /// Block POC-2's writes, wait until the split databases applied everything, validate, detach;
    /// on failure lift the block and keep syncing.
    Cutover(CutoverArgs),
    /// After cutover: wait until the new services' writes reached POC-2, drop the reverse path and
    /// lift POC-2's write block (POC-2 is the source of truth again).
    SwitchBack(SwitchBackArgs),
    /// After cutover: end the switch-back window (drop the reverse path; POC-2 stays blocked).
    Finish(ServiceArg),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(subcommand)]
    pub command: SyncCommand,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Slots + exported snapshots, export, import, then subscriptions that stream every later change.
    Start(SyncStartArgs),
    /// Per service: phase, lag in bytes and seconds, rows applied, errors.
    Status(ServiceArg),
    /// Abandon a sync that has not cut over: subscriptions, slots and publications are removed.
    Stop(ServiceArg),
}

#[derive(Debug, Args)]
pub struct SyncStartArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Directory for the data files and manifest.json of the initial copy.
    #[arg(long, value_name = "DIR", default_value = "migration-data")]
    pub out: PathBuf,
    /// Empty the migrated tables of the split databases first (after a switch-back).
    #[arg(long)]
    pub reset: bool,
    /// Seconds to wait for the subscriptions to catch up before returning.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct CutoverArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Seconds the write block may last while waiting for the subscriptions to catch up.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct SwitchBackArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Confirm making POC-2 the source of truth again.
    #[arg(long)]
    pub yes: bool,
    /// Seconds to wait for the reverse lag to reach 0.
    #[arg(long, value_name = "S", default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArg {
    /// Only this split service (auth, payments, admin, profile); all four by default.
    #[arg(long, value_name = "S")]
    pub service: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Directory for the data files and manifest.json.
    #[arg(long, value_name = "DIR", default_value = "migration-data")]
    pub out: PathBuf,
    /// A table larger than this (MB of its heap) is written as several chunk files.
    #[arg(long, value_name = "MB", default_value_t = export::DEFAULT_CHUNK_BYTES >> 20)]
    pub chunk_mb: u64,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Directory of an export (holding manifest.json).
    #[arg(long = "in", value_name = "DIR", default_value = "migration-data")]
    pub input: PathBuf,
    /// Chunks loaded at once per service (1 to 3).
    #[arg(long, value_name = "N", default_value_t = import::IMPORT_WORKERS)]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Directory for the backup, the data files and manifest.json.
    #[arg(long, value_name = "DIR", default_value = "migration-data")]
    pub out: PathBuf,
    /// Keep the imported rows even when validation fails (for inspection).
    #[arg(long)]
    pub no_rollback: bool,
    /// Online: sync start → wait for lag ≈ 0 → cutover, while POC-2 keeps writing.
    #[arg(long)]
    pub online: bool,
    /// With --online: seconds the cutover's write block may last.
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub timeout: u64,
    /// pg_dump's compression level for the backup (0–9). None by default: the backup is part of
    /// the offline run's write freeze, and compressing costs it twice the time for a third of
    /// the disk (`mfe db backup` compresses at level 1).
    #[arg(long, value_name = "LEVEL", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub backup_compress: u8,
}

pub async fn run(ctx: &Ctx, args: MigrateArgs) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    match args.command {
        MigrateCommand::Export(a) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            let options = export::ExportOptions { chunk_bytes: a.chunk_mb.max(1) << 20 };
            let (manifest, stats) =
                export::export_with(cfg, &services, &a.out, export::Snapshots::Own, options).await?;
            say(&stats.line());
            let mut report = Report::new("migrate export");
            for t in &manifest.tables {
                report.push(
                    crate::report::Check::new(format!("{}.{}", t.service, t.table), true, t.files())
                        .metric("rows", t.rows)
                        .metric("bytes", t.bytes),
                );
            }
            report.push(stats.check(true, format!("written to {}", a.out.display())));
            emit(ctx, &report)
        }
        MigrateCommand::Import(a) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            let outcome =
                import::import_with(cfg, &services, &a.input, import::ImportOptions { workers: a.jobs }).await?;
            say(&outcome.stats.line());
            let mut report = Report::new("migrate import");
            for s in &outcome.services {
                for t in &s.tables {
                    report.push(
                        crate::report::Check::new(t.label.clone(), true, t.detail())
                            .metric("rows_inserted", t.rows_inserted)
                            .metric("chunks_skipped", t.chunks_skipped)
                            .metric("rows_in_file", t.rows_in_file),
                    );
                }
            }
            report.push(outcome.stats.check(true, format!("from {}", a.input.display())));
            emit(ctx, &report)
        }
        MigrateCommand::Validate(a) => {
            let services = tables::parse_services(a.service.as_deref())?;
            let (checks, stats) = validate::validate(cfg, &services).await?;
            say(&stats.line());
            let mut report = Report::new("migrate validate");
            for c in checks {
                report.push(c);
            }
            report.metric("rows", stats.rows);
            report.metric("seconds", progress::round3(stats.seconds));
            report.metric("rows_per_s", stats.rows_per_s().round());
            emit(ctx, &report)
        }
        MigrateCommand::Rollback(a) => {
            let services = tables::parse_services(a.service.as_deref())?;
            let (checks, stats) = rollback::rollback(cfg, &services, None).await?;
            say(&stats.line());
            let mut report = Report::new("migrate rollback");
            for c in checks {
                report.push(c);
            }
            emit(ctx, &report)
        }
        MigrateCommand::Run(a) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            let report = if a.online {
                run::run_online(cfg, &services, &a.out, Duration::from_secs(a.timeout), a.backup_compress).await?
            } else {
                run::run(cfg, &services, &a.out, a.no_rollback, a.backup_compress).await?
            };
            emit(ctx, &report)
        }
        MigrateCommand::Sync(SyncArgs { command: SyncCommand::Start(a) }) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            let opts = sync::StartOptions { reset: a.reset, wait: Duration::from_secs(a.wait) };
            let started = sync::start(cfg, &services, &a.out, &opts).await?;
            emit(ctx, &started.report)
        }
        MigrateCommand::Sync(SyncArgs { command: SyncCommand::Status(a) }) => {
            let services = tables::parse_services(a.service.as_deref())?;
            emit(ctx, &sync::status(cfg, &services).await?)
        }
        MigrateCommand::Sync(SyncArgs { command: SyncCommand::Stop(a) }) => {
            let services = tables::parse_services(a.service.as_deref())?;
            emit(ctx, &sync::stop(cfg, &services).await?)
        }
        MigrateCommand::Cutover(a) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            emit(ctx, &cutover::cutover(cfg, &services, Duration::from_secs(a.timeout)).await?)
        }
        MigrateCommand::SwitchBack(a) => {
            let services = tables::parse_services(a.service.service.as_deref())?;
            emit(ctx, &cutover::switch_back(cfg, &services, a.yes, Duration::from_secs(a.timeout)).await?)
        }
        MigrateCommand::Finish(a) => {
            let services = tables::parse_services(a.service.as_deref())?;
            emit(ctx, &cutover::finish(cfg, &services).await?)
        }
    }
}

/// JSON on stdout with `--json`; otherwise the table goes to stderr with the other human output.
fn emit(ctx: &Ctx, report: &Report) -> anyhow::Result<()> {
    if ctx.json {
        return report.emit(true);
    }
    eprintln!("{}", report.table());
    report.into_result()
}

/// Session settings of every migrate connection: rows render to the same text on both sides.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=1";

async fn pool(cfg: &Config, db: DbService, extra_options: &str) -> anyhow::Result<PgPool> {
    let target = cfg.pg(db)?;
    let mut url = url::Url::parse(&target.url).with_context(|| format!("{} is not a valid URL", db.url_var()))?;
    url.query_pairs_mut().append_pair("options", &format!("{SESSION_OPTIONS}{extra_options}"));
    crate::pg::connect_url(db.component().name(), url.as_str()).await
}

/// A pool to the legacy database whose every transaction is read-only.
pub async fn legacy_pool(cfg: &Config) -> anyhow::Result<PgPool> {
    pool(cfg, DbService::Legacy, " -c default_transaction_read_only=on").await
}

/// The one session that may change the legacy server: the online migration's publications,
/// slots, reverse subscriptions and write block, each sent through
/// [`sync::legacy_admin_statement`]. It says `read_only=off` in its startup options, which win
/// over the database-level read-only setting the write block puts on POC-2's database, and it
/// carries [`sync::ADMIN_APPLICATION_NAME`] so the block never ends it.
pub(crate) async fn legacy_admin_pool(cfg: &Config) -> anyhow::Result<PgPool> {
    let extra = format!(" -c default_transaction_read_only=off -c application_name={}", sync::ADMIN_APPLICATION_NAME);
    pool(cfg, DbService::Legacy, &extra).await
}

/// A pool to a split database.
///
/// Its sessions are writable even while a switch-back blocks the database, and carry
/// [`sync::ADMIN_APPLICATION_NAME`] so that block never ends them.
pub async fn split_pool(cfg: &Config, db: DbService) -> anyhow::Result<PgPool> {
    let extra = format!(" -c default_transaction_read_only=off -c application_name={}", sync::ADMIN_APPLICATION_NAME);
    pool(cfg, db, &extra).await
}
