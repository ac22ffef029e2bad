//! `mfe migrate cutover`, `switch-back` and `finish`: the end of an online migration.
//!
//! # Cutover
//! Everything that can happen while POC-2 still writes happens before the block, so the write
//! pause holds only what must be quiet:
//! 1. preflight: every forward stream healthy, else refuse before anything is blocked;
//! 2. prepare: per service the reverse path, ready but disabled — a publication on the split
//!    database, a pgoutput slot on its server, on legacy a subscription to them (`copy_data =
//!    false`, `enabled = false`); change tracking and the validation's baseline
//!    ([`super::staged`]): the bulk of the comparison, done while the data still moves;
//! 3. the write block: `ALTER DATABASE <legacy> SET default_transaction_read_only = on`, then the
//!    database's client sessions end (`pg_terminate_backend`; walsenders, apply workers and mfe's
//!    own admin sessions are not client sessions of the application): POC-2 reconnects read-only;
//! 4. wait until every slot's `confirmed_flush_lsn` reaches legacy's `pg_current_wal_lsn()` taken
//!    after the block — every change POC-2 committed is applied;
//! 5. the recheck ([`staged::recheck`]): the rows changed since the baseline and its suspects,
//!    by id on both sides, and their references — the rest of the full validation;
//! 6. the forward publications are muted (`publish = ''`): nothing legacy commits from then on
//!    travels forward; each reverse slot advances to its server's current WAL position (past
//!    everything the forward apply wrote, which must never flow back) and each reverse
//!    subscription is enabled. What the reverse path applies to legacy is committed after the
//!    mute, so a change never loops back.
//!
//! The write pause is measured from 3 to 6. After it the forward subscriptions and their slots
//! are dropped. A failure or timeout at 4–6 restores the forward publications, removes what
//! step 2 made, lifts the block (and ends the sessions opened read-only during it, so POC-2's
//! pools reconnect writable), and reports what differed: the sync keeps running. A cutover
//! killed inside its block leaves POC-2 read-only (and perhaps a publication muted): running
//! `mfe migrate cutover` again restores the publications and takes it from the top.
//!
//! Measured on PostgreSQL 15.18: an apply worker started while its database has
//! `default_transaction_read_only = on` still applies INSERT/UPDATE (it does not run statements
//! through the read-only check), so the reverse subscriptions need no role of their own.
//!
//! # Switch-back and finish
//! `switch-back` blocks writes on the split databases (the new services must be stopped first;
//! their writes during it are refused, never lost), waits until legacy confirmed each split
//! server's current WAL position, drops the reverse path, lifts both blocks: POC-2 is the source
//! again. `finish` ends the window: the reverse path goes, POC-2 stays blocked (retired).

use super::progress::{round3, say, StepStats};
use super::staged;
use super::sync::{self, phase, quote_literal, ServiceSync, SyncState};
use super::tables::{self, quote_ident, TableSpec};
use crate::config::{Config, DbService};
use crate::report::{Check, Report};
use anyhow::{bail, Context};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tables of the split schemas that are bookkeeping of the event hub or the migrations.
const INFRA_TABLES: [&str; 3] = ["event_outbox", "processed_events", "_sqlx_migrations"];

/// Puts a database in read-only mode for new sessions and ends its application sessions;
/// returns how many sessions ended.
pub async fn block_writes(admin: &PgPool, database: &str, label: &str) -> anyhow::Result<i64> {
    set_read_only(admin, database, label, true).await
}

/// Lifts [`block_writes`]; ends the sessions opened during the block (they keep its read-only
/// default for their lifetime) so their pools reconnect writable. Returns how many ended.
pub async fn lift_block(admin: &PgPool, database: &str, label: &str) -> anyhow::Result<i64> {
    set_read_only(admin, database, label, false).await
}

/// Sets or resets the database's `default_transaction_read_only` (on legacy through the one
/// admin statement path), then ends its application sessions so the change reaches them.
async fn set_read_only(admin: &PgPool, database: &str, label: &str, on: bool) -> anyhow::Result<i64> {
    let change = if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
    let sql = format!("ALTER DATABASE {} {change}", quote_ident(database));
    if label == "legacy_db" {
        sync::legacy_admin_statement(admin, &sql).await?;
    } else {
        let what = if on { "block writes" } else { "lift the write block" };
        sqlx::raw_sql(&sql).execute(admin).await.with_context(|| format!("{label}: cannot {what}"))?;
    }
    end_sessions(admin, label).await
}

