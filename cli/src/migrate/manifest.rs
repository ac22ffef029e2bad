//! `manifest.json`: what an export wrote, so an import can refuse anything else.
//!
//! The manifest is written last (to a temporary name, then renamed), so a directory with a
//! manifest holds a complete export; `import` checks every file's size and sha256 against it
//! before it writes a single row. Its sha256 names the export in the split databases'
//! bookkeeping: an import run again with the same manifest resumes from its checkpoints.
//!
//! Format 2 (`mfe-migration/2`) lists each table as one or more chunks, each its own file (a
//! range of the legacy table's heap pages); format 1 had one file per table and is refused
//! with the line to re-export, as is any format this version does not know.

use super::checksum::file_sha256;
use super::tables;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const FORMAT: &str = "mfe-migration/2";

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

/// One exported table: its legacy columns, in one or more binary COPY files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    pub service: String,
    pub table: String,
    /// `binary` (PostgreSQL binary COPY format).
    pub copy_format: String,
    pub columns: Vec<String>,
    /// Rows of the whole table (the sum over its chunks).
    pub rows: u64,
    /// Bytes of all its files.
    pub bytes: u64,
    /// Order-independent checksum of the rows: wrapping sum of the xxh3-64 of every tuple (so
    /// also the wrapping sum of the chunks' checksums).
    pub content_checksum: String,
    /// The files, in heap order; one for a small table.
    pub chunks: Vec<ChunkEntry>,
}

/// One file of a table: the rows of a range of its heap pages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkEntry {
    /// Path relative to the manifest's directory.
    pub file: String,
    /// First heap page of the range (`ctid >= (first_page,0)`).
    pub first_page: u64,
    /// End of the range (`ctid < (end_page,0)`); none for the last chunk, which reads to the end.
    pub end_page: Option<u64>,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    pub content_checksum: String,
}

impl TableEntry {
    /// The table's file, or its first and last chunk files, for reports.
    pub fn files(&self) -> String {
        match self.chunks.as_slice() {
            [] => String::new(),
            [one] => one.file.clone(),
            [first, .., last] => format!("{} … {} ({} chunk files)", first.file, last.file, self.chunks.len()),
        }
    }
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
        // The format first, alone: a manifest of another format need not parse as this one.
        #[derive(Deserialize)]
        struct Format {
            format: Option<String>,
        }
        let invalid = || format!("{} is not a valid export manifest — re-run `mfe migrate export`", path.display());
        let format = serde_json::from_str::<Format>(&text).with_context(invalid)?.format.unwrap_or_default();
        if format != FORMAT {
            let known = if format == "mfe-migration/1" { " (one file per table, written by an older mfe)" } else { "" };
            bail!(
                "{}: export format `{format}`{known} is not the one this mfe reads ({FORMAT}) — re-run `mfe migrate export` with this mfe; nothing was written",
                path.display()
            );
        }
        let manifest: Manifest = serde_json::from_str(&text).with_context(invalid)?;
        let mut files = HashSet::new();
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
            let chunk_rows: u64 = entry.chunks.iter().map(|c| c.rows).sum();
            if entry.chunks.is_empty() || chunk_rows != entry.rows {
                bail!(
                    "{}: table `{}` lists {} chunk(s) holding {chunk_rows} rows, not its {} rows — re-run `mfe migrate export`",
                    path.display(),
                    entry.table,
                    entry.chunks.len(),
                    entry.rows
                );
            }
            for chunk in &entry.chunks {
                if chunk.file.contains("..") || Path::new(&chunk.file).is_absolute() {
                    bail!("{}: file `{}` escapes the export directory", path.display(), chunk.file);
                }
                if !files.insert(chunk.file.as_str()) {
                    bail!("{}: file `{}` is listed twice — re-run `mfe migrate export`", path.display(), chunk.file);
                }
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

/// Checks that every listed file exists with the manifest's size and sha256, as many at a time
/// as there are cores (hashing is CPU-bound); the first problem is one line naming the file.
pub async fn verify_files(dir: &Path, entries: &[TableEntry]) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let chunks: Vec<ChunkEntry> = entries.iter().flat_map(|e| e.chunks.iter().cloned()).collect();
    let n_cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    futures::stream::iter(chunks)
        .map(|chunk| {
            let path = dir.join(&chunk.file);
            async move {
                tokio::task::spawn_blocking(move || verify_file(&path, &chunk))
                    .await
                    .context("file verification task panicked")?
            }
        })
        .buffer_unordered(n_cores)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn verify_file(path: &Path, entry: &ChunkEntry) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(Manifest::path(dir), text).unwrap();
    }

    fn manifest(chunks: Vec<ChunkEntry>, rows: u64) -> Manifest {
        let spec = tables::table("payments").unwrap();
        Manifest {
            format: FORMAT.into(),
            tool_version: "0".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            source: Source {
                database: "h:1/db".into(),
                server_version: "15".into(),
                snapshot_time: "t".into(),
                snapshot_id: "s".into(),
            },
            tables: vec![TableEntry {
                service: "payments".into(),
                table: "payments".into(),
                copy_format: "binary".into(),
                columns: spec.columns.iter().map(|c| c.to_string()).collect(),
                rows,
                bytes: 0,
                content_checksum: "0".into(),
                chunks,
            }],
        }
    }

    fn chunk(file: &str, rows: u64) -> ChunkEntry {
        ChunkEntry {
            file: file.into(),
            first_page: 0,
            end_page: None,
            rows,
            bytes: 0,
            sha256: String::new(),
            content_checksum: "0".into(),
        }
    }

    #[test]
    fn a_manifest_of_format_1_or_of_an_unknown_format_is_refused_with_one_line_saying_to_re_export() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), r#"{"format": "mfe-migration/1", "tables": [{"file": "x"}]}"#);
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("`mfe-migration/1`")
                && err.contains("older mfe")
                && err.contains("re-run `mfe migrate export`"),
            "{err}"
        );
        write(dir.path(), r#"{"format": "mfe-migration/9"}"#);
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`mfe-migration/9`") && err.contains(FORMAT) && !err.contains('\n'), "{err}");
    }

    #[test]
    fn a_manifest_round_trips_and_its_chunks_must_add_up_and_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            manifest(vec![chunk("payments/payments.0000.pgcopy", 2), chunk("payments/payments.0001.pgcopy", 3)], 5);
        good.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), good);
        assert_eq!(
            good.tables[0].files(),
            "payments/payments.0000.pgcopy … payments/payments.0001.pgcopy (2 chunk files)"
        );

        manifest(vec![chunk("payments/a.pgcopy", 2)], 5).write(dir.path()).unwrap();
        assert!(Manifest::read(dir.path()).unwrap_err().to_string().contains("holding 2 rows, not its 5"));
        manifest(vec![chunk("../a.pgcopy", 5)], 5).write(dir.path()).unwrap();
        assert!(Manifest::read(dir.path()).unwrap_err().to_string().contains("escapes"));
        manifest(vec![chunk("a", 2), chunk("a", 3)], 5).write(dir.path()).unwrap();
        assert!(Manifest::read(dir.path()).unwrap_err().to_string().contains("listed twice"));
    }
}
