//! `mfe db`: the per-service sqlx migrations (`migrations/<service>/`), their status, reverting,
//! and backups of the legacy database.
//!
//! Migrations are read at run time with [`Migrator::new`] from the service's directory (or from
//! `$MFE_MIGRATIONS_DIR/<service>` when that is set), so the binary runs whatever the directory
//! holds. Applying goes through sqlx's own [`Migrate`] implementation: its `_sqlx_migrations`
//! table, its checksums and its advisory lock, so two concurrent `mfe db migrate` runs serialise
//! instead of racing. Before anything runs, every selected service is checked for migrations that
//! were edited after they were applied; one such migration stops the whole run.
//!
//! Other commands call [`migrate_service`] / [`migrate_all`] (`mfe up`, `mfe migrate run`) and
//! [`backup_legacy`] (`mfe migrate run`).

mod backup;

pub use backup::{backup_legacy, backup_with_pg_dump, find_pg_dump, find_pg_tool, BackupInfo, DumpVia};

use crate::config::{Config, DbService};
use crate::report::{Check, Report};
use crate::Ctx;
use anyhow::{anyhow, bail, Context};
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::postgres::PgConnection;
use sqlx::PgPool;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (default: auth, payments, admin, profile).
    Migrate(ServiceSelection),
    /// Applied and pending migrations and checksum state per service.
    Status(ServiceSelection),
    /// Revert the latest applied migration of one service.
    Revert(RevertArgs),
    /// Dump the legacy database (pg_dump custom format) to a timestamped file.
    Backup(BackupArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceSelection {
    /// Service database: auth, payments, admin, profile, legacy, or `all` (the five); repeatable.
    /// Without it, the four split services.
    #[arg(long, short = 's', value_name = "SERVICE", value_parser = service_name)]
    pub service: Vec<String>,
}

impl ServiceSelection {
    /// The services named, in the order given; the four split services when none is.
    pub fn resolve(&self) -> anyhow::Result<Vec<DbService>> {
        if self.service.is_empty() {
            return Ok(DbService::SPLIT.to_vec());
        }
        let mut out = Vec::new();
        for name in &self.service {
            let chosen = if name.eq_ignore_ascii_case("all") {
                let mut all = DbService::SPLIT.to_vec();
                all.push(DbService::Legacy);
                all
            } else {
                vec![DbService::parse(name)?]
            };
            for s in chosen {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }
}

/// Checks a `--service` value while parsing, so a wrong name is a usage error (exit 2).
fn service_name(s: &str) -> Result<String, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(s.to_string());
    }
    DbService::parse(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct RevertArgs {
    /// Service database to revert: auth, payments, admin, profile or legacy.
    #[arg(long, short = 's', value_name = "SERVICE", value_parser = service_name)]
    pub service: String,
    /// Revert every applied migration of the service (back to an empty schema).
    #[arg(long, conflicts_with = "target_version")]
    pub all: bool,
    /// Revert every applied migration newer than this version.
    #[arg(long, value_name = "VERSION")]
    pub target_version: Option<i64>,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Directory the dump is written to (created if missing).
    #[arg(long, value_name = "DIR", default_value = "backups")]
    pub out: PathBuf,
    /// Which pg_dump: a local one as new as the server, else the one in the database's
    /// container (docker runtime); `local` or `container` forces one.
    #[arg(long = "pg-dump", value_enum, default_value_t = DumpVia::Auto)]
    pub pg_dump: DumpVia,
}

/// One migration applied or reverted by this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStep {
    pub version: i64,
    pub description: String,
    pub elapsed: Duration,
}

/// What [`migrate_service`] did to one database.
#[derive(Debug, Clone)]
pub struct MigrateOutcome {
    pub service: DbService,
    /// Migrations this run applied, oldest first (empty when the database was up to date).
    pub applied: Vec<MigrationStep>,
    /// Migrations the directory holds (up migrations).
    pub n_known: usize,
}

impl MigrateOutcome {
    pub fn n_applied(&self) -> usize {
        self.applied.len()
    }
}

/// Which migrations [`revert_service`] undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertTarget {
    /// The most recently applied one.
    Latest,
    /// Every applied one newer than this version.
    Version(i64),
    /// All of them.
    All,
}

/// The migrations directory of a service: `$MFE_MIGRATIONS_DIR/<service>` when that variable is
/// set (tests and edited copies), else `migrations/<service>` of the repository.
pub fn migrations_dir(cfg: &Config, db: DbService) -> PathBuf {
    match mfe_core::env::lookup("MFE_MIGRATIONS_DIR") {
        Some(root) => PathBuf::from(root).join(db.name()),
        _ => cfg.migrations_dir(db),
    }
}

/// The service's migrations, read from disk now.
pub async fn load_migrator(cfg: &Config, db: DbService) -> anyhow::Result<Migrator> {
    let dir = migrations_dir(cfg, db);
    if !dir.is_dir() {
        bail!(
            "{db}: migrations directory {} does not exist — run mfe from the repository or set MFE_ROOT",
            dir.display()
        );
    }
    Migrator::new(dir.as_path()).await.map_err(|e| anyhow!("{db}: cannot read migrations from {}: {e}", dir.display()))
}

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
struct AppliedRow {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
}

/// The applied migrations without creating anything (status must not write).
async fn read_applied(pool: &PgPool) -> anyhow::Result<Vec<AppliedRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(version, checksum, success)| AppliedRow { version, checksum, success }).collect())
}

