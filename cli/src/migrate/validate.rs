//! `mfe migrate validate`: legacy vs split, table by table, plus cross-service references.
//!
//! Per table, both sides run the same count + content-checksum query at the same time
//! ([`checksum::table_checksum_sql`]): one sequential scan each, no sort. Only on a mismatch are
//! the rows walked: `(id, md5)` streams of both sides, ordered by id byte-wise, merged to name
//! missing, extra and changed rows (counts, and up to [`N_SAMPLES`] ids of each kind).
//!
//! References: every distinct user id a split table holds (payments.sender_id, ...) must be an
//! `auth_db.users.id`; ids stream from the child database and are looked up in chunks, one
//! column at a time beside the table checks.

use super::checksum;
use super::progress::StepStats;
use super::tables::{self, quote_ident, TableSpec};
use crate::config::{Config, DbService};
use crate::report::Check;
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

/// Sample ids reported per kind of mismatch.
pub const N_SAMPLES: usize = 10;
/// Ids looked up in auth_db per query.
const REF_CHUNK: usize = 10_000;

/// Validates the tables of `services`; one check per table and per reference column.
pub async fn validate(cfg: &Config, services: &[DbService]) -> anyhow::Result<(Vec<Check>, StepStats)> {
    let started = Instant::now();
    let legacy = super::legacy_pool(cfg).await?;
    let mut pools: HashMap<DbService, PgPool> = HashMap::new();
    let mut needed = services.to_vec();
    if !needed.contains(&DbService::Auth) && tables::tables_of(services).iter().any(|t| !t.user_refs.is_empty()) {
        needed.push(DbService::Auth);
    }
    for db in needed {
        pools.insert(db, super::split_pool(cfg, db).await?);
    }
    let specs = tables::tables_of(services);
    // Tables and references at once: a table check keeps two servers busy (one scan each side),
    // a reference check mostly one, so together they fill both cores of a small machine.
    let table_checks = futures::stream::iter(specs.iter().copied())
        .map(|spec| validate_table(&legacy, &pools[&spec.service], spec))
        .buffered(2)
        .try_collect::<Vec<(Check, u64)>>();
    let ref_jobs: Vec<(&TableSpec, &str)> =
        specs.iter().flat_map(|spec| spec.user_refs.iter().map(move |column| (*spec, *column))).collect();
    let ref_checks = futures::stream::iter(ref_jobs)
        .map(|(spec, column)| validate_refs(&pools[&spec.service], &pools[&DbService::Auth], spec, column))
        .buffered(1)
        .try_collect::<Vec<Check>>();
    let (table_checks, ref_checks) = tokio::try_join!(table_checks, ref_checks)?;
    let mut rows = 0;
    let mut checks = Vec::new();
    for (c, n) in table_checks {
        rows += n;
        checks.push(c);
    }
    checks.extend(ref_checks);
    legacy.close().await;
    for pool in pools.values() {
        pool.close().await;
    }
    Ok((checks, StepStats::new("validate", rows, 0, started)))
}

/// Count and checksum of one table on one side; a missing table is a finding, not an error.
async fn table_sum(pool: &PgPool, spec: &TableSpec) -> Result<(i64, String), String> {
    sqlx::query_as::<_, (i64, String)>(&checksum::table_checksum_sql(spec))
        .fetch_one(pool)
        .await
        .map_err(|e| crate::pg::short_sqlx_error(&e))
}

