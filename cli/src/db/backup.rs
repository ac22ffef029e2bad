//! `mfe db backup`: a timestamped `pg_dump -Fc` of the legacy database, restorable with
//! `pg_restore`.
//!
//! Which `pg_dump` ([`choose`]): a local one whose major version is at least the server's
//! (pg_dump refuses newer servers); else, when the server runs in mfe's docker stack, the
//! `pg_dump` inside its container, through the Docker API (`exec`, output streamed to the file) —
//! a docker-only host needs no PostgreSQL client. `--pg-dump local|container` forces one.
//!
//! Compression: `mfe db backup` writes zlib level 1 (the fastest), a file to keep; `mfe migrate
//! run` writes its backup uncompressed by default (`--backup-compress`), because there it is
//! part of the write freeze and pg_dump compresses on one core. On the benchmark's 4.4 M rows,
//! alternating rounds: level 1 took 19.5 and 17.3 s for 271 MB, level 0 took 11.0 and 9.2 s for
//! 822 MB — about as much disk as the export files beside it.

/// The compression level of `mfe db backup`.
pub const BACKUP_COMPRESS: u8 = 1;

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

/// Where `pg_dump` runs (`--pg-dump`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DumpVia {
    /// A local pg_dump as new as the server, else the one in the server's container.
    #[default]
    Auto,
    /// The local pg_dump (PATH or /usr/lib/postgresql/*/bin).
    Local,
    /// The pg_dump inside the database's container of the docker runtime.
    Container,
}

/// The pg_dump [`choose`] picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumper {
    Local(PathBuf),
    Container,
}

/// What [`choose`] decides from.
#[derive(Debug, Clone)]
pub struct DumpFacts {
    pub server_major: u32,
    /// The local pg_dump and its major version, if there is one.
    pub local: Option<(PathBuf, u32)>,
    /// The server runs in a container of mfe's docker stack.
    pub in_container: bool,
}

/// Picks the pg_dump for `via`; `Err` is the one line saying what to install or start.
pub fn choose(via: DumpVia, facts: &DumpFacts) -> Result<Dumper, String> {
    let major = facts.server_major;
    let local_fits = facts.local.as_ref().filter(|(_, m)| *m >= major).map(|(p, _)| p.clone());
    let install = format!("install the PostgreSQL {major} client (`apt-get install postgresql-client-{major}`)");
    let local_line = match &facts.local {
        Some((p, m)) => format!("the local {} is version {m}, older than the server's {major}", p.display()),
        None => "no pg_dump on PATH or in /usr/lib/postgresql/*/bin".to_string(),
    };
    match via {
        DumpVia::Local => local_fits.map(Dumper::Local).ok_or_else(|| format!("{local_line} — {install}")),
        DumpVia::Container if facts.in_container => Ok(Dumper::Container),
        DumpVia::Container => Err(format!(
            "--pg-dump container: legacy_db does not run in a container of this stack (docker runtime) — {install} and use --pg-dump local"
        )),
        DumpVia::Auto => match (local_fits, facts.in_container) {
            (Some(p), _) => Ok(Dumper::Local(p)),
            (None, true) => Ok(Dumper::Container),
            (None, false) => Err(format!(
                "{local_line}, and legacy_db does not run in mfe's docker stack (where its container's pg_dump would do) — {install}"
            )),
        },
    }
}

