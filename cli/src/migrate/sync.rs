//! `mfe migrate sync start | status | stop`: the online migration's forward path, built on
//! PostgreSQL's own logical replication — never a change capture of ours.
//!
//! # One consistent start point per service
//! A slot feeds one subscription and a subscription lives in one database, so each split service
//! gets its own publication (its tables, legacy columns only), slot and subscription, all named
//! `mfe_sync_<service>_<sync id>`. In that order:
//! 1. publications first: pgoutput reads the publication with the slot's historic snapshot, so
//!    one created after the slot is invisible to its decoding ("publication does not exist");
//! 2. per service, `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')` on a replication connection of
//!    its own ([`super::replication`]), kept open and idle until the export has read every table;
//! 3. the export reads each service's tables from that service's snapshot, the import loads them;
//! 4. per service, `CREATE SUBSCRIPTION … WITH (create_slot = false, slot_name = …, copy_data =
//!    false)`: the subscription starts exactly where the snapshot ends, so every change POC-2
//!    commits after it arrives once and nothing is copied twice.
//!
//! # Why the apply side is safe
//! Apply workers run with `session_replication_role = replica`: the split tables' foreign keys
//! and triggers do not fire. The rows come from the legacy database, which checked those same
//! foreign keys when it committed them, and each service's tables share one slot, so a parent
//! and its children arrive in commit order (a legacy cascade arrives as the row deletes it made).
//! The columns the split schemas add (refresh_tokens.family_id, …) are nullable or have
//! defaults, which is what the apply worker fills in for columns a publication leaves out.
//!
//! # State
//! What `sync start` made is recorded in each split database (`mfe_migration.sync`, one row per
//! service), so `status`, `cutover`, `switch-back` and `finish` are separate invocations that
//! find it. Nothing is ever written into the legacy database except through
//! [`legacy_admin_statement`] (catalog objects of the sync and the write block) and, after
//! cutover, the reverse subscriptions' apply workers.

use super::export::{self, Snapshots};
use super::progress::{human_bytes, round3, say, Progress, StepStats};
use super::replication::ReplicationConn;
use super::tables::{self, quote_ident, TableSpec};
use super::{import, rollback};
use crate::config::{Config, DbService, PgTarget, RuntimeKind};
use crate::report::{Check, Report};
use anyhow::{bail, Context};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};

/// Prefix of every forward object (publications and slots on legacy, subscriptions on split).
pub const FORWARD_PREFIX: &str = "mfe_sync_";
/// Prefix of every reverse object (publications and slots on split, subscriptions on legacy).
pub const REVERSE_PREFIX: &str = "mfe_rev_";
/// application_name of mfe's admin sessions on legacy: the write block never ends them.
pub const ADMIN_APPLICATION_NAME: &str = "mfe-migrate-admin";

/// Phases of one service's sync, as recorded in `mfe_migration.sync`.
pub mod phase {
    /// Publication and slot made; the initial copy (export → import) runs.
    pub const STARTING: &str = "starting";
    /// The subscription streams legacy changes into the split database.
    pub const SYNCING: &str = "syncing";
    /// Cut over: the split database is the source, its writes flow back to legacy.
    pub const REVERSE: &str = "reverse";
    /// Switched back: POC-2 is the source of truth again; nothing of the sync is left.
    pub const SWITCHED_BACK: &str = "switched_back";
    /// Window over: the reverse path is gone, POC-2 stays blocked.
    pub const FINISHED: &str = "finished";
    /// Abandoned by `sync stop` or a failed `sync start`; nothing of the sync is left.
    pub const STOPPED: &str = "stopped";

    /// True while replication objects of this attempt exist.
    pub fn is_active(p: &str) -> bool {
        matches!(p, STARTING | SYNCING | REVERSE)
    }
}

const STATE_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS mfe_migration;
CREATE TABLE IF NOT EXISTS mfe_migration.sync (
    service text PRIMARY KEY,
    sync_id text NOT NULL,
    phase text NOT NULL,
    slot_name text NOT NULL,
    publication text NOT NULL,
    subscription text NOT NULL,
    legacy_database text NOT NULL,
    snapshot text,
    consistent_point text,
    started_at timestamptz NOT NULL DEFAULT now(),
    synced_at timestamptz,
    tuples_at_start bigint NOT NULL DEFAULT 0,
    cutover_at timestamptz,
    write_pause_s double precision,
    reverse_name text,
    reverse_tuples_at_start bigint NOT NULL DEFAULT 0,
    ended_at timestamptz,
    note text
);
"#;

/// One service's sync, as `sync start` recorded it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncState {
    pub service: String,
    pub sync_id: String,
    pub phase: String,
    pub slot_name: String,
    pub publication: String,
    pub subscription: String,
    /// `host:port/db` of the legacy database the sync reads.
    pub legacy_database: String,
    pub snapshot: Option<String>,
    pub consistent_point: Option<String>,
    pub started_at: String,
    pub tuples_at_start: i64,
    pub write_pause_s: Option<f64>,
    /// Publication (split), subscription (legacy) and slot (split server) of the reverse path.
    pub reverse_name: Option<String>,
    pub reverse_tuples_at_start: i64,
    pub note: Option<String>,
}

impl SyncState {
    pub fn db(&self) -> DbService {
        DbService::parse(&self.service).expect("a service name written by sync start")
    }
}

/// Creates the state table if missing.
pub async fn ensure_state_table(split: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(STATE_DDL).execute(split).await.context("cannot create mfe_migration.sync")?;
    Ok(())
}

/// The recorded sync of a split database, if any.
pub async fn load_state(split: &PgPool) -> anyhow::Result<Option<SyncState>> {
    let (exists,): (bool,) =
        sqlx::query_as("SELECT to_regclass('mfe_migration.sync') IS NOT NULL").fetch_one(split).await?;
    if !exists {
        return Ok(None);
    }
    Ok(sqlx::query_as(
        "SELECT service, sync_id, phase, slot_name, publication, subscription, legacy_database, snapshot, \
                consistent_point, started_at::text, tuples_at_start, write_pause_s, reverse_name, \
                reverse_tuples_at_start, note FROM mfe_migration.sync LIMIT 1",
    )
    .fetch_optional(split)
    .await?)
}

