//! `mfe db backup`: a timestamped `pg_dump -Fc` of the legacy database, restorable with
//! `pg_restore`. The dump runs through a local `pg_dump` ([`backup_with_pg_dump`]); a runtime
//! without one (docker hosts) can add its own way in [`backup_legacy`] beside it.

use crate::config::{Config, DbService, PgTarget};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a backup went.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// `pg_dump` from `PATH`, else the newest `/usr/lib/postgresql/<major>/bin/pg_dump`.
pub fn find_pg_dump() -> Option<PathBuf> {
    find_pg_tool("pg_dump")
}

/// A PostgreSQL client tool (`pg_dump`, `pg_restore`, ...) from `PATH` or the newest installed major.
pub fn find_pg_tool(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((major, p))
        })
        .collect();
    // The newest versioned binary first: pg_dump refuses servers newer than itself, and the
    // /usr/bin wrapper of Debian may pick an older one.
    candidates.sort();
    if let Some((_, p)) = candidates.pop() {
        return Some(p);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_default()
}

/// Dumps the legacy database into `out_dir/mfe_poc2-<UTC timestamp>.dump` (custom format).
pub async fn backup_legacy(cfg: &Config, out_dir: &Path) -> anyhow::Result<BackupInfo> {
    let target = cfg.pg(DbService::Legacy)?;
    // Connect first so an unreachable database gives the usual one-line error, not pg_dump's.
    crate::pg::connect(cfg, DbService::Legacy).await?.close().await;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create backup directory {}", out_dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let path = out_dir.join(format!("{}-{stamp}.dump", target.database));
    let t0 = Instant::now();
    backup_with_pg_dump(&target, &path).await?;
    let bytes = std::fs::metadata(&path).with_context(|| format!("backup file {} is missing", path.display()))?.len();
    Ok(BackupInfo { path, bytes, elapsed: t0.elapsed() })
}

/// Runs a local `pg_dump -Fc` of `target` into `path`. The password travels in the environment,
/// never on the command line (where `ps` would show it).
pub async fn backup_with_pg_dump(target: &PgTarget, path: &Path) -> anyhow::Result<()> {
    let Some(pg_dump) = find_pg_dump() else {
        bail!(
            "pg_dump not found on PATH or in /usr/lib/postgresql/*/bin — install the PostgreSQL client (apt-get install postgresql-client)"
        );
    };
    let partial = path.with_extension("dump.partial");
    let output = tokio::process::Command::new(&pg_dump)
        .arg("--format=custom")
        .arg("--no-owner")
        .arg("--host")
        .arg(&target.host)
        .arg("--port")
        .arg(target.port.to_string())
        .arg("--username")
        .arg(&target.user)
        .arg("--dbname")
        .arg(&target.database)
        .arg("--file")
        .arg(&partial)
        .env("PGPASSWORD", &target.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .with_context(|| format!("cannot run {}", pg_dump.display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no error output");
        bail!("pg_dump of {} at {} failed: {first}", target.database, target.addr());
    }
    // Renamed only when complete, so a crash never leaves a truncated file under the final name.
    std::fs::rename(&partial, path).with_context(|| format!("cannot move the dump to {}", path.display()))?;
    Ok(())
}