pub(super) async fn validate_table(
    legacy: &PgPool,
    split: &PgPool,
    spec: &'static TableSpec,
) -> anyhow::Result<(Check, u64)> {
    let started = Instant::now();
    let name = spec.label();
    let (l, s) = tokio::join!(table_sum(legacy, spec), table_sum(split, spec));
    let (l_rows, l_sum) = match l {
        Ok(v) => v,
        Err(e) => anyhow::bail!("legacy_db: cannot read {}: {e} — is the legacy schema there?", spec.name),
    };
    let (s_rows, s_sum) = match s {
        Ok(v) => v,
        Err(e) => {
            let detail = format!("cannot read {name}: {e} — run `mfe db migrate --service {}`", spec.service.name());
            return Ok((Check::new(name, false, detail).metric("legacy_rows", l_rows), l_rows as u64));
        }
    };
    let stats = StepStats::new(name.clone(), l_rows as u64, 0, started);
    if l_rows == s_rows && l_sum == s_sum {
        let detail = format!("{l_rows} rows, checksums match");
        let check = stats.check(true, detail).metric("legacy_rows", l_rows).metric("split_rows", s_rows);
        return Ok((check, l_rows as u64));
    }
    let diff = diff_rows(legacy, split, spec).await?;
    let mut detail = format!("legacy {l_rows} rows, split {s_rows}; {}", diff_detail(&diff));
    if diff.n_missing + diff.n_extra + diff.n_changed == 0 {
        detail.push_str("checksums differ but every row matches (concurrent writes?)");
    }
    let check = stats
        .check(false, detail)
        .metric("legacy_rows", l_rows)
        .metric("split_rows", s_rows)
        .metric("missing_rows", diff.n_missing)
        .metric("extra_rows", diff.n_extra)
        .metric("changed_rows", diff.n_changed);
    Ok((check, l_rows as u64))
}

/// Rows that differ between the two sides of one table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RowDiff {
    pub n_missing: u64,
    pub n_extra: u64,
    pub n_changed: u64,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub changed: Vec<String>,
}

/// What differs, e.g. `2 missing row(s) (ids: a, b); 1 changed row(s) (ids: c)`.
pub(super) fn diff_detail(diff: &RowDiff) -> String {
    let mut parts = Vec::new();
    for (kind, n, ids) in [
        ("missing", diff.n_missing, &diff.missing),
        ("extra", diff.n_extra, &diff.extra),
        ("changed", diff.n_changed, &diff.changed),
    ] {
        if n > 0 {
            parts.push(format!("{n} {kind} row(s) (ids: {})", ids.join(", ")));
        }
    }
    parts.join("; ")
}

pub(super) fn sample(list: &mut Vec<String>, id: String) {
    if list.len() < N_SAMPLES {
        list.push(id);
    }
}

/// Merges the `(id, md5)` streams of both sides (both ordered by id, collation "C" = byte order,
/// which is also Rust's `str` order).
async fn diff_rows(legacy: &PgPool, split: &PgPool, spec: &TableSpec) -> anyhow::Result<RowDiff> {
    let sql = checksum::row_hashes_sql(spec);
    let mut l = sqlx::query_as::<_, (String, String)>(&sql).fetch(legacy);
    let mut s = sqlx::query_as::<_, (String, String)>(&sql).fetch(split);
    let mut diff = RowDiff::default();
    let mut next_l = l.try_next().await?;
    let mut next_s = s.try_next().await?;
    loop {
        match (next_l.take(), next_s.take()) {
            (None, None) => break,
            (Some((id, _)), None) => {
                diff.n_missing += 1;
                sample(&mut diff.missing, id);
                next_l = l.try_next().await?;
            }
            (None, Some((id, _))) => {
                diff.n_extra += 1;
                sample(&mut diff.extra, id);
                next_s = s.try_next().await?;
            }
            (Some((lid, lh)), Some((sid, sh))) => match lid.as_bytes().cmp(sid.as_bytes()) {
                Ordering::Less => {
                    diff.n_missing += 1;
                    sample(&mut diff.missing, lid);
                    next_l = l.try_next().await?;
                    next_s = Some((sid, sh));
                }
                Ordering::Greater => {
                    diff.n_extra += 1;
                    sample(&mut diff.extra, sid);
                    next_s = s.try_next().await?;
                    next_l = Some((lid, lh));
                }
                Ordering::Equal => {
                    if lh != sh {
                        diff.n_changed += 1;
                        sample(&mut diff.changed, lid);
                    }
                    next_l = l.try_next().await?;
                    next_s = s.try_next().await?;
                }
            },
        }
    }
    Ok(diff)
}