async fn save_state(split: &PgPool, s: &SyncState) -> anyhow::Result<()> {
    ensure_state_table(split).await?;
    sqlx::query("DELETE FROM mfe_migration.sync").execute(split).await?;
    sqlx::query(
        "INSERT INTO mfe_migration.sync (service, sync_id, phase, slot_name, publication, subscription, legacy_database) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&s.service)
    .bind(&s.sync_id)
    .bind(&s.phase)
    .bind(&s.slot_name)
    .bind(&s.publication)
    .bind(&s.subscription)
    .bind(&s.legacy_database)
    .execute(split)
    .await
    .context("cannot record the sync state")?;
    Ok(())
}

/// Sets the phase (and a note) of the recorded sync.
pub async fn set_phase(split: &PgPool, phase: &str, note: Option<&str>) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE mfe_migration.sync SET phase = $1, note = coalesce($2, note), \
         ended_at = CASE WHEN $1 IN ('switched_back', 'finished', 'stopped') THEN now() ELSE ended_at END",
    )
    .bind(phase)
    .bind(note)
    .execute(split)
    .await
    .context("cannot record the sync phase")?;
    Ok(())
}

/// One split service, its pool and its recorded sync.
pub struct ServiceSync {
    pub db: DbService,
    pub pool: PgPool,
    pub state: Option<SyncState>,
}

/// Opens every split database of `services` and reads its recorded sync.
pub async fn load_all(cfg: &Config, services: &[DbService]) -> anyhow::Result<Vec<ServiceSync>> {
    let mut out = Vec::new();
    for &db in services {
        let pool = super::split_pool(cfg, db).await?;
        let state =
            load_state(&pool).await.with_context(|| format!("{}: cannot read the sync state", db.component()))?;
        out.push(ServiceSync { db, pool, state });
    }
    Ok(out)
}

/// Sends one statement that changes the legacy server — a publication, a slot, a reverse
/// subscription, the write block. Every such statement of `mfe` goes through here; everything
/// else mfe sends to legacy runs in read-only sessions.
pub async fn legacy_admin_statement(admin: &PgPool, sql: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sql).execute(admin).await.map_err(|e| {
        anyhow::anyhow!("legacy_db: `{}` failed: {}", first_words(sql), crate::pg::short_sqlx_error(&e))
    })?;
    Ok(())
}

/// The statement's first words, for error lines (never a connection string).
fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `'…'` SQL literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// Server settings

/// What a server needs for logical replication, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    pub wal_level: String,
    pub max_replication_slots: i64,
    pub slots_in_use: i64,
    pub max_wal_senders: i64,
    pub senders_in_use: i64,
    pub max_logical_replication_workers: i64,
    pub workers_in_use: i64,
}