async fn end_sessions(admin: &PgPool, label: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
           AND application_name IS DISTINCT FROM $1",
    )
    .bind(sync::ADMIN_APPLICATION_NAME)
    .fetch_one(admin)
    .await
    .with_context(|| format!("{label}: cannot end the application sessions"))?;
    Ok(n)
}

/// Services whose recorded sync is in `wanted` phase, among `services`.
async fn in_phase(cfg: &Config, services: &[DbService], wanted: &str) -> anyhow::Result<Vec<ServiceSync>> {
    let all = sync::load_all(cfg, services).await?;
    Ok(all.into_iter().filter(|s| s.state.as_ref().is_some_and(|st| st.phase == wanted)).collect())
}

fn state(s: &ServiceSync) -> &SyncState {
    s.state.as_ref().expect("filtered on a recorded state")
}

/// Tables of the split database that have no legacy home (devices, …).
async fn new_tables(s: &ServiceSync) -> anyhow::Result<Vec<String>> {
    let mut known: Vec<&str> = tables::tables_of(&[s.db]).iter().map(|t| t.name).collect();
    known.extend(INFRA_TABLES);
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname <> ALL($1) ORDER BY 1",
    )
    .bind(&known)
    .fetch_all(&s.pool)
    .await?;
    Ok(names.into_iter().map(|n| format!("{}.{n}", s.db.component())).collect())
}

async fn new_tables_check(split: &[ServiceSync]) -> anyhow::Result<Option<Check>> {
    let mut all = Vec::new();
    for s in split {
        all.extend(new_tables(s).await?);
    }
    Ok((!all.is_empty()).then(|| {
        Check::new(
            "new tables",
            true,
            format!("{}: no legacy home — their rows are not carried back to legacy_db", all.join(", ")),
        )
    }))
}

/// Waits until every slot in `slots` on the server of `pool` confirmed `target`; `Err` says why not.
async fn wait_confirmed(pool: &PgPool, slots: &[String], target: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let row: Result<(i64, i64, i64), _> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE confirmed_flush_lsn >= $1::pg_lsn), count(*), \
                    count(*) FILTER (WHERE wal_status = 'lost') FROM pg_replication_slots WHERE slot_name = ANY($2)",
        )
        .bind(target)
        .bind(slots)
        .fetch_one(pool)
        .await;
        match row {
            Err(e) => return Err(format!("cannot read the slots: {}", crate::pg::short_sqlx_error(&e))),
            Ok((_, n, _)) if n < slots.len() as i64 => return Err("a replication slot disappeared".into()),
            Ok((_, _, lost)) if lost > 0 => return Err("a replication slot is lost".into()),
            Ok((done, n, _)) if done == n => return Ok(()),
            Ok((done, n, _)) if Instant::now() >= deadline => {
                return Err(format!("timed out: {done} of {n} subscription(s) had applied up to {target}"))
            }
            Ok(_) => tokio::time::sleep(BLOCKED_POLL).await,
        }
    }
}

/// Polls of the wait inside the write block: each one is write pause.
const BLOCKED_POLL: Duration = Duration::from_millis(10);