/// Of the text ids `$1`, those that are no `users.id` (run on auth_db).
pub(super) const DANGLING_SQL: &str =
    "SELECT x FROM unnest($1::text[]) AS x WHERE NOT EXISTS (SELECT 1 FROM \"users\" u WHERE u.\"id\" = x)";

/// Every distinct non-null value of `spec.column` must be a user id of auth_db.
async fn validate_refs(child: &PgPool, auth: &PgPool, spec: &TableSpec, column: &str) -> anyhow::Result<Check> {
    let started = Instant::now();
    let name = refs_name(spec, column);
    Ok(match dangling_refs(child, auth, spec, column, N_SAMPLES).await {
        Ok(d) => {
            let (passed, detail) = refs_verdict(d.n_checked, d.n_dangling, &d.ids);
            StepStats::new(name, d.n_checked, 0, started).check(passed, detail).metric("dangling", d.n_dangling)
        }
        Err(detail) => Check::new(name, false, detail),
    })
}

/// The name of the check of one reference column.
pub(super) fn refs_name(spec: &TableSpec, column: &str) -> String {
    format!("refs {}.{column} → auth_db.users", spec.label())
}

/// Passed, and the detail, of a reference check that found `n_dangling` of `n_checked` ids
/// missing (`samples`: some of them).
pub(super) fn refs_verdict(n_checked: u64, n_dangling: u64, samples: &[String]) -> (bool, String) {
    if n_dangling == 0 {
        (true, format!("{n_checked} distinct user ids, all in auth_db.users"))
    } else {
        let shown: Vec<&str> = samples.iter().take(N_SAMPLES).map(String::as_str).collect();
        (false, format!("{n_dangling} of {n_checked} user ids missing from auth_db.users (ids: {})", shown.join(", ")))
    }
}

/// The distinct values of a reference column that are no user id of auth_db.
pub(super) struct Dangling {
    pub n_checked: u64,
    pub n_dangling: u64,
    /// The first `keep` dangling ids met.
    pub ids: Vec<String>,
}

/// Streams the distinct non-null values of `spec.column` from the child database and looks
/// them up in auth_db in chunks; `Err` is the one line of a read failure.
pub(super) async fn dangling_refs(
    child: &PgPool,
    auth: &PgPool,
    spec: &TableSpec,
    column: &str,
    keep: usize,
) -> Result<Dangling, String> {
    let col = quote_ident(column);
    let sql = format!("SELECT DISTINCT {col} FROM {} WHERE {col} IS NOT NULL", spec.ident());
    let mut values = sqlx::query_scalar::<_, String>(&sql).fetch(child);
    let mut chunk: Vec<String> = Vec::with_capacity(REF_CHUNK);
    let mut out = Dangling { n_checked: 0, n_dangling: 0, ids: Vec::new() };
    loop {
        let next = match values.next().await {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => return Err(format!("cannot read {}: {}", spec.label(), crate::pg::short_sqlx_error(&e))),
            None => None,
        };
        let at_end = next.is_none();
        if let Some(id) = next {
            chunk.push(id);
        }
        if chunk.len() == REF_CHUNK || (at_end && !chunk.is_empty()) {
            out.n_checked += chunk.len() as u64;
            let dangling: Vec<String> = sqlx::query_scalar(DANGLING_SQL)
                .bind(&chunk)
                .fetch_all(auth)
                .await
                .map_err(|e| format!("cannot read auth_db.users: {}", crate::pg::short_sqlx_error(&e)))?;
            out.n_dangling += dangling.len() as u64;
            let room = keep.saturating_sub(out.ids.len());
            out.ids.extend(dangling.into_iter().take(room));
            chunk.clear();
        }
        if at_end {
            return Ok(out);
        }
    }
}