pub async fn read_settings(pool: &PgPool) -> anyhow::Result<ReplicationSettings> {
    let row: (String, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int8, \
                (SELECT count(*) FROM pg_replication_slots), current_setting('max_wal_senders')::int8, \
                (SELECT count(*) FROM pg_stat_replication), current_setting('max_logical_replication_workers')::int8, \
                (SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .context("cannot read the replication settings")?;
    Ok(ReplicationSettings {
        wal_level: row.0,
        max_replication_slots: row.1,
        slots_in_use: row.2,
        max_wal_senders: row.3,
        senders_in_use: row.4,
        max_logical_replication_workers: row.5,
        workers_in_use: row.6,
    })
}

/// Every setting of `s` that keeps the server `label` at `addr` from running `slots` more
/// slots/senders and `workers` more apply workers; one line each, saying what to set and that it
/// takes a restart.
pub fn setting_problems(label: &str, addr: &str, s: &ReplicationSettings, slots: i64, workers: i64) -> Vec<String> {
    let restart = format!("then restart the server (`mfe infra restart {label}`): a reload is not enough");
    let mut out = Vec::new();
    if s.wal_level != "logical" {
        out.push(format!(
            "{label} ({addr}): wal_level is `{}`, logical replication needs `wal_level = logical` — set it \
             (postgresql.conf, or `ALTER SYSTEM SET wal_level = logical`), {restart}",
            s.wal_level
        ));
    }
    if s.max_replication_slots - s.slots_in_use < slots {
        out.push(format!(
            "{label} ({addr}): max_replication_slots is {} with {} in use, the sync needs {slots} more — raise it \
             (`ALTER SYSTEM SET max_replication_slots = 32`), {restart}",
            s.max_replication_slots, s.slots_in_use
        ));
    }
    if s.max_wal_senders - s.senders_in_use < slots {
        out.push(format!(
            "{label} ({addr}): max_wal_senders is {} with {} in use, the sync needs {slots} more — raise it \
             (`ALTER SYSTEM SET max_wal_senders = 32`), {restart}",
            s.max_wal_senders, s.senders_in_use
        ));
    }
    if s.max_logical_replication_workers - s.workers_in_use < workers {
        out.push(format!(
            "{label} ({addr}): max_logical_replication_workers is {} with {} in use, the sync needs {workers} more — \
             raise it (`ALTER SYSTEM SET max_logical_replication_workers = 16`, and max_worker_processes above it), {restart}",
            s.max_logical_replication_workers, s.workers_in_use
        ));
    }
    out
}

/// Checks the legacy server (forward publisher, reverse subscriber) and each split server
/// (forward subscriber, reverse publisher); errors with every problem found.
async fn check_servers(cfg: &Config, legacy: &PgPool, split: &[ServiceSync]) -> anyhow::Result<()> {
    let n = split.len() as i64;
    let target = cfg.pg(DbService::Legacy)?;
    let mut problems = setting_problems("legacy_db", &target.addr(), &read_settings(legacy).await?, n, n);
    for s in split {
        let t = cfg.pg(s.db)?;
        problems.extend(setting_problems(s.db.component().name(), &t.addr(), &read_settings(&s.pool).await?, 1, 1));
    }
    if !problems.is_empty() {
        bail!("sync start refused, nothing was changed: {}", problems.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tables

/// Each table must have a primary key or replica identity made of migrated columns: that is how
/// an UPDATE or DELETE names its row in the stream.
pub async fn table_problems(pool: &PgPool, label: &str, specs: &[&TableSpec]) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = specs.iter().map(|t| t.name).collect();
    // (table, replica identity kind, key columns, all columns)
    type TableKey = (String, String, Option<Vec<String>>, Vec<String>);
    let rows: Vec<TableKey> = sqlx::query_as(
        "SELECT c.relname::text, c.relreplident::text, \
                (SELECT array_agg(a.attname::text) FROM pg_index i \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                  WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) \
                                              OR (c.relreplident = 'i' AND i.indisreplident))), \
                (SELECT array_agg(a.attname::text) FROM pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) \
         FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') \
          AND c.relname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await
    .with_context(|| format!("{label}: cannot read the table catalog"))?;
    let mut out = Vec::new();
    for spec in specs {
        let Some((_, ident, key, all)) = rows.iter().find(|r| r.0 == spec.name) else {
            out.push(format!(
                "{label}.{} does not exist — run `mfe db migrate --service {}`",
                spec.name,
                if label == "legacy_db" { "legacy" } else { spec.service.name() }
            ));
            continue;
        };
        let key_cols: Vec<String> = match ident.as_str() {
            "f" => all.clone(),
            "n" => Vec::new(),
            _ => key.clone().unwrap_or_default(),
        };
        if key_cols.is_empty() {
            out.push(format!(
                "{label}.{} has no primary key or replica identity, so its UPDATEs and DELETEs cannot be replicated — \
                 add one (`ALTER TABLE {} ADD PRIMARY KEY (id)`) and run `mfe migrate sync start` again",
                spec.name,
                spec.ident()
            ));
        } else if let Some(c) = key_cols.iter().find(|c| !spec.columns.contains(&c.as_str())) {
            out.push(format!(
                "{label}.{}: its replica identity uses column {c}, which is not a migrated column — make the primary \
                 key `id` the replica identity (`ALTER TABLE {} REPLICA IDENTITY DEFAULT`)",
                spec.name,
                spec.ident()
            ));
        }
    }
    Ok(out)
}

/// `"users" ("id", "email", …), …`: the tables of a publication with their legacy columns (the
/// id primary key is the first column of each list).
pub fn publication_tables(specs: &[&TableSpec]) -> String {
    specs.iter().map(|t| format!("{} ({})", t.ident(), t.column_list())).collect::<Vec<_>>().join(", ")
}

/// Sum of the tuple counters of `specs`' tables (inserts + updates + deletes since the server
/// started): the "rows applied" of status is its growth since the subscription began.
pub async fn tuple_counter(pool: &PgPool, specs: &[&TableSpec]) -> anyhow::Result<i64> {
    let names: Vec<&str> = specs.iter().map(|t| t.name).collect();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 FROM pg_stat_user_tables \
         WHERE schemaname = 'public' AND relname = ANY($1)",
    )
    .bind(&names)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Connection strings between servers

/// A libpq connection string one server uses to reach another, and its printable form.
pub struct Conninfo {
    pub text: String,
    /// The same with the password replaced by `***`: the only form that may be printed.
    pub shown: String,
    /// The password itself, for [`redact`].
    password: String,
}

/// How the server of `from` reaches the server of `to`. Native runtime (and any server not on
/// loopback): the address of `to`'s URL. Docker runtime: the containers share the compose
/// network, where `to` is its compose service name on port 5432 (its loopback port is the host's).
pub async fn conninfo(cfg: &Config, to: DbService) -> anyhow::Result<Conninfo> {
    let t = cfg.pg(to)?;
    let loopback = matches!(t.host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
    let (host, port) = if loopback && docker_runtime(cfg).await {
        (to.component().name().to_string(), 5432)
    } else {
        (t.host.clone(), t.port)
    };
    Ok(conninfo_text(&t, &host, port))
}

fn conninfo_text(t: &PgTarget, host: &str, port: u16) -> Conninfo {
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let base = format!("host={} port={port} dbname={} user={}", value(host), value(&t.database), value(&t.user));
    let password = url_password(t);
    Conninfo { text: format!("{base} password={}", value(&password)), shown: format!("{base} password=***"), password }
}

/// The password of a target's URL, percent-decoded as sqlx decodes it when it connects.
pub fn url_password(t: &PgTarget) -> String {
    percent_encoding::percent_decode_str(&t.password).decode_utf8_lossy().into_owned()
}

/// True when the stack runs on the docker runtime (what `mfe infra` would pick).
async fn docker_runtime(cfg: &Config) -> bool {
    if crate::infra::native::Native::new(cfg).any_running().is_some() {
        return false;
    }
    match cfg.runtime {
        RuntimeKind::Native => false,
        RuntimeKind::Docker => true,
        RuntimeKind::Auto => crate::infra::docker::Docker::connect(cfg).await.is_ok(),
    }
}

/// Replaces any password of a libpq string or URL inside `text` by `***` (server errors may echo
/// a connection string).
pub fn redact(text: &str, conn: &Conninfo) -> String {
    if conn.password.is_empty() {
        return text.to_string();
    }
    let escaped = conn.password.replace('\\', "\\\\").replace('\'', "\\'");
    text.replace(&escaped, "***").replace(&conn.password, "***")
}

// ---------------------------------------------------------------------------------------------
// sync start

/// Options of `sync start`.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Empty the migrated split tables first (after a switch-back POC-2 is the source again).
    pub reset: bool,
    /// How long to wait for the subscriptions to catch up before returning.
    pub wait: Duration,
}

/// What `sync start` did.
pub struct Started {
    pub report: Report,
    pub rows_exported: u64,
    pub rows_inserted: u64,
}

/// `mfe migrate sync start`: preflight, publications, slots with exported snapshots, export,
/// import, subscriptions, then a wait for the first catch-up.
pub async fn start(cfg: &Config, services: &[DbService], out: &Path, opts: &StartOptions) -> anyhow::Result<Started> {
    let mut report = Report::new("migrate sync start");
    let legacy = super::legacy_pool(cfg).await?;
    // Every split database is looked at, not only `services`': leftovers are cleaned on the
    // legacy server for the whole legacy database, which must not touch another service's sync.
    let everyone = load_all(cfg, &DbService::SPLIT).await?;
    let split: Vec<ServiceSync> = everyone
        .iter()
        .filter(|s| services.contains(&s.db))
        .map(|s| ServiceSync { db: s.db, pool: s.pool.clone(), state: s.state.clone() })
        .collect();

    // Preflight: nothing is created before every check passed.
    let t = Instant::now();
    check_servers(cfg, &legacy, &split).await?;
    let specs = tables::tables_of(services);
    let mut problems = table_problems(&legacy, "legacy_db", &specs).await?;
    for s in &split {
        problems.extend(table_problems(&s.pool, s.db.component().name(), &tables::tables_of(&[s.db])).await?);
    }
    if !problems.is_empty() {
        bail!("sync start refused, nothing was changed: {}", problems.join("; "));
    }
    for s in &everyone {
        if let Some(st) = s.state.as_ref().filter(|st| phase::is_active(&st.phase)) {
            bail!(
                "sync start refused: {} already has a sync in phase {} (started {}) — see `mfe migrate sync status`; \
                 {}",
                s.db.component(),
                st.phase,
                st.started_at,
                if st.phase == phase::REVERSE {
                    "it is cut over: end it with `mfe migrate switch-back --yes` or `mfe migrate finish`"
                } else {
                    "abandon it with `mfe migrate sync stop`, or cut over with `mfe migrate cutover`"
                }
            );
        }
    }
    let admin = super::legacy_admin_pool(cfg).await?;
    let cleaned = clean_leftovers(cfg, &admin, &everyone).await?;
    for line in &cleaned {
        say(line);
    }
    let outcomes = crate::db::migrate_all(cfg, services).await?;
    let n_applied: usize = outcomes.iter().map(|o| o.n_applied()).sum();
    if opts.reset {
        for s in &split {
            let list = tables::tables_of(&[s.db]).iter().map(|t| t.ident()).collect::<Vec<_>>().join(", ");
            sqlx::query(&format!("TRUNCATE {list} CASCADE"))
                .execute(&s.pool)
                .await
                .with_context(|| format!("{}: cannot empty the migrated tables", s.db.component()))?;
            say(&format!("{}: migrated tables emptied (--reset), with the rows that reference them", s.db.component()));
        }
    }
    let mut not_empty = Vec::new();
    for s in &split {
        for spec in tables::tables_of(&[s.db]) {
            let (n,): (i64,) =
                sqlx::query_as(&format!("SELECT count(*) FROM {}", spec.ident())).fetch_one(&s.pool).await?;
            if n > 0 {
                not_empty.push(format!("{} holds {n} rows", spec.label()));
            }
        }
    }
    if !not_empty.is_empty() {
        bail!(
            "sync start refused, nothing was changed: {} — the online migration starts from empty split tables; \
             run `mfe migrate sync start --reset` to empty them (POC-2 stays the source of truth)",
            not_empty.join(", ")
        );
    }
    report.push(StepStats::new("preflight", 0, 0, t).check(
        true,
        format!(
            "servers and tables ready; {n_applied} schema migration(s) applied; {} leftover(s) removed",
            cleaned.len()
        ),
    ));

    // From here on every object made is recorded first, so a failure can remove it again.
    let sync_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let legacy_target = cfg.pg(DbService::Legacy)?;
    let mut states = Vec::new();
    for s in &split {
        let name = format!("{FORWARD_PREFIX}{}_{sync_id}", s.db.name());
        let st = SyncState {
            service: s.db.name().into(),
            sync_id: sync_id.clone(),
            phase: phase::STARTING.into(),
            slot_name: name.clone(),
            publication: name.clone(),
            subscription: name,
            legacy_database: format!("{}/{}", legacy_target.addr(), legacy_target.database),
            snapshot: None,
            consistent_point: None,
            started_at: String::new(),
            tuples_at_start: 0,
            write_pause_s: None,
            reverse_name: None,
            reverse_tuples_at_start: 0,
            note: None,
        };
        save_state(&s.pool, &st).await?;
        states.push(st);
    }
    let made = start_streams(cfg, &admin, &split, &states, out, &mut report).await;
    let (rows_exported, rows_inserted) = match made {
        Ok(v) => v,
        Err((e, batches)) => {
            say("sync start failed: removing what it made (slots, publications, subscriptions, imported rows)");
            if !batches.is_empty() {
                if let Err(re) = rollback::rollback(cfg, services, Some(&batches)).await {
                    say(&format!("rollback of the import failed too: {}", crate::error_line(&re)));
                }
            }
            for (s, st) in split.iter().zip(&states) {
                drop_forward(&admin, &s.pool, st).await;
                let _ = set_phase(&s.pool, phase::STOPPED, Some(&crate::error_line(&e))).await;
            }
            return Err(e);
        }
    };

    // First catch-up: the changes POC-2 committed during the initial copy.
    let t = Instant::now();
    let lag = wait_caught_up(cfg, &admin, &split, opts.wait, "catch-up").await?;
    let stats = StepStats::new("catch-up", 0, 0, t);
    say(&format!("catch-up: lag {} after {:.2} s", human_bytes(lag.max(0) as u64), stats.seconds));
    report.push(
        stats.check(true, format!("lag {} (streaming)", human_bytes(lag.max(0) as u64))).metric("lag_bytes", lag),
    );
    report.metric("sync_id", sync_id);
    report.metric("rows", rows_exported);
    report.metric("rows_inserted", rows_inserted);
    Ok(Started { report, rows_exported, rows_inserted })
}

/// Publications → slots (snapshots exported) → export → import → subscriptions. On failure, the
/// error and the import batches to undo.
async fn start_streams(
    cfg: &Config,
    admin: &PgPool,
    split: &[ServiceSync],
    states: &[SyncState],
    out: &Path,
    report: &mut Report,
) -> Result<(u64, u64), (anyhow::Error, Vec<uuid::Uuid>)> {
    let services: Vec<DbService> = split.iter().map(|s| s.db).collect();
    let fail = |e: anyhow::Error| (e, Vec::new());
    let t = Instant::now();
    for (s, st) in split.iter().zip(states) {
        legacy_admin_statement(
            admin,
            &format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&st.publication),
                publication_tables(&tables::tables_of(&[s.db]))
            ),
        )
        .await
        .map_err(fail)?;
    }
    let legacy_target = cfg.pg(DbService::Legacy).map_err(fail)?;
    let mut conns = Vec::new();
    let mut snapshots = Vec::new();
    for (s, st) in split.iter().zip(states) {
        let mut conn = ReplicationConn::connect(&legacy_target, "legacy_db").await.map_err(fail)?;
        let created = conn.create_slot_exporting_snapshot(&st.slot_name).await.map_err(fail)?;
        sqlx::query("UPDATE mfe_migration.sync SET snapshot = $1, consistent_point = $2")
            .bind(&created.snapshot_name)
            .bind(&created.consistent_point)
            .execute(&s.pool)
            .await
            .map_err(|e| fail(e.into()))?;
        snapshots.push((s.db, created.snapshot_name.clone()));
        say(&format!(
            "slot {}: consistent at {}, snapshot {}",
            created.slot_name, created.consistent_point, created.snapshot_name
        ));
        conns.push(conn);
    }
    report.push(StepStats::new("slots", 0, 0, t).check(true, format!("{} publication(s) and slot(s)", states.len())));

    // The replication connections stay open (idle) until every table was read.
    let exported = export::export_from(cfg, &services, out, Snapshots::PerService(&snapshots)).await;
    for c in conns {
        c.close().await;
    }
    let (manifest, stats) = exported.map_err(fail)?;
    say(&stats.line());
    report.push(stats.check(true, format!("{} tables, each from its service's slot snapshot", manifest.tables.len())));
    let rows_exported = stats.rows;

    let imported = import::import(cfg, &services, out).await.map_err(fail)?;
    say(&imported.stats.line());
    let batches: Vec<uuid::Uuid> = imported.services.iter().map(|s| s.batch_id).collect();
    let rows_inserted = imported.stats.rows;
    report.push(imported.stats.check(true, format!("{rows_inserted} rows inserted")));

    let t = Instant::now();
    let legacy_conn = conninfo(cfg, DbService::Legacy).await.map_err(|e| (e, batches.clone()))?;
    for (s, st) in split.iter().zip(states) {
        let specs = tables::tables_of(&[s.db]);
        let result = async {
            let baseline = tuple_counter(&s.pool, &specs).await?;
            let sql = format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
                 WITH (create_slot = false, slot_name = {}, copy_data = false)",
                quote_ident(&st.subscription),
                quote_literal(&legacy_conn.text),
                quote_ident(&st.publication),
                quote_literal(&st.slot_name)
            );
            sqlx::raw_sql(&sql).execute(&s.pool).await.map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot subscribe to legacy_db ({}): {}",
                    s.db.component(),
                    legacy_conn.shown,
                    redact(&crate::pg::short_sqlx_error(&e), &legacy_conn)
                )
            })?;
            sqlx::query("UPDATE mfe_migration.sync SET phase = $1, synced_at = now(), tuples_at_start = $2")
                .bind(phase::SYNCING)
                .bind(baseline)
                .execute(&s.pool)
                .await?;
            anyhow::Ok(())
        }
        .await;
        result.map_err(|e| (e, batches.clone()))?;
    }
    report.push(
        StepStats::new("subscriptions", 0, 0, t)
            .check(true, format!("{} subscription(s), copy_data = false, via {}", states.len(), legacy_conn.shown)),
    );
    Ok((rows_exported, rows_inserted))
}

