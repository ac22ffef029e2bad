//! The cutover's validation, in two stages so that the write pause does not grow with the data.
//!
//! The plain validation ([`super::validate`]) reads every row of both sides: 9 s for the 4.4 M
//! rows of the benchmark, which inside the write block was 16 % of a whole migration's wall
//! time. The cutover splits the same comparison:
//! 1. **track** ([`track`]): from now on an `ENABLE ALWAYS` row trigger on every migrated table of
//!    each split database notes the id of each row inserted, updated or deleted there — by the
//!    subscription's apply worker or by anyone else — in `mfe_migration.changed`; a TRUNCATE
//!    notes the table itself;
//! 2. **baseline** ([`baseline`]), while POC-2 still writes: per table both sides sum the row
//!    hashes of [`checksum`] over [`N_BUCKETS`] buckets of ids (one scan each, a hash aggregate,
//!    no sort); the buckets that differ — changes in flight, or real differences — are compared
//!    row by row and the ids that differ become suspects. The references are checked in full and
//!    their dangling ids kept as suspects too (a payment may arrive before its user: each service
//!    has its own subscription);
//! 3. **recheck** ([`recheck`]), inside the write block, once every change is applied: the
//!    suspects and every noted id are compared by id lookups on both sides (the same hash), a
//!    truncated table is validated in full, and the references of those rows are checked.
//!
//! Why that is the full validation: a row the trigger never noted was not changed on the split
//! side after tracking began, so no legacy change to it committed after that either (each one is
//! applied — and noted — before the recheck runs): both of its sides are at the baseline what
//! they are at the end. The baseline compared those rows (equal bucket sums and counts mean equal
//! rows, with the 64-bit hash certainty of the plain validation), the recheck compares the rest.
//! The recheck's cost is the rows changed since the baseline, not the size of the tables.

use super::checksum;
use super::tables::{quote_ident, TableSpec};
use super::validate::{self, RowDiff};
use crate::config::DbService;
use crate::report::Check;
use anyhow::Context;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// Buckets of ids per table in the baseline: over the 3 M rows of payment_transactions about
/// 730 rows each, so the few buckets a writer's changes in flight touch are re-read cheaply.
pub const N_BUCKETS: i32 = 4096;
/// Buckets compared row by row per query of the baseline.
const BUCKETS_PER_QUERY: usize = 64;
/// Suspect ids per table beyond which the cutover refuses before blocking anything: so many
/// differences mean the sync is far behind or the split database was changed.
pub const MAX_SUSPECTS: usize = 100_000;
/// Ids per lookup query of the recheck.
const IDS_PER_QUERY: usize = 10_000;

const TRACK_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS mfe_migration;
CREATE TABLE IF NOT EXISTS mfe_migration.changed (tbl text NOT NULL, id text);
TRUNCATE mfe_migration.changed;
CREATE OR REPLACE FUNCTION mfe_migration.note_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        INSERT INTO mfe_migration.changed VALUES (TG_TABLE_NAME, NULL);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO mfe_migration.changed VALUES (TG_TABLE_NAME, OLD.id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        INSERT INTO mfe_migration.changed VALUES (TG_TABLE_NAME, NEW.id);
    END IF;
    RETURN NULL;
END $$;
"#;

const ROW_TRIGGER: &str = "mfe_migration_note_row";
const TRUNCATE_TRIGGER: &str = "mfe_migration_note_truncate";

/// Starts noting changed rows on `pool`'s migrated tables `specs` (idempotent: an earlier
/// attempt's notes are cleared). Takes a short lock per table, between two applied transactions.
pub async fn track(pool: &PgPool, label: &str, specs: &[&TableSpec]) -> anyhow::Result<()> {
    let mut sql = TRACK_DDL.to_string();
    for t in specs {
        let table = t.ident();
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {table};\n\
             DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table};\n\
             CREATE TRIGGER {ROW_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} \
               FOR EACH ROW EXECUTE FUNCTION mfe_migration.note_change();\n\
             CREATE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {table} \
               FOR EACH STATEMENT EXECUTE FUNCTION mfe_migration.note_change();\n\
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER {ROW_TRIGGER};\n\
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER {TRUNCATE_TRIGGER};\n"
        ));
    }
    sqlx::raw_sql(&format!("BEGIN;\n{sql}COMMIT;"))
        .execute(pool)
        .await
        .with_context(|| format!("{label}: cannot start noting changed rows for the cutover"))?;
    Ok(())
}