/// The major version of a pg_dump binary (`pg_dump (PostgreSQL) 15.10 (Debian …)` → 15).
fn pg_dump_major(path: &Path) -> Option<u32> {
    let out = std::process::Command::new(path).arg("--version").output().ok()?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major(version_line: &str) -> Option<u32> {
    let version = version_line.split(')').nth(1)?.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

/// Dumps the legacy database into `out_dir/mfe_poc2-<UTC timestamp>.dump` (custom format).
/// `compress` is pg_dump's `--compress` level (0–9).
pub async fn backup_legacy(cfg: &Config, out_dir: &Path, via: DumpVia, compress: u8) -> anyhow::Result<BackupInfo> {
    let target = cfg.pg(DbService::Legacy)?;
    // Connect first so an unreachable database gives the usual one-line error, not pg_dump's.
    let pool = crate::pg::connect(cfg, DbService::Legacy).await?;
    let version: i32 =
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int4").fetch_one(&pool).await?;
    pool.close().await;
    let local = find_pg_dump().and_then(|p| pg_dump_major(&p).map(|m| (p, m)));
    let local_fits = local.as_ref().is_some_and(|(_, m)| *m as i32 >= version / 10000);
    let docker = if via == DumpVia::Local || (via == DumpVia::Auto && local_fits) {
        Err("not needed".to_string())
    } else {
        legacy_container(cfg).await
    };
    let facts = DumpFacts { server_major: (version / 10000) as u32, local, in_container: docker.is_ok() };
    let dumper = choose(via, &facts).map_err(|e| match &docker {
        Err(why) if via != DumpVia::Local => anyhow::anyhow!("cannot back up legacy_db: {e} ({why})"),
        _ => anyhow::anyhow!("cannot back up legacy_db: {e}"),
    })?;
    let docker = docker.ok();
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create backup directory {}", out_dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let path = out_dir.join(format!("{}-{stamp}.dump", target.database));
    let t0 = Instant::now();
    match (dumper, docker) {
        (Dumper::Local(pg_dump), _) => backup_with_pg_dump(&pg_dump, &target, &path, compress).await?,
        (Dumper::Container, Some(docker)) => backup_in_container(&docker, &target, &path, compress).await?,
        (Dumper::Container, None) => unreachable!("choose picks the container only when there is one"),
    }
    let bytes = std::fs::metadata(&path).with_context(|| format!("backup file {} is missing", path.display()))?.len();
    Ok(BackupInfo { path, bytes, elapsed: t0.elapsed() })
}

/// The docker runtime, when legacy_db runs in a container of it (and not on mfe's native
/// runtime); else why not.
async fn legacy_container(cfg: &Config) -> Result<crate::infra::docker::Docker, String> {
    let component = DbService::Legacy.component();
    if crate::infra::native::Native::new(cfg).pid(component).is_some() {
        return Err("legacy_db runs on the native runtime".into());
    }
    let docker = crate::infra::docker::Docker::connect(cfg).await.map_err(|e| crate::error_line(&e))?;
    match docker.is_running(component.name()).await {
        Ok(true) => Ok(docker),
        Ok(false) => Err(format!("no running {} container in project {}", component.name(), docker.project())),
        Err(e) => Err(crate::error_line(&e)),
    }
}

/// `pg_dump` inside legacy_db's container, to its own server (the container's port 5432), its
/// output streamed into `path` through the Docker API.
async fn backup_in_container(
    docker: &crate::infra::docker::Docker,
    target: &PgTarget,
    path: &Path,
    compress: u8,
) -> anyhow::Result<()> {
    let partial = path.with_extension("dump.partial");
    let mut file = std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let password = crate::migrate::sync::url_password(target);
    let compress = format!("--compress={compress}");
    let cmd = [
        "pg_dump",
        "--format=custom",
        &compress,
        "--no-owner",
        "--host=127.0.0.1",
        "--port=5432",
        "--username",
        &target.user,
        "--dbname",
        &target.database,
    ];
    let result = docker
        .exec_to_writer(DbService::Legacy.component().name(), &cmd, &[format!("PGPASSWORD={password}")], &mut file)
        .await
        .and_then(|()| file.sync_all().context("cannot flush the dump"));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        bail!("pg_dump of {} in its container failed: {}", target.database, crate::error_line(&e));
    }
    std::fs::rename(&partial, path).with_context(|| format!("cannot move the dump to {}", path.display()))?;
    Ok(())
}

/// Runs a local `pg_dump -Fc` of `target` into `path`. The password travels in the environment,
/// never on the command line (where `ps` would show it).
pub async fn backup_with_pg_dump(pg_dump: &Path, target: &PgTarget, path: &Path, compress: u8) -> anyhow::Result<()> {
    let partial = path.with_extension("dump.partial");
    let output = tokio::process::Command::new(pg_dump)
        .arg("--format=custom")
        .arg(format!("--compress={compress}"))
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
        .env("PGPASSWORD", crate::migrate::sync::url_password(target))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(local: Option<u32>, in_container: bool) -> DumpFacts {
        DumpFacts {
            server_major: 15,
            local: local.map(|m| (PathBuf::from(format!("/usr/lib/postgresql/{m}/bin/pg_dump")), m)),
            in_container,
        }
    }

    #[test]
    fn a_local_pg_dump_as_new_as_the_server_wins_else_the_container_else_one_line_to_install() {
        assert_eq!(
            choose(DumpVia::Auto, &facts(Some(16), true)),
            Ok(Dumper::Local("/usr/lib/postgresql/16/bin/pg_dump".into()))
        );
        assert_eq!(choose(DumpVia::Auto, &facts(Some(14), true)), Ok(Dumper::Container));
        assert_eq!(choose(DumpVia::Auto, &facts(None, true)), Ok(Dumper::Container));
        let e = choose(DumpVia::Auto, &facts(Some(14), false)).unwrap_err();
        assert!(e.contains("version 14, older than the server's 15") && e.contains("postgresql-client-15"), "{e}");
        let e = choose(DumpVia::Auto, &facts(None, false)).unwrap_err();
        assert!(e.contains("no pg_dump on PATH") && e.contains("apt-get install postgresql-client-15"), "{e}");
    }

    #[test]
    fn a_forced_choice_is_honoured_or_refused_with_what_to_do() {
        assert_eq!(choose(DumpVia::Container, &facts(Some(15), true)), Ok(Dumper::Container));
        assert!(choose(DumpVia::Container, &facts(Some(15), false)).unwrap_err().contains("--pg-dump local"));
        assert!(choose(DumpVia::Local, &facts(None, true)).unwrap_err().contains("postgresql-client-15"));
    }

    #[test]
    fn the_major_version_is_read_from_pg_dump_version_lines() {
        assert_eq!(parse_major("pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n"), Some(15));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else"), None);
    }
}