/// Drops the forward objects of one service's sync (best effort: each step is tried; a dead
/// slot is detached before the subscription is dropped).
pub async fn drop_forward(admin: &PgPool, split: &PgPool, st: &SyncState) {
    let sub = quote_ident(&st.subscription);
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1 \
           AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .bind(&st.subscription)
    .fetch_one(split)
    .await
    .unwrap_or(false);
    if exists && sqlx::raw_sql(&format!("DROP SUBSCRIPTION {sub}")).execute(split).await.is_err() {
        // The publisher (or its slot) is unreachable: detach the slot, drop the subscription
        // locally, and drop the slot on legacy below.
        let _ = sqlx::raw_sql(&format!("ALTER SUBSCRIPTION {sub} DISABLE")).execute(split).await;
        let _ = sqlx::raw_sql(&format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")).execute(split).await;
        let _ = sqlx::raw_sql(&format!("DROP SUBSCRIPTION {sub}")).execute(split).await;
    }
    drop_slot(admin, &st.slot_name).await;
    let _ =
        legacy_admin_statement(admin, &format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&st.publication))).await;
}

/// Drops a slot on the server of `pool` if it exists and is not in use.
async fn drop_slot(pool: &PgPool, slot: &str) {
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
    )
    .bind(slot)
    .fetch_all(pool)
    .await;
}