/// Removes what [`track`] made (best effort: also run after a failure).
pub async fn untrack(pool: &PgPool, specs: &[&TableSpec]) {
    let mut sql = String::new();
    for t in specs {
        let table = t.ident();
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON {table};\nDROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON {table};\n"
        ));
    }
    sql.push_str("DROP TABLE IF EXISTS mfe_migration.changed;\nDROP FUNCTION IF EXISTS mfe_migration.note_change();\n");
    let _ = sqlx::raw_sql(&sql).execute(pool).await;
}

/// What the baseline found for one table.
#[derive(Debug, Clone)]
pub struct TableBaseline {
    pub spec: &'static TableSpec,
    /// Rows of the legacy table at the baseline.
    pub legacy_rows: i64,
    /// Buckets that differed.
    pub buckets_differing: usize,
    /// Ids that differed at the baseline (missing, extra or changed).
    pub suspects: BTreeSet<String>,
}

/// What the baseline found for one reference column.
#[derive(Debug, Clone)]
pub struct RefBaseline {
    pub spec: &'static TableSpec,
    pub column: &'static str,
    pub n_checked: u64,
    /// User ids referenced but not in auth_db.users at the baseline.
    pub dangling: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Baseline {
    pub tables: Vec<TableBaseline>,
    pub refs: Vec<RefBaseline>,
    pub rows: u64,
    pub seconds: f64,
}

impl Baseline {
    /// Why the cutover should not even block POC-2, if it should not.
    pub fn refusal(&self) -> Option<String> {
        let big: Vec<String> =
            self.tables
                .iter()
                .filter(|t| t.suspects.len() >= MAX_SUSPECTS)
                .map(|t| format!("{}: {} or more rows differ", t.spec.label(), t.suspects.len()))
                .chain(self.refs.iter().filter(|r| r.dangling.len() >= MAX_SUSPECTS).map(|r| {
                    format!("{}.{}: {} or more dangling user ids", r.spec.label(), r.column, r.dangling.len())
                }))
                .collect();
        (!big.is_empty()).then(|| {
            format!(
                "{} — the sync is far behind or a split database was changed; wait for `mfe migrate sync status` to show lag ≈ 0, or compare with `mfe migrate validate`",
                big.join("; ")
            )
        })
    }
}

/// Per bucket: (rows, sum of row hashes).
type Buckets = HashMap<i32, (i64, String)>;

fn bucket_sql(spec: &TableSpec) -> String {
    format!(
        "SELECT (hashtextextended(t.\"id\", 7) & {})::int4, count(*)::int8, \
                sum(hashtextextended({}::text, 0))::text FROM {} AS t GROUP BY 1",
        N_BUCKETS - 1,
        row_expr(spec),
        spec.ident()
    )
}

fn row_expr(spec: &TableSpec) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| format!("t.{}", quote_ident(c))).collect();
    format!("ROW({})", cols.join(", "))
}

fn rows_in_buckets_sql(spec: &TableSpec) -> String {
    format!(
        "SELECT t.\"id\", {} FROM {} AS t WHERE (hashtextextended(t.\"id\", 7) & {}) = ANY($1::int4[])",
        checksum::row_md5_sql(spec),
        spec.ident(),
        N_BUCKETS - 1
    )
}

fn rows_by_id_sql(spec: &TableSpec) -> String {
    format!(
        "SELECT t.\"id\", {} FROM {} AS t WHERE t.\"id\" = ANY($1::text[])",
        checksum::row_md5_sql(spec),
        spec.ident()
    )
}

async fn buckets(pool: &PgPool, spec: &TableSpec, side: &str) -> anyhow::Result<Buckets> {
    let rows: Vec<(i32, i64, String)> = sqlx::query_as(&bucket_sql(spec))
        .fetch_all(pool)
        .await
        .map_err(|e| anyhow::anyhow!("{side}: cannot read {}: {}", spec.name, crate::pg::short_sqlx_error(&e)))?;
    Ok(rows.into_iter().map(|(b, n, sum)| (b, (n, sum))).collect())
}