fn up_migrations(migrator: &Migrator) -> impl Iterator<Item = &Migration> {
    migrator.iter().filter(|m| !m.migration_type.is_down_migration())
}

/// Refuses a database whose applied migrations no longer match the directory: edited after being
/// applied (checksum), missing from the directory, or left dirty by a failed run.
fn verify_applied(db: DbService, migrator: &Migrator, applied: &[AppliedRow]) -> anyhow::Result<()> {
    let known: HashMap<i64, &Migration> = up_migrations(migrator).map(|m| (m.version, m)).collect();
    for row in applied {
        if !row.success {
            bail!(
                "{db}: migration {} failed partway earlier (dirty) — repair the schema by hand, then delete its row from _sqlx_migrations",
                row.version
            );
        }
        match known.get(&row.version) {
            None => bail!(
                "{db}: migration {} is applied but missing from {} — restore the file or revert with an older mfe",
                row.version,
                "the migrations directory"
            ),
            Some(m) if m.checksum.as_ref() != row.checksum.as_slice() => {
                bail!("{db}: migration {} was changed after it was applied (checksum mismatch)", row.version)
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn migrate_error(db: DbService, e: MigrateError) -> anyhow::Error {
    match e {
        MigrateError::VersionMismatch(v) => {
            anyhow!("{db}: migration {v} was changed after it was applied (checksum mismatch)")
        }
        MigrateError::Dirty(v) => anyhow!("{db}: migration {v} failed partway earlier (dirty) — repair it by hand"),
        MigrateError::ExecuteMigration(e, v) => {
            anyhow!("{db}: migration {v} failed: {}", crate::pg::short_sqlx_error(&e))
        }
        MigrateError::Execute(e) => anyhow!("{db}: {}", crate::pg::short_sqlx_error(&e)),
        other => anyhow!("{db}: {other}"),
    }
}

/// Runs `work` while holding sqlx's migration advisory lock on `conn`, releasing it afterwards
/// whether or not `work` succeeded.
async fn with_migration_lock<T>(
    db: DbService,
    conn: &mut PgConnection,
    work: impl for<'c> FnOnce(&'c mut PgConnection) -> futures::future::BoxFuture<'c, anyhow::Result<T>>,
) -> anyhow::Result<T> {
    conn.lock().await.map_err(|e| migrate_error(db, e))?;
    let result = work(&mut *conn).await;
    let unlocked = conn.unlock().await.map_err(|e| migrate_error(db, e));
    let value = result?;
    unlocked?;
    Ok(value)
}

/// Applies the pending migrations of one service database and returns what it applied.
///
/// Refuses to run anything when an applied migration was edited since (checksum mismatch).
pub async fn migrate_service(cfg: &Config, db: DbService) -> anyhow::Result<MigrateOutcome> {
    let migrator = load_migrator(cfg, db).await?;
    let pool = crate::pg::connect(cfg, db).await?;
    let outcome = migrate_pool(db, &migrator, &pool).await;
    pool.close().await;
    outcome
}

async fn migrate_pool(db: DbService, migrator: &Migrator, pool: &PgPool) -> anyhow::Result<MigrateOutcome> {
    verify_applied(
        db,
        migrator,
        &read_applied(pool).await.with_context(|| format!("{db}: reading _sqlx_migrations"))?,
    )?;
    let mut conn = pool.acquire().await.with_context(|| format!("{db}: acquiring a connection"))?;
    let migrations: Vec<Migration> = up_migrations(migrator).cloned().collect();
    let n_known = migrations.len();
    let applied = with_migration_lock(db, &mut conn, move |conn| {
        Box::pin(async move {
            // Checked again under the lock: another run may have applied (or edited) meanwhile.
            conn.ensure_migrations_table().await.map_err(|e| migrate_error(db, e))?;
            if let Some(v) = conn.dirty_version().await.map_err(|e| migrate_error(db, e))? {
                return Err(migrate_error(db, MigrateError::Dirty(v)));
            }
            let already: HashMap<i64, Vec<u8>> = conn
                .list_applied_migrations()
                .await
                .map_err(|e| migrate_error(db, e))?
                .into_iter()
                .map(|m| (m.version, m.checksum.into_owned()))
                .collect();
            let mut steps = Vec::new();
            for m in &migrations {
                match already.get(&m.version) {
                    Some(sum) if sum.as_slice() != m.checksum.as_ref() => {
                        return Err(migrate_error(db, MigrateError::VersionMismatch(m.version)));
                    }
                    Some(_) => {}
                    None => {
                        let elapsed = conn.apply(m).await.map_err(|e| migrate_error(db, e))?;
                        steps.push(MigrationStep {
                            version: m.version,
                            description: m.description.to_string(),
                            elapsed,
                        });
                    }
                }
            }
            Ok(steps)
        })
    })
    .await?;
    Ok(MigrateOutcome { service: db, applied, n_known })
}

/// Migrates several services: first checks every one of them for edited migrations (nothing runs
/// if any is found), then applies each one's pending migrations in the order given.
pub async fn migrate_all(cfg: &Config, services: &[DbService]) -> anyhow::Result<Vec<MigrateOutcome>> {
    let mut prepared = Vec::new();
    for &db in services {
        let migrator = load_migrator(cfg, db).await?;
        let pool = crate::pg::connect(cfg, db).await?;
        let applied = read_applied(&pool).await.with_context(|| format!("{db}: reading _sqlx_migrations"))?;
        verify_applied(db, &migrator, &applied)?;
        prepared.push((db, migrator, pool));
    }
    let mut outcomes = Vec::new();
    for (db, migrator, pool) in prepared {
        let outcome = migrate_pool(db, &migrator, &pool).await;
        pool.close().await;
        outcomes.push(outcome?);
    }
    Ok(outcomes)
}

/// Reverts applied migrations of one service (newest first) and returns what it reverted.
pub async fn revert_service(cfg: &Config, db: DbService, target: RevertTarget) -> anyhow::Result<Vec<MigrationStep>> {
    let migrator = load_migrator(cfg, db).await?;
    let pool = crate::pg::connect(cfg, db).await?;
    verify_applied(db, &migrator, &read_applied(&pool).await?)?;
    let downs: HashMap<i64, Migration> =
        migrator.iter().filter(|m| m.migration_type.is_down_migration()).map(|m| (m.version, m.clone())).collect();
    let mut conn = pool.acquire().await?;
    let result = with_migration_lock(db, &mut conn, move |conn| {
        Box::pin(async move {
            conn.ensure_migrations_table().await.map_err(|e| migrate_error(db, e))?;
            let mut applied: Vec<i64> = conn
                .list_applied_migrations()
                .await
                .map_err(|e| migrate_error(db, e))?
                .into_iter()
                .map(|m| m.version)
                .collect();
            applied.sort_unstable();
            let chosen: Vec<i64> = match target {
                RevertTarget::Latest => applied.last().copied().into_iter().collect(),
                RevertTarget::Version(v) => applied.iter().copied().filter(|&a| a > v).collect(),
                RevertTarget::All => applied.clone(),
            };
            let mut steps = Vec::new();
            for version in chosen.into_iter().rev() {
                let down = downs
                    .get(&version)
                    .ok_or_else(|| anyhow!("{db}: migration {version} has no .down.sql — it cannot be reverted"))?;
                let elapsed = conn.revert(down).await.map_err(|e| migrate_error(db, e))?;
                steps.push(MigrationStep { version, description: down.description.to_string(), elapsed });
            }
            Ok(steps)
        })
    })
    .await;
    drop(conn);
    pool.close().await;
    result
}

/// The migration state of one service database.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub service: DbService,
    pub n_applied: usize,
    pub n_pending: usize,
    pub last_version: Option<i64>,
    /// Versions applied whose file changed since (or vanished, or failed partway).
    pub mismatched: Vec<i64>,
}

/// Reads (never writes) the migration state of one service database.
pub async fn service_status(cfg: &Config, db: DbService) -> anyhow::Result<ServiceStatus> {
    let migrator = load_migrator(cfg, db).await?;
    let pool = crate::pg::connect(cfg, db).await?;
    let applied = read_applied(&pool).await.with_context(|| format!("{db}: reading _sqlx_migrations"));
    pool.close().await;
    let applied = applied?;
    let known: HashMap<i64, &Migration> = up_migrations(&migrator).map(|m| (m.version, m)).collect();
    let mismatched = applied
        .iter()
        .filter(|r| !r.success || known.get(&r.version).is_none_or(|m| m.checksum.as_ref() != r.checksum.as_slice()))
        .map(|r| r.version)
        .collect();
    let applied_versions: Vec<i64> = applied.iter().map(|r| r.version).collect();
    Ok(ServiceStatus {
        service: db,
        n_applied: applied.len(),
        n_pending: known.keys().filter(|v| !applied_versions.contains(v)).count(),
        last_version: applied_versions.iter().max().copied(),
        mismatched,
    })
}

/// The `db status` report: one check per service, passed when fully applied with matching checksums.
pub async fn status_report(cfg: &Config, services: &[DbService]) -> Report {
    let mut report = Report::new("db status");
    for &db in services {
        let check = match service_status(cfg, db).await {
            Ok(s) => {
                let checksum_ok = s.mismatched.is_empty();
                let last = s.last_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                let mut detail = format!("{} applied, {} pending, last {last}", s.n_applied, s.n_pending);
                if !checksum_ok {
                    let list: Vec<String> = s.mismatched.iter().map(|v| v.to_string()).collect();
                    detail.push_str(&format!(", changed after applying: {}", list.join(", ")));
                }
                Check::new(db.name(), s.n_pending == 0 && checksum_ok, detail)
                    .metric("applied", s.n_applied)
                    .metric("pending", s.n_pending)
                    .metric("last_version", s.last_version)
                    .metric("checksum_ok", checksum_ok)
            }
            Err(e) => Check::new(db.name(), false, crate::error_line(&e)),
        };
        report.push(check);
    }
    report
}

pub async fn run(ctx: &Ctx, args: DbArgs) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    match args.command {
        DbCommand::Migrate(sel) => {
            let services = sel.resolve()?;
            let outcomes = migrate_all(cfg, &services).await?;
            let mut report = Report::new("db migrate");
            for o in &outcomes {
                for step in &o.applied {
                    eprintln!(
                        "{}: applied {} {} ({} ms)",
                        o.service,
                        step.version,
                        step.description,
                        step.elapsed.as_millis()
                    );
                }
                let detail = if o.applied.is_empty() {
                    format!("up to date ({} migrations)", o.n_known)
                } else {
                    format!("applied {} of {} migrations", o.applied.len(), o.n_known)
                };
                eprintln!("{}: {detail}", o.service);
                report.push(Check::new(o.service.name(), true, detail).metric("applied", o.n_applied()));
            }
            if ctx.json {
                report.emit(true)?;
            }
            Ok(())
        }
        DbCommand::Status(sel) => status_report(cfg, &sel.resolve()?).await.emit(ctx.json),
        DbCommand::Revert(a) => {
            let db = DbService::parse(&a.service)?;
            let target = match (a.all, a.target_version) {
                (true, _) => RevertTarget::All,
                (false, Some(v)) => RevertTarget::Version(v),
                (false, None) => RevertTarget::Latest,
            };
            let steps = revert_service(cfg, db, target).await?;
            if steps.is_empty() {
                eprintln!("{db}: nothing to revert");
            }
            let mut report = Report::new("db revert");
            for s in &steps {
                eprintln!("{db}: reverted {} {} ({} ms)", s.version, s.description, s.elapsed.as_millis());
                report.push(Check::new(format!("{db}:{}", s.version), true, format!("reverted {}", s.description)));
            }
            if ctx.json {
                report.emit(true)?;
            }
            Ok(())
        }
        DbCommand::Backup(a) => {
            let out = if a.out.is_absolute() { a.out.clone() } else { std::env::current_dir()?.join(&a.out) };
            let info = backup_legacy(cfg, &out, a.pg_dump, backup::BACKUP_COMPRESS).await?;
            eprintln!(
                "backup: {} ({:.1} MB) in {:.1} s",
                info.path.display(),
                info.bytes as f64 / 1e6,
                info.elapsed.as_secs_f64()
            );
            if ctx.json {
                let v = serde_json::json!({"command": "db backup", "path": info.path, "bytes": info.bytes,
                    "seconds": info.elapsed.as_secs_f64()});
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(())
        }
    }
}