/// `mfe migrate cutover`.
pub async fn cutover(cfg: &Config, services: &[DbService], timeout: Duration) -> anyhow::Result<Report> {
    let mut report = Report::new("migrate cutover");
    let all = sync::load_all(cfg, services).await?;
    if let Some(s) = all.iter().find(|s| s.state.as_ref().is_some_and(|st| st.phase == phase::REVERSE)) {
        bail!(
            "cutover refused: {} is already cut over — `mfe migrate switch-back --yes` or `mfe migrate finish`",
            s.db.component()
        );
    }
    let split: Vec<ServiceSync> =
        all.into_iter().filter(|s| s.state.as_ref().is_some_and(|st| st.phase == phase::SYNCING)).collect();
    if split.is_empty() {
        bail!("cutover refused: no sync is running — start one with `mfe migrate sync start`");
    }
    let admin = super::legacy_admin_pool(cfg).await?;
    // A cutover killed inside its write block may have left its reverse path (perhaps enabled)
    // and a forward publication muted: the reverse path goes first, so nothing can loop.
    for s in &split {
        drop_reverse(&admin, s, &reverse_name(s)).await;
        let _ = set_forward_publishing(&admin, state(s), true).await;
    }
    let streams = sync::forward_streams(cfg, &admin, &split).await?;
    if let Some(p) = streams.iter().find_map(|s| s.problem()) {
        bail!("cutover refused, POC-2 was not blocked: {p}");
    }
    let legacy_db = cfg.pg(DbService::Legacy)?.database;
    let mut pools: HashMap<DbService, PgPool> = split.iter().map(|s| (s.db, s.pool.clone())).collect();
    let specs = tables::tables_of(&split.iter().map(|s| s.db).collect::<Vec<_>>());
    if !pools.contains_key(&DbService::Auth) && specs.iter().any(|t| !t.user_refs.is_empty()) {
        pools.insert(DbService::Auth, super::split_pool(cfg, DbService::Auth).await?);
    }

    // Before the block, while POC-2 still writes: the reverse path made ready (disabled), the
    // changed rows noted from now on, the bulk of the validation done.
    let prepared = prepare(cfg, &admin, &split, &pools, &specs).await;
    let (reverse, base) = match prepared {
        Ok(v) => v,
        Err(e) => {
            undo_prepare(&admin, &split).await;
            return Err(e.context("cutover refused, POC-2 was not blocked"));
        }
    };
    if let Some(why) = base.refusal() {
        undo_prepare(&admin, &split).await;
        bail!("cutover refused, POC-2 was not blocked: {why}");
    }

    let blocked = Instant::now();
    let ended = block_writes(&admin, &legacy_db, "legacy_db").await?;
    say(&format!("write block: POC-2's database {legacy_db} is read-only, {ended} application session(s) ended"));
    let (target,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text").fetch_one(&admin).await?;
    let slots: Vec<String> = split.iter().map(|s| state(s).slot_name.clone()).collect();

    let mut muted = false;
    let outcome: Result<(), String> = async {
        wait_confirmed(&admin, &slots, &target, blocked + timeout).await?;
        let caught_up = blocked.elapsed().as_secs_f64();
        report.push(Check::new("catch-up", true, format!("applied up to {target}")).metric("seconds", round3(caught_up)));
        let (checks, rechecked) = staged::recheck(&admin, &pools, &base).await.map_err(|e| crate::error_line(&e))?;
        let rechecked_at = blocked.elapsed().as_secs_f64();
        report.metric("rechecked_rows", rechecked);
        let failed: Vec<String> =
            checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        for c in checks {
            report.push(c);
        }
        if !failed.is_empty() {
            return Err(format!("validation failed — {}", failed.join("; ")));
        }
        // Nothing POC-2 writes from here on travels forward — above all not what the reverse
        // path (enabled next) applies to it, so a change never loops back.
        muted = true;
        for s in &split {
            set_forward_publishing(&admin, state(s), false).await?;
        }
        enable_reverse(&admin, &split, &reverse).await?;
        pause_point().await;
        say(&format!(
            "write pause: caught up after {caught_up:.3} s, {rechecked} changed row(s) rechecked by {rechecked_at:.3} s, reverse path on at {:.3} s",
            blocked.elapsed().as_secs_f64()
        ));
        Ok(())
    }
    .await;
    let pause = blocked.elapsed().as_secs_f64();
    for s in &split {
        staged::untrack(&s.pool, &tables::tables_of(&[s.db])).await;
    }
    let rows_synced: i64 =
        sync::forward_streams(cfg, &admin, &split).await.map(|v| v.iter().map(|s| s.rows_applied).sum()).unwrap_or(0);
    if let Err(reason) = outcome {
        if muted {
            for s in &split {
                let _ = set_forward_publishing(&admin, state(s), true).await;
            }
        }
        undo_prepare(&admin, &split).await;
        let ended = lift_block(&admin, &legacy_db, "legacy_db").await.with_context(|| {
            format!(
                "cutover failed ({reason}) and the write block could not be lifted: POC-2 is still read-only — \
                 run `ALTER DATABASE {} RESET default_transaction_read_only` on legacy_db",
                quote_ident(&legacy_db)
            )
        })?;
        let pause = blocked.elapsed().as_secs_f64();
        say(&format!(
            "cutover failed: {reason}; write block lifted after {pause:.2} s ({ended} read-only session(s) ended) — POC-2 accepts writes again and the sync keeps running"
        ));
        for s in &split {
            sync::set_phase(&s.pool, phase::SYNCING, Some(&format!("last cutover failed: {reason}"))).await?;
        }
        report.push(
            Check::new(
                "cutover",
                false,
                format!("{reason}; the write block was lifted after {pause:.2} s: POC-2 accepts writes again, the sync keeps running, nothing was lost"),
            )
            .metric("write_pause_s", round3(pause)),
        );
        report.metric("write_pause_s", round3(pause));
        report.metric("rows_synced", rows_synced);
        return Ok(report);
    }
    say(&format!("cutover: done; write pause {pause:.2} s; {rows_synced} row changes synced"));
    // The reverse path runs: the forward one goes, outside the pause.
    for s in &split {
        sync::drop_forward(&admin, &s.pool, state(s)).await;
    }
    for (s, name) in split.iter().zip(&reverse) {
        let baseline = sync::tuple_counter(&s.pool, &tables::tables_of(&[s.db])).await.unwrap_or(0);
        sqlx::query(
            "UPDATE mfe_migration.sync SET phase = $1, reverse_name = $2, reverse_tuples_at_start = $3, \
                    cutover_at = now(), write_pause_s = $4",
        )
        .bind(phase::REVERSE)
        .bind(name)
        .bind(baseline)
        .bind(pause)
        .execute(&s.pool)
        .await?;
    }
    report.push(
        StepStats::new("cutover", rows_synced.max(0) as u64, 0, blocked)
            .check(
                true,
                "forward subscriptions detached, slots dropped; the split databases are the source, their writes flow back to legacy_db until `mfe migrate finish`; POC-2 stays read-only",
            )
            .metric("write_pause_s", round3(pause)),
    );
    if let Some(c) = new_tables_check(&split).await? {
        report.push(c);
    }
    report.metric("write_pause_s", round3(pause));
    report.metric("rows_synced", rows_synced);
    Ok(report)
}

/// Test hook: `MFE_CUTOVER_PAUSE_IN_BLOCK=1` stops the cutover at its worst moment to be killed —
/// inside the block, the reverse path enabled, the forward path not yet dropped.
async fn pause_point() {
    if mfe_core::env::lookup("MFE_CUTOVER_PAUSE_IN_BLOCK").is_some_and(|v| v == "1") {
        say("paused inside the write block with the reverse path enabled (MFE_CUTOVER_PAUSE_IN_BLOCK)");
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

/// Everything of the cutover that can happen before the block: per service the reverse path,
/// ready but disabled (its names returned), change tracking, then the validation's baseline.
async fn prepare(
    cfg: &Config,
    admin: &PgPool,
    split: &[ServiceSync],
    pools: &HashMap<DbService, PgPool>,
    specs: &[&'static TableSpec],
) -> anyhow::Result<(Vec<String>, staged::Baseline)> {
    let started = Instant::now();
    let mut names = Vec::new();
    for s in split {
        names.push(prepare_reverse(cfg, admin, s).await?);
    }
    for s in split {
        staged::track(&s.pool, s.db.component().name(), &tables::tables_of(&[s.db])).await?;
    }
    let base = staged::baseline(admin, pools, specs).await?;
    say(&format!(
        "cutover prepared in {:.2} s: reverse path ready (disabled), {} rows compared while POC-2 writes, {} suspect row(s) to recheck in the block",
        started.elapsed().as_secs_f64(),
        base.rows,
        base.tables.iter().map(|t| t.suspects.len()).sum::<usize>()
    ));
    Ok((names, base))
}

/// Undoes [`prepare`]: each service's reverse objects and its change tracking.
async fn undo_prepare(admin: &PgPool, split: &[ServiceSync]) {
    for s in split {
        drop_reverse(admin, s, &reverse_name(s)).await;
        staged::untrack(&s.pool, &tables::tables_of(&[s.db])).await;
    }
}

fn reverse_name(s: &ServiceSync) -> String {
    format!("{}{}_{}", sync::REVERSE_PREFIX, s.db.name(), state(s).sync_id)
}

/// The reverse path of one service, made before the block and left disabled: a publication on
/// the split database (legacy columns only), a pgoutput slot on its server, and on legacy a
/// subscription to them (`copy_data = false`, `enabled = false`). Creating a slot waits for a
/// consistent point of the split server — the slowest step of the reverse path, so it is done
/// here, and the block only advances the slot past everything the forward apply wrote
/// ([`enable_reverse`]). What an earlier attempt left under the same name goes first.
async fn prepare_reverse(cfg: &Config, admin: &PgPool, s: &ServiceSync) -> anyhow::Result<String> {
    let name = reverse_name(s);
    drop_reverse(admin, s, &name).await;
    let label = s.db.component();
    let specs = tables::tables_of(&[s.db]);
    sqlx::raw_sql(&format!("CREATE PUBLICATION {} FOR TABLE {}", quote_ident(&name), sync::publication_tables(&specs)))
        .execute(&s.pool)
        .await
        .with_context(|| format!("{label}: cannot create the reverse publication"))?;
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&name)
        .execute(&s.pool)
        .await
        .with_context(|| format!("{label}: cannot create the reverse replication slot"))?;
    let conn = sync::conninfo(cfg, s.db).await?;
    sync::legacy_admin_statement(
        admin,
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
             WITH (copy_data = false, create_slot = false, slot_name = {}, enabled = false)",
            quote_ident(&name),
            quote_literal(&conn.text),
            quote_ident(&name),
            quote_literal(&name)
        ),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", sync::redact(&e.to_string(), &conn)))
    .with_context(|| format!("{label}: cannot create the reverse subscription on legacy_db"))?;
    Ok(name)
}

/// Mutes (`publish = ''`) or restores the forward publication of `st` on legacy. Muted, its
/// slot's decoding skips every change committed after this statement — verified on PostgreSQL
/// 15: a row inserted while muted never arrives, not even after the publication is restored —
/// and the apply workers need not stop (a disabled subscription's worker only notices at its
/// next wake-up, up to a second later: that was most of the write pause).
async fn set_forward_publishing(admin: &PgPool, st: &SyncState, on: bool) -> Result<(), String> {
    let publish = if on { "insert, update, delete, truncate" } else { "" };
    sync::legacy_admin_statement(
        admin,
        &format!("ALTER PUBLICATION {} SET (publish = {})", quote_ident(&st.publication), quote_literal(publish)),
    )
    .await
    .map_err(|e| {
        format!(
            "{}: cannot {} the forward publication: {}",
            st.service,
            if on { "restore" } else { "mute" },
            crate::error_line(&e)
        )
    })
}

/// Inside the block, after the forward apply stopped: each reverse slot skips what its split
/// server wrote so far (the forward apply's changes — never carried back), then each reverse
/// subscription is enabled.
async fn enable_reverse(admin: &PgPool, split: &[ServiceSync], reverse: &[String]) -> Result<(), String> {
    for (s, name) in split.iter().zip(reverse) {
        sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())")
            .bind(name)
            .execute(&s.pool)
            .await
            .map_err(|e| {
            format!("{}: cannot advance the reverse slot: {}", s.db.component(), crate::pg::short_sqlx_error(&e))
        })?;
    }
    for name in reverse {
        sync::legacy_admin_statement(admin, &format!("ALTER SUBSCRIPTION {} ENABLE", quote_ident(name)))
            .await
            .map_err(|e| {
                format!("cannot enable the reverse subscription {name} on legacy_db: {}", crate::error_line(&e))
            })?;
    }
    Ok(())
}

/// Drops the reverse subscription (on legacy), its slot (on the split server) and publication.
async fn drop_reverse(admin: &PgPool, s: &ServiceSync, name: &str) {
    let q = quote_ident(name);
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1 \
           AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .bind(name)
    .fetch_one(admin)
    .await
    .unwrap_or(false);
    if exists && sync::legacy_admin_statement(admin, &format!("DROP SUBSCRIPTION {q}")).await.is_err() {
        let _ = sync::legacy_admin_statement(admin, &format!("ALTER SUBSCRIPTION {q} DISABLE")).await;
        let _ = sync::legacy_admin_statement(admin, &format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)")).await;
        let _ = sync::legacy_admin_statement(admin, &format!("DROP SUBSCRIPTION {q}")).await;
    }
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
    )
    .bind(name)
    .fetch_all(&s.pool)
    .await;
    let _ = sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {q}")).execute(&s.pool).await;
}

/// Rows the split side changed since cutover, per service (tuple counters).
async fn rows_back(s: &ServiceSync) -> i64 {
    let now = sync::tuple_counter(&s.pool, &tables::tables_of(&[s.db])).await.unwrap_or(0);
    (now - state(s).reverse_tuples_at_start).max(0)
}

/// `mfe migrate switch-back`.
pub async fn switch_back(cfg: &Config, services: &[DbService], yes: bool, timeout: Duration) -> anyhow::Result<Report> {
    let split = in_phase(cfg, services, phase::REVERSE).await?;
    if split.is_empty() {
        bail!("switch-back refused: no service is cut over (see `mfe migrate sync status`)");
    }
    if !yes {
        bail!(
            "`mfe migrate switch-back` makes POC-2 the source of truth again (stop the new services first: their writes during it are refused) — run it again with --yes"
        );
    }
    let mut report = Report::new("migrate switch-back");
    let admin = super::legacy_admin_pool(cfg).await?;
    let started = Instant::now();
    // Quiet the split databases, then wait until legacy has applied everything they wrote.
    let mut failures = Vec::new();
    for s in &split {
        let label = s.db.component().name();
        let db = cfg.pg(s.db)?.database;
        let ended = block_writes(&s.pool, &db, label).await?;
        let (target,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text").fetch_one(&s.pool).await?;
        let name = state(s).reverse_name.clone().unwrap_or_default();
        match wait_confirmed(&s.pool, std::slice::from_ref(&name), &target, Instant::now() + timeout).await {
            Ok(()) => {
                let n = rows_back(s).await;
                report.push(
                    Check::new(
                        format!("switch-back {label}"),
                        true,
                        format!("{n} row changes carried back to legacy_db ({ended} session(s) ended on {label})"),
                    )
                    .metric("rows_back", n),
                );
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    if !failures.is_empty() {
        for s in &split {
            let db = cfg.pg(s.db)?.database;
            lift_block(&s.pool, &db, s.db.component().name()).await?;
        }
        report.push(Check::new(
            "switch-back",
            false,
            format!(
                "{} — nothing was changed: the reverse path keeps running, POC-2 stays read-only",
                failures.join("; ")
            ),
        ));
        return Ok(report);
    }
    for s in &split {
        drop_reverse(&admin, s, state(s).reverse_name.as_deref().unwrap_or_default()).await;
        let db = cfg.pg(s.db)?.database;
        lift_block(&s.pool, &db, s.db.component().name()).await?;
        sync::set_phase(&s.pool, phase::SWITCHED_BACK, Some("switched back: POC-2 is the source of truth")).await?;
    }
    let legacy_db = cfg.pg(DbService::Legacy)?.database;
    lift_block(&admin, &legacy_db, "legacy_db").await?;
    if let Some(c) = new_tables_check(&split).await? {
        report.push(c);
    }
    report.push(Check::new(
        "legacy_db",
        true,
        "write block lifted: POC-2 is the source of truth again; a new attempt starts with `mfe migrate sync start --reset`",
    ));
    report.metric("seconds", round3(started.elapsed().as_secs_f64()));
    Ok(report)
}

/// `mfe migrate finish`.
pub async fn finish(cfg: &Config, services: &[DbService]) -> anyhow::Result<Report> {
    let split = in_phase(cfg, services, phase::REVERSE).await?;
    if split.is_empty() {
        bail!("finish refused: no service is cut over (see `mfe migrate sync status`)");
    }
    let mut report = Report::new("migrate finish");
    let admin = super::legacy_admin_pool(cfg).await?;
    for s in &split {
        let n = rows_back(s).await;
        drop_reverse(&admin, s, state(s).reverse_name.as_deref().unwrap_or_default()).await;
        sync::set_phase(&s.pool, phase::FINISHED, Some("finished: the split database is the only source")).await?;
        report.push(
            Check::new(
                format!("finish {}", s.db.component()),
                true,
                format!("reverse path removed ({n} row changes had been carried back)"),
            )
            .metric("rows_back", n),
        );
    }
    if let Some(c) = new_tables_check(&split).await? {
        report.push(c);
    }
    report.push(Check::new(
        "legacy_db",
        true,
        "stays read-only (retired); switching back is no longer possible without data loss",
    ));
    Ok(report)
}