async fn hashes(
    pool: &PgPool,
    sql: &str,
    bind: Bind<'_>,
    side: &str,
    spec: &TableSpec,
) -> anyhow::Result<HashMap<String, String>> {
    let q = sqlx::query_as::<_, (String, String)>(sql);
    let q = match bind {
        Bind::Buckets(b) => q.bind(b.to_vec()),
        Bind::Ids(ids) => q.bind(ids.to_vec()),
    };
    let rows = q
        .fetch_all(pool)
        .await
        .map_err(|e| anyhow::anyhow!("{side}: cannot read {}: {}", spec.name, crate::pg::short_sqlx_error(&e)))?;
    Ok(rows.into_iter().collect())
}

enum Bind<'a> {
    Buckets(&'a [i32]),
    Ids(&'a [String]),
}

/// The rows of both sides keyed by id, compared: every id that differs goes to `differing`.
fn compare(
    legacy: &HashMap<String, String>,
    split: &HashMap<String, String>,
    diff: &mut RowDiff,
    differing: &mut BTreeSet<String>,
) {
    let mut ids: Vec<&String> = legacy.keys().chain(split.keys().filter(|k| !legacy.contains_key(*k))).collect();
    ids.sort_unstable();
    for id in ids {
        match (legacy.get(id), split.get(id)) {
            (Some(_), None) => {
                diff.n_missing += 1;
                validate::sample(&mut diff.missing, id.clone());
            }
            (None, Some(_)) => {
                diff.n_extra += 1;
                validate::sample(&mut diff.extra, id.clone());
            }
            (Some(l), Some(s)) if l != s => {
                diff.n_changed += 1;
                validate::sample(&mut diff.changed, id.clone());
            }
            _ => continue,
        }
        differing.insert(id.clone());
    }
}

async fn table_baseline(legacy: &PgPool, split: &PgPool, spec: &'static TableSpec) -> anyhow::Result<TableBaseline> {
    let (l, s) = tokio::join!(buckets(legacy, spec, "legacy_db"), buckets(split, spec, spec.service.name()));
    let (l, s) = (l?, s?);
    let legacy_rows = l.values().map(|(n, _)| n).sum();
    let mut differing: Vec<i32> = l.keys().chain(s.keys()).filter(|b| l.get(b) != s.get(b)).copied().collect();
    differing.sort_unstable();
    differing.dedup();
    let mut suspects = BTreeSet::new();
    let sql = rows_in_buckets_sql(spec);
    for group in differing.chunks(BUCKETS_PER_QUERY) {
        let (l, s) = tokio::join!(
            hashes(legacy, &sql, Bind::Buckets(group), "legacy_db", spec),
            hashes(split, &sql, Bind::Buckets(group), spec.service.name(), spec)
        );
        compare(&l?, &s?, &mut RowDiff::default(), &mut suspects);
        if suspects.len() >= MAX_SUSPECTS {
            break;
        }
    }
    Ok(TableBaseline { spec, legacy_rows, buckets_differing: differing.len(), suspects })
}

/// Stage 2, while POC-2 still writes (after [`track`] on every split database).
pub async fn baseline(
    legacy: &PgPool,
    pools: &HashMap<DbService, PgPool>,
    specs: &[&'static TableSpec],
) -> anyhow::Result<Baseline> {
    use futures::{StreamExt, TryStreamExt};
    let started = Instant::now();
    let tables = futures::stream::iter(specs.iter().copied())
        .map(|spec| table_baseline(legacy, &pools[&spec.service], spec))
        .buffered(2)
        .try_collect::<Vec<_>>();
    let ref_jobs: Vec<(&'static TableSpec, &'static str)> =
        specs.iter().flat_map(|spec| spec.user_refs.iter().map(move |column| (*spec, *column))).collect();
    let refs = futures::stream::iter(ref_jobs)
        .map(|(spec, column)| async move {
            let d =
                validate::dangling_refs(&pools[&spec.service], &pools[&DbService::Auth], spec, column, MAX_SUSPECTS)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", validate::refs_name(spec, column)))?;
            anyhow::Ok(RefBaseline { spec, column, n_checked: d.n_checked, dangling: d.ids.into_iter().collect() })
        })
        .buffered(1)
        .try_collect::<Vec<_>>();
    let (tables, refs) = tokio::try_join!(tables, refs)?;
    let rows = tables.iter().map(|t| t.legacy_rows.max(0) as u64).sum();
    Ok(Baseline { tables, refs, rows, seconds: started.elapsed().as_secs_f64() })
}

/// Ids noted by the trigger per table; `None` for a table that was truncated.
async fn noted(pool: &PgPool, label: &str) -> anyhow::Result<BTreeMap<String, Option<BTreeSet<String>>>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT DISTINCT tbl, id FROM mfe_migration.changed")
        .fetch_all(pool)
        .await
        .with_context(|| format!("{label}: cannot read the changed rows (mfe_migration.changed)"))?;
    let mut out: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for (table, id) in rows {
        let entry = out.entry(table).or_insert_with(|| Some(BTreeSet::new()));
        match id {
            None => *entry = None,
            Some(id) => {
                if let Some(set) = entry {
                    set.insert(id);
                }
            }
        }
    }
    Ok(out)
}

/// Compares the rows `ids` of one table on both sides.
async fn compare_ids(
    legacy: &PgPool,
    split: &PgPool,
    spec: &TableSpec,
    ids: &[String],
) -> anyhow::Result<(RowDiff, BTreeSet<String>)> {
    let sql = rows_by_id_sql(spec);
    let mut diff = RowDiff::default();
    let mut differing = BTreeSet::new();
    for group in ids.chunks(IDS_PER_QUERY) {
        let (l, s) = tokio::join!(
            hashes(legacy, &sql, Bind::Ids(group), "legacy_db", spec),
            hashes(split, &sql, Bind::Ids(group), spec.service.name(), spec)
        );
        compare(&l?, &s?, &mut diff, &mut differing);
    }
    Ok((diff, differing))
}

/// Of `ids`, those that are no user id of auth_db.
async fn not_users(auth: &PgPool, ids: &BTreeSet<String>) -> anyhow::Result<BTreeSet<String>> {
    let ids: Vec<String> = ids.iter().cloned().collect();
    let mut out = BTreeSet::new();
    for group in ids.chunks(IDS_PER_QUERY) {
        let missing: Vec<String> = sqlx::query_scalar(validate::DANGLING_SQL)
            .bind(group)
            .fetch_all(auth)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read auth_db.users: {}", crate::pg::short_sqlx_error(&e)))?;
        out.extend(missing);
    }
    Ok(out)
}

/// Stage 3, inside the write block once every change is applied: one check per table and per
/// reference column, as [`validate::validate`] gives them.
pub async fn recheck(
    legacy: &PgPool,
    pools: &HashMap<DbService, PgPool>,
    base: &Baseline,
) -> anyhow::Result<(Vec<Check>, u64)> {
    let mut noted_by_db: HashMap<DbService, BTreeMap<String, Option<BTreeSet<String>>>> = HashMap::new();
    for t in &base.tables {
        if let std::collections::hash_map::Entry::Vacant(e) = noted_by_db.entry(t.spec.service) {
            e.insert(noted(&pools[&t.spec.service], t.spec.service.name()).await?);
        }
    }
    let mut checks = Vec::new();
    let mut rechecked_rows = 0u64;
    // Ids per table that were rechecked (for the references) and users that are gone.
    let mut rechecked: HashMap<&str, Vec<String>> = HashMap::new();
    let jobs = base.tables.iter().map(|t| {
        let noted = noted_by_db[&t.spec.service].get(t.spec.name).cloned();
        async move {
            let split = &pools[&t.spec.service];
            match noted {
                Some(None) => {
                    // Truncated since the baseline: this table is validated in full.
                    let (check, _) = validate::validate_table(legacy, split, t.spec).await?;
                    anyhow::Ok((check, Vec::new(), 0u64))
                }
                noted => {
                    let mut ids: BTreeSet<String> = noted.flatten().unwrap_or_default();
                    ids.extend(t.suspects.iter().cloned());
                    let ids: Vec<String> = ids.into_iter().collect();
                    let (diff, _) = compare_ids(legacy, split, t.spec, &ids).await?;
                    let n = ids.len() as u64;
                    Ok((table_check(t, &diff, n), ids, n))
                }
            }
        }
    });
    for (t, result) in base.tables.iter().zip(futures::future::join_all(jobs).await) {
        let (check, ids, n) = result?;
        rechecked_rows += n;
        rechecked.insert(t.spec.name, ids);
        checks.push(check);
    }
    let auth = &pools[&DbService::Auth];
    // Users that were rechecked and are no longer in auth_db: nothing may reference them.
    let gone_users = match rechecked.get("users") {
        Some(ids) => not_users(auth, &ids.iter().cloned().collect()).await?,
        None => BTreeSet::new(),
    };
    for r in &base.refs {
        let child = &pools[&r.spec.service];
        let col = quote_ident(r.column);
        let mut candidates = r.dangling.clone();
        if let Some(ids) = rechecked.get(r.spec.name).filter(|ids| !ids.is_empty()) {
            let sql =
                format!("SELECT DISTINCT {col} FROM {} WHERE \"id\" = ANY($1) AND {col} IS NOT NULL", r.spec.ident());
            for group in ids.chunks(IDS_PER_QUERY) {
                let values: Vec<String> = sqlx::query_scalar(&sql).bind(group).fetch_all(child).await?;
                candidates.extend(values);
            }
        }
        if !gone_users.is_empty() {
            let gone: Vec<String> = gone_users.iter().cloned().collect();
            let sql = format!("SELECT DISTINCT {col} FROM {} WHERE {col} = ANY($1)", r.spec.ident());
            let values: Vec<String> = sqlx::query_scalar(&sql).bind(&gone).fetch_all(child).await?;
            candidates.extend(values);
        }
        let dangling: Vec<String> = not_users(auth, &candidates).await?.into_iter().collect();
        let (passed, detail) = validate::refs_verdict(r.n_checked, dangling.len() as u64, &dangling);
        checks.push(
            Check::new(validate::refs_name(r.spec, r.column), passed, detail).metric("dangling", dangling.len() as u64),
        );
    }
    Ok((checks, rechecked_rows))
}

fn table_check(t: &TableBaseline, diff: &RowDiff, rechecked: u64) -> Check {
    let name = t.spec.label();
    let differs = diff.n_missing + diff.n_extra + diff.n_changed;
    let check = if differs == 0 {
        Check::new(
            name,
            true,
            format!(
                "{} rows, checksums match ({} bucket(s) of {N_BUCKETS} differed at the baseline; {rechecked} changed row(s) rechecked in the write block)",
                t.legacy_rows, t.buckets_differing
            ),
        )
    } else {
        Check::new(name, false, validate::diff_detail(diff))
    };
    check
        .metric("legacy_rows", t.legacy_rows)
        .metric("rechecked_rows", rechecked)
        .metric("missing_rows", diff.n_missing)
        .metric("extra_rows", diff.n_extra)
        .metric("changed_rows", diff.n_changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: &[(&str, &str)]) -> HashMap<String, String> {
        rows.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn compare_names_missing_extra_and_changed_rows_in_id_order() {
        let legacy = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let split = map(&[("b", "2"), ("c", "X"), ("d", "4")]);
        let mut diff = RowDiff::default();
        let mut differing = BTreeSet::new();
        compare(&legacy, &split, &mut diff, &mut differing);
        assert_eq!((diff.n_missing, diff.n_extra, diff.n_changed), (1, 1, 1));
        assert_eq!(
            (diff.missing.clone(), diff.extra.clone(), diff.changed.clone()),
            (vec!["a".to_string()], vec!["d".to_string()], vec!["c".to_string()])
        );
        assert_eq!(differing.into_iter().collect::<Vec<_>>(), ["a", "c", "d"]);
    }

    #[test]
    fn a_baseline_with_too_many_suspects_refuses_before_blocking() {
        let spec = &super::super::tables::TABLES[0];
        let small = TableBaseline { spec, legacy_rows: 10, buckets_differing: 1, suspects: ["x".to_string()].into() };
        let mut base = Baseline { tables: vec![small.clone()], refs: vec![], rows: 10, seconds: 0.0 };
        assert_eq!(base.refusal(), None);
        let big = TableBaseline { suspects: (0..MAX_SUSPECTS).map(|n| n.to_string()).collect(), ..small };
        base.tables.push(big);
        let why = base.refusal().expect("a refusal");
        assert!(why.contains("auth_db.users: 100000 or more rows differ") && why.contains("sync status"), "{why}");
    }

    #[test]
    fn the_bucket_queries_use_the_legacy_columns_and_the_same_bucket_expression() {
        let spec = &super::super::tables::TABLES[1];
        let b = bucket_sql(spec);
        let r = rows_in_buckets_sql(spec);
        assert!(
            b.contains("(hashtextextended(t.\"id\", 7) & 4095)")
                && r.contains("(hashtextextended(t.\"id\", 7) & 4095)")
        );
        assert!(b.contains("ROW(t.\"id\", t.\"user_id\", t.\"token\", t.\"expires_at\", t.\"created_at\")"), "{b}");
        assert!(!b.contains("family_id"));
    }
}