/// Removes mfe's replication objects that no active sync owns: of an earlier attempt that died
/// before it could clean up. Only objects of this legacy database and these split databases.
async fn clean_leftovers(cfg: &Config, admin: &PgPool, split: &[ServiceSync]) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let legacy_db = cfg.pg(DbService::Legacy)?.database;
    for s in split {
        let label = s.db.component().name();
        let subs: Vec<String> = sqlx::query_scalar(
            "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND (subname LIKE 'mfe\\_sync\\_%' OR subname LIKE 'mfe\\_rev\\_%')",
        )
        .fetch_all(&s.pool)
        .await?;
        for sub in subs {
            let q = quote_ident(&sub);
            let _ = sqlx::raw_sql(&format!("ALTER SUBSCRIPTION {q} DISABLE")).execute(&s.pool).await;
            let _ = sqlx::raw_sql(&format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)")).execute(&s.pool).await;
            sqlx::raw_sql(&format!("DROP SUBSCRIPTION {q}")).execute(&s.pool).await?;
            lines.push(format!("{label}: removed leftover subscription {sub}"));
        }
        let pubs: Vec<String> =
            sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'mfe\\_rev\\_%'")
                .fetch_all(&s.pool)
                .await?;
        for p in pubs {
            sqlx::raw_sql(&format!("DROP PUBLICATION {}", quote_ident(&p))).execute(&s.pool).await?;
            lines.push(format!("{label}: removed leftover publication {p}"));
        }
        let db = cfg.pg(s.db)?.database;
        let slots: Vec<String> = sqlx::query_scalar(
            "SELECT slot_name::text FROM pg_replication_slots WHERE database = $1 AND NOT active AND slot_name LIKE 'mfe\\_rev\\_%'",
        )
        .bind(&db)
        .fetch_all(&s.pool)
        .await?;
        for slot in slots {
            drop_slot(&s.pool, &slot).await;
            lines.push(format!("{label}: removed leftover slot {slot}"));
        }
    }
    let subs: Vec<String> = sqlx::query_scalar(
        "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND subname LIKE 'mfe\\_rev\\_%'",
    )
    .fetch_all(admin)
    .await?;
    for sub in subs {
        let q = quote_ident(&sub);
        let _ = legacy_admin_statement(admin, &format!("ALTER SUBSCRIPTION {q} DISABLE")).await;
        let _ = legacy_admin_statement(admin, &format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)")).await;
        legacy_admin_statement(admin, &format!("DROP SUBSCRIPTION {q}")).await?;
        lines.push(format!("legacy_db: removed leftover subscription {sub}"));
    }
    let pubs: Vec<String> =
        sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'mfe\\_sync\\_%'")
            .fetch_all(admin)
            .await?;
    for p in pubs {
        legacy_admin_statement(admin, &format!("DROP PUBLICATION {}", quote_ident(&p))).await?;
        lines.push(format!("legacy_db: removed leftover publication {p}"));
    }
    let slots: Vec<String> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots WHERE database = $1 AND NOT active AND slot_name LIKE 'mfe\\_sync\\_%'",
    )
    .bind(&legacy_db)
    .fetch_all(admin)
    .await?;
    for slot in slots {
        drop_slot(admin, &slot).await;
        lines.push(format!("legacy_db: removed leftover slot {slot}"));
    }
    Ok(lines)
}

