//! `manifest.json`: what an export wrote, so an import can refuse anything else.
//!
//! The manifest is written last (to a temporary name, then renamed), so a directory with a
//! manifest holds a complete export; `import` checks every file's size and sha256 against it
//! before it writes a single row.

use super::checksum::file_sha256;
use super::tables;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "mfe-migration/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`FORMAT`]; another value is refused.
    pub format: String,
    /// Version of `mfe` that wrote the export.
    pub tool_version: String,
    /// When the export finished (UTC, RFC 3339).
    pub created_at: String,
    pub source: Source,
    pub tables: Vec<TableEntry>,
}

/// The legacy database and the snapshot every table was read from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// `host:port/database`.
    pub database: String,
    pub server_version: String,
    /// Start of the REPEATABLE READ transaction all tables were read in (server clock, UTC).
    pub snapshot_time: String,
    /// The exported snapshot id the parallel readers shared (`service=id,...` when each service
    /// was read from the snapshot of its own replication slot).
    pub snapshot_id: String,
}

/// One exported table: a binary COPY file of its legacy columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    pub service: String,
    pub table: String,
    /// Path relative to the manifest's directory.
    pub file: String,
    /// `binary` (PostgreSQL binary COPY format).
    pub copy_format: String,
    pub columns: Vec<String>,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Order-independent checksum of the rows: wrapping sum of the xxh3-64 of every tuple.
    pub content_checksum: String,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Reads and sanity-checks `dir/manifest.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: not found — run `mfe migrate export --out {}` first", path.display(), dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let manifest: Manifest = serde_json::from_str(&text).with_context(|| {
            format!("{} is not a valid export manifest — re-run `mfe migrate export`", path.display())
        })?;
        if manifest.format != FORMAT {
            bail!(
                "{}: unknown format `{}` (expected {FORMAT}) — re-run `mfe migrate export`",
                path.display(),
                manifest.format
            );
        }
        for entry in &manifest.tables {
            let Some(spec) = tables::table(&entry.table) else {
                bail!("{}: unknown table `{}` — re-run `mfe migrate export`", path.display(), entry.table);
            };
            if entry.service != spec.service.name() || entry.columns != spec.columns || entry.copy_format != "binary" {
                bail!(
                    "{}: table `{}` does not match this version of mfe (service, columns or format differ) — re-run `mfe migrate export`",
                    path.display(),
                    entry.table
                );
            }
            if entry.file.contains("..") || Path::new(&entry.file).is_absolute() {
                bail!("{}: file `{}` escapes the export directory", path.display(), entry.file);
            }
        }
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The entry of a table.
    pub fn entry(&self, table: &str) -> Option<&TableEntry> {
        self.tables.iter().find(|t| t.table == table)
    }
}

/// Checks that every listed file exists with the manifest's size and sha256, in parallel; the
/// first problem is one line naming the file.
pub async fn verify_files(dir: &Path, entries: &[TableEntry]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for entry in entries.iter().cloned() {
        let path = dir.join(&entry.file);
        tasks.push(tokio::task::spawn_blocking(move || verify_file(&path, &entry)));
    }
    for task in tasks {
        task.await.context("file verification task panicked")??;
    }
    Ok(())
}

fn verify_file(path: &Path, entry: &TableEntry) -> anyhow::Result<()> {
    let refuse = |why: String| -> anyhow::Error {
        anyhow::anyhow!("import refused: {} {why} — re-run `mfe migrate export`; nothing was written", path.display())
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(refuse("is missing".into())),
        Err(e) => return Err(refuse(format!("cannot be read ({e})"))),
    };
    if meta.len() != entry.bytes {
        return Err(refuse(format!(
            "is {} bytes, the manifest says {} (truncated or altered)",
            meta.len(),
            entry.bytes
        )));
    }
    let (sha, _) = file_sha256(path).map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if sha != entry.sha256 {
        return Err(refuse("does not match its sha256 in the manifest (altered)".into()));
    }
    Ok(())
}