// ---------------------------------------------------------------------------------------------
// Lag and health

/// One forward stream as both servers see it.
#[derive(Debug, Clone)]
pub struct Stream {
    pub db: DbService,
    pub phase: String,
    /// Slot on legacy: exists, wal_status (`reserved`/`extended`/`unreserved`/`lost`), in use.
    pub slot_found: bool,
    pub slot_status: String,
    pub slot_active: bool,
    pub confirmed_flush_lsn: Option<String>,
    /// Bytes of legacy WAL the subscription has not confirmed.
    pub lag_bytes: i64,
    /// Legacy's view of the delay (pg_stat_replication.flush_lag), 0 when caught up.
    pub lag_seconds: f64,
    pub enabled: bool,
    pub worker_running: bool,
    pub apply_errors: i64,
    /// The apply worker's last error, from the server log when mfe's native runtime runs the
    /// server (PostgreSQL 15 keeps only the count in its views).
    pub last_error: Option<String>,
    pub rows_applied: i64,
}

impl Stream {
    /// Why the stream cannot make progress, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let label = self.db.component().name();
        if !self.slot_found {
            return Some(format!("{label}: its slot is gone from legacy_db — the sync cannot go on; start over with `mfe migrate sync stop` then `mfe migrate sync start --reset`"));
        }
        if self.slot_status == "lost" {
            return Some(format!("{label}: its slot on legacy_db is lost (WAL removed, max_slot_wal_keep_size?) — start over with `mfe migrate sync stop` then `mfe migrate sync start --reset`"));
        }
        if !self.enabled {
            return Some(format!("{label}: its subscription is disabled — `ALTER SUBSCRIPTION … ENABLE` in {label}"));
        }
        if self.apply_errors > 0 && !(self.worker_running && self.lag_bytes == 0) {
            return Some(format!(
                "{label}: {} apply error(s), the subscription retries{} — see the server log (`mfe infra logs {label}`); nothing is lost, the change is applied once the cause is removed",
                self.apply_errors,
                self.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        None
    }

    pub fn check(&self) -> Check {
        let label = self.db.component().name();
        let detail = match self.problem() {
            Some(p) => p,
            None => format!(
                "{}: {}, lag {} / {:.1} s, {} rows applied, {} errors",
                self.phase,
                if self.worker_running { "streaming" } else { "apply worker starting" },
                human_bytes(self.lag_bytes.max(0) as u64),
                self.lag_seconds,
                self.rows_applied,
                self.apply_errors
            ),
        };
        Check::new(format!("sync {label}"), self.problem().is_none(), detail)
            .metric("phase", self.phase.clone())
            .metric("lag_bytes", self.lag_bytes)
            .metric("lag_seconds", round3(self.lag_seconds))
            .metric("rows_applied", self.rows_applied)
            .metric("apply_errors", self.apply_errors)
            .metric("slot_status", self.slot_status.clone())
    }
}

/// Reads every forward stream of `split` (services whose sync is syncing).
pub async fn forward_streams(cfg: &Config, legacy: &PgPool, split: &[ServiceSync]) -> anyhow::Result<Vec<Stream>> {
    let mut out = Vec::new();
    for s in split {
        let Some(st) = s.state.as_ref().filter(|st| st.phase == phase::SYNCING) else { continue };
        let slot: Option<(String, bool, Option<String>, i64, f64)> = sqlx::query_as(
            "SELECT coalesce(s.wal_status, ''), s.active, s.confirmed_flush_lsn::text, \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), 0)::int8, \
                    coalesce((SELECT extract(epoch FROM r.flush_lag) FROM pg_stat_replication r \
                               WHERE r.pid = s.active_pid), 0)::float8 \
             FROM pg_replication_slots s WHERE s.slot_name = $1",
        )
        .bind(&st.slot_name)
        .fetch_optional(legacy)
        .await
        .context("legacy_db: cannot read pg_replication_slots")?;
        let sub: Option<(bool, bool, i64)> = sqlx::query_as(
            "SELECT s.subenabled, EXISTS (SELECT 1 FROM pg_stat_subscription t WHERE t.subid = s.oid AND t.pid IS NOT NULL AND t.relid IS NULL), \
                    coalesce((SELECT apply_error_count + sync_error_count FROM pg_stat_subscription_stats x WHERE x.subid = s.oid), 0)::int8 \
             FROM pg_subscription s WHERE s.subname = $1 \
               AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(&st.subscription)
        .fetch_optional(&s.pool)
        .await
        .with_context(|| format!("{}: cannot read pg_stat_subscription", s.db.component()))?;
        let rows_now = tuple_counter(&s.pool, &tables::tables_of(&[s.db])).await?;
        let (slot_status, slot_active, lsn, lag_bytes, lag_seconds) =
            slot.clone().unwrap_or((String::new(), false, None, 0, 0.0));
        let (enabled, worker_running, apply_errors) = sub.unwrap_or((false, false, 0));
        out.push(Stream {
            db: s.db,
            phase: st.phase.clone(),
            slot_found: slot.is_some(),
            slot_status,
            slot_active,
            confirmed_flush_lsn: lsn,
            lag_bytes,
            lag_seconds,
            enabled,
            worker_running,
            apply_errors,
            last_error: if apply_errors > 0 { last_apply_error(cfg, s.db, &st.subscription) } else { None },
            rows_applied: (rows_now - st.tuples_at_start).max(0),
        });
    }
    Ok(out)
}

/// The last error of `subscription`'s apply worker in the log of `db`'s server, when mfe's native
/// runtime runs that server: the log line of the worker's start names the subscription and its
/// pid, which then finds the worker's last `ERROR:` line (other databases share the log).
fn last_apply_error(cfg: &Config, db: DbService, subscription: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let native = crate::infra::native::Native::new(cfg);
    native.pid(db.component())?;
    let mut file = std::fs::File::open(native.log_path(db.component())).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(1 << 20))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let pid_of = |line: &str| line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(p, _)| p.to_string());
    let started = format!("apply worker for subscription \"{subscription}\" has started");
    let pids: Vec<String> = text.lines().filter(|l| l.contains(&started)).filter_map(pid_of).collect();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().rposition(|l| l.contains(" ERROR: ") && pid_of(l).is_some_and(|p| pids.contains(&p)))?;
    let error = lines[at].split_once(" ERROR: ")?.1.trim().to_string();
    let context = lines
        .get(at + 1)
        .and_then(|l| l.split_once(" during "))
        .map(|(_, c)| format!(" (during {})", c.split(" in transaction").next().unwrap_or(c).trim()))
        .unwrap_or_default();
    Some(format!("{error}{context}"))
}

/// Waits until every forward stream's lag is at most 64 KiB (or `wait` passed), drawing a bar of
/// the lag worked off; returns the largest lag left. A stream that cannot progress is an error.
pub async fn wait_caught_up(
    cfg: &Config,
    legacy: &PgPool,
    split: &[ServiceSync],
    wait: Duration,
    label: &str,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + wait;
    // The bar counts the lag worked off since the first look.
    let mut bar: Option<(Progress, u64, u64)> = None;
    let result = loop {
        // The states were read before the subscriptions were made: read them again.
        let mut fresh = Vec::new();
        for s in split {
            fresh.push(ServiceSync { db: s.db, pool: s.pool.clone(), state: load_state(&s.pool).await? });
        }
        let streams = forward_streams(cfg, legacy, &fresh).await?;
        if let Some(p) = streams.iter().find_map(|s| s.problem()) {
            break Err(anyhow::anyhow!("{label}: {p}"));
        }
        let lag: i64 = streams.iter().map(|s| s.lag_bytes).max().unwrap_or(0);
        let total = streams.iter().map(|s| s.lag_bytes.max(0) as u64).sum::<u64>();
        match &mut bar {
            None => bar = Some((Progress::bytes(label, Some(total.max(1))), total, 0)),
            Some((b, first, shown)) => {
                let done = first.saturating_sub(total);
                if done > *shown {
                    b.inc(done - *shown);
                    *shown = done;
                }
            }
        }
        if (lag <= 64 * 1024 && streams.iter().all(|s| s.worker_running)) || Instant::now() >= deadline {
            break Ok(lag);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some((b, _, _)) = &bar {
        b.finish();
    }
    result
}

// ---------------------------------------------------------------------------------------------
// sync status and sync stop

/// `mfe migrate sync status`: one check per service with a recorded sync.
pub async fn status(cfg: &Config, services: &[DbService]) -> anyhow::Result<Report> {
    let mut report = Report::new("migrate sync status");
    let split = load_all(cfg, services).await?;
    if split.iter().all(|s| s.state.is_none()) {
        report.push(Check::new("sync", false, "no sync recorded — start one with `mfe migrate sync start`"));
        return Ok(report);
    }
    let legacy = super::legacy_pool(cfg).await?;
    let streams = forward_streams(cfg, &legacy, &split).await?;
    for s in &split {
        let Some(st) = &s.state else {
            report.push(Check::new(format!("sync {}", s.db.component()), true, "no sync recorded"));
            continue;
        };
        if let Some(stream) = streams.iter().find(|x| x.db == s.db) {
            report.push(stream.check());
            continue;
        }
        let detail = match st.phase.as_str() {
            phase::STARTING => format!("starting: initial copy (export → import) under way since {}", st.started_at),
            phase::REVERSE => {
                let n = match &st.reverse_name {
                    Some(_) => tuple_counter(&s.pool, &tables::tables_of(&[s.db])).await? - st.reverse_tuples_at_start,
                    None => 0,
                };
                format!(
                    "reverse: cut over (write pause {:.2} s); writes to the migrated tables flow back to legacy_db ({} row changes since)",
                    st.write_pause_s.unwrap_or_default(),
                    n.max(0)
                )
            }
            other => format!("{other}{}", st.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default()),
        };
        report.push(Check::new(format!("sync {}", s.db.component()), true, detail).metric("phase", st.phase.clone()));
    }
    if let Some(st) = split.iter().find_map(|s| s.state.as_ref()) {
        report.metric("sync_id", st.sync_id.clone());
    }
    Ok(report)
}

/// `mfe migrate sync stop`: abandons a sync that has not cut over — subscriptions, slots and
/// publications go; the split data stays (the next `sync start --reset` empties it).
pub async fn stop(cfg: &Config, services: &[DbService]) -> anyhow::Result<Report> {
    let mut report = Report::new("migrate sync stop");
    let split = load_all(cfg, services).await?;
    let admin = super::legacy_admin_pool(cfg).await?;
    for s in &split {
        let label = s.db.component().name();
        match &s.state {
            Some(st) if st.phase == phase::REVERSE => bail!(
                "sync stop refused: {label} is cut over — end it with `mfe migrate switch-back --yes` or `mfe migrate finish`"
            ),
            Some(st) if phase::is_active(&st.phase) => {
                drop_forward(&admin, &s.pool, st).await;
                set_phase(&s.pool, phase::STOPPED, Some("stopped by `mfe migrate sync stop`")).await?;
                report.push(Check::new(format!("stop {label}"), true, format!("subscription, slot and publication {} removed", st.slot_name)));
            }
            _ => report.push(Check::new(format!("stop {label}"), true, "no running sync")),
        }
    }
    // Leftovers are swept legacy-wide, so only when no other service still syncs.
    let everyone = load_all(cfg, &DbService::SPLIT).await?;
    if everyone.iter().all(|s| s.state.as_ref().is_none_or(|st| !phase::is_active(&st.phase))) {
        for line in clean_leftovers(cfg, &admin, &everyone).await? {
            say(&line);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(wal_level: &str) -> ReplicationSettings {
        ReplicationSettings {
            wal_level: wal_level.into(),
            max_replication_slots: 10,
            slots_in_use: 0,
            max_wal_senders: 10,
            senders_in_use: 0,
            max_logical_replication_workers: 4,
            workers_in_use: 0,
        }
    }

    #[test]
    fn a_server_with_wal_level_replica_gets_one_line_naming_the_setting_and_the_restart() {
        let lines = setting_problems("legacy_db", "127.0.0.1:5436", &settings("replica"), 4, 4);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert!(l.starts_with("legacy_db (127.0.0.1:5436): wal_level is `replica`"), "{l}");
        assert!(
            l.contains("wal_level = logical") && l.contains("restart") && l.contains("reload is not enough"),
            "{l}"
        );
        assert!(setting_problems("legacy_db", "h:1", &settings("logical"), 4, 4).is_empty());
    }

    #[test]
    fn too_few_free_slots_senders_or_workers_are_each_named() {
        let s = ReplicationSettings { slots_in_use: 8, senders_in_use: 9, workers_in_use: 4, ..settings("logical") };
        let lines = setting_problems("auth_db", "h:1", &s, 4, 1);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("max_replication_slots is 10 with 8 in use, the sync needs 4 more"), "{}", lines[0]);
        assert!(lines[1].contains("max_wal_senders"), "{}", lines[1]);
        assert!(lines[2].contains("max_logical_replication_workers"), "{}", lines[2]);
    }

    #[test]
    fn a_conninfo_is_printed_without_its_password_and_errors_are_redacted() {
        let t = PgTarget::parse("X", "postgres://u:s3cr%27et@127.0.0.1:5436/mfe_poc2").unwrap();
        let c = conninfo_text(&t, "legacy_db", 5432);
        assert!(c.text.ends_with(r"password='s3cr\'et'"), "{}", c.text);
        assert!(!c.shown.contains("s3cr"), "{}", c.shown);
        assert_eq!(c.shown, "host='legacy_db' port=5432 dbname='mfe_poc2' user='u' password=***");
        assert_eq!(redact("failed: password=s3cr'et", &c), "failed: password=***");
        assert!(!redact(&c.text, &c).contains("s3cr"));
    }

    #[test]
    fn a_publication_lists_each_table_with_its_legacy_columns_id_first() {
        let specs = tables::tables_of(&[DbService::Auth]);
        let p = publication_tables(&specs);
        assert!(p.starts_with("\"users\" (\"id\", \"email\""), "{p}");
        assert!(
            p.contains("\"refresh_tokens\" (\"id\", \"user_id\", \"token\", \"expires_at\", \"created_at\")"),
            "{p}"
        );
        assert!(!p.contains("family_id"), "{p}");
    }
}
