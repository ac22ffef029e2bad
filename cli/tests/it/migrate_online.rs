//! The online migration end to end: the built `mfe` against fresh databases (named by a UUID) on
//! each PostgreSQL server of a stack whose servers run `wal_level = logical` (the stack `mfe
//! infra start` makes from this tree), while a POC-2 writer keeps committing on the legacy side.
//!
//! Needs that stack: `set -a; source test.env; set +a; mfe infra start` (or `make test`).
//! Every test removes the subscriptions, slots and publications it made before its databases,
//! also when it fails (the guard's `Drop`).

use crate::migrate_support::*;
use mfe::migrate::tables::TABLES;
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The POC-2 writer

/// The column of each table whose value the writer changes on every update (a version).
fn version_column(table: &str) -> &'static str {
    match table {
        "users" => "name",
        "refresh_tokens" => "token",
        "payments" => "description",
        "payment_transactions" => "status_message",
        "audit_logs" => "action",
        "system_config" => "description",
        "user_profiles" => "bio",
        other => panic!("no version column for {other}"),
    }
}

/// What the writer knows it committed.
#[derive(Debug, Default)]
struct WriterLog {
    /// (table, id) → Some(version) when the row exists, None once deleted.
    rows: BTreeMap<(String, String), Option<String>>,
    /// Rows whose last statement may or may not have committed (session ended mid-statement).
    uncertain: BTreeSet<(String, String)>,
    /// Statements that committed.
    committed: u64,
    /// Statements refused as read-only.
    refused: u64,
    /// Sessions the server ended under the writer.
    sessions_ended: u64,
}

struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    log: Arc<Mutex<WriterLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts committing on every migrated table of `url`, a round every `pause`.
    fn start(url: String, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let task = tokio::spawn(writer_loop(url, pause, stop.clone(), committed.clone(), refused.clone(), log.clone()));
        Writer { stop, committed, refused, log, task }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until `n` more statements committed (bounded).
    async fn wait_more(&self, n: u64, within: Duration) {
        let target = self.committed() + n;
        let deadline = Instant::now() + within;
        while self.committed() < target {
            assert!(Instant::now() < deadline, "the writer committed fewer than {n} statements in {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) -> WriterLog {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("the writer stops").unwrap();
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

/// One statement of a round: table, id, SQL, its text parameters, and the row's state after it.
struct Op {
    table: &'static str,
    id: String,
    sql: String,
    params: Vec<String>,
    after: Option<String>,
}

fn insert(table: &'static str, id: &str, version: &str, parent: &str) -> Op {
    let sql = match table {
        "users" => "INSERT INTO users (id, email, password_hash, name, updated_at) VALUES ($1, $1 || '@w.test', 'h', $2, now())",
        "refresh_tokens" => "INSERT INTO refresh_tokens (id, user_id, token, expires_at) VALUES ($1, $3, $2, now() + interval '1 day')",
        "payments" => "INSERT INTO payments (id, sender_id, amount, description, updated_at) VALUES ($1, $3, 1.5, $2, now())",
        "payment_transactions" => "INSERT INTO payment_transactions (id, payment_id, status, status_message) VALUES ($1, $3, 'pending', $2)",
        "audit_logs" => "INSERT INTO audit_logs (id, user_id, action) VALUES ($1, $3, $2)",
        "system_config" => "INSERT INTO system_config (id, key, value, description, updated_at) VALUES ($1, $1, '{\"w\": 1}', $2, now()) ON CONFLICT DO NOTHING",
        "user_profiles" => "INSERT INTO user_profiles (id, user_id, bio, updated_at) VALUES ($1, $3, $2, now())",
        _ => unreachable!(),
    };
    // system_config has no parent: $3 stays unused, so it is not bound.
    let mut params = vec![id.to_string(), version.to_string()];
    if table != "system_config" {
        params.push(parent.to_string());
    }
    Op { table, id: id.into(), sql: sql.into(), params, after: Some(version.into()) }
}

fn update(table: &'static str, id: &str, version: &str) -> Op {
    let sql = format!("UPDATE \"{table}\" SET \"{}\" = $2 WHERE id = $1", version_column(table));
    Op { table, id: id.into(), sql, params: vec![id.into(), version.into()], after: Some(version.into()) }
}

fn delete(table: &'static str, id: &str) -> Op {
    Op {
        table,
        id: id.into(),
        sql: format!("DELETE FROM \"{table}\" WHERE id = $1"),
        params: vec![id.into()],
        after: None,
    }
}

/// The statements of round `n`: inserts on every table, updates of rows of round n-3, deletes of
/// leaf rows of round n-5 and of the childless user and payment of round n-2.
fn round(n: u64, log: &WriterLog) -> Vec<Op> {
    let id = |p: &str, k: u64| format!("w-{p}-{k}");
    let v = format!("v{n}");
    let u = id("u", n);
    let mut ops = vec![
        insert("users", &u, &v, ""),
        insert("users", &id("lu", n), &v, ""),
        insert("refresh_tokens", &id("rt", n), &format!("tok-{n}"), &u),
        insert("payments", &id("p", n), &v, &u),
        insert("payments", &id("lp", n), &v, &u),
        insert("payment_transactions", &id("t", n), &v, &id("p", n)),
        insert("audit_logs", &id("a", n), &v, &u),
        insert("system_config", &id("c", n), &v, ""),
        insert("user_profiles", &id("pr", n), &v, &u),
    ];
    let exists = |t: &str, i: &str| matches!(log.rows.get(&(t.to_string(), i.to_string())), Some(Some(_)));
    if n >= 3 {
        let k = n - 3;
        for (t, p) in [
            ("users", "u"),
            ("refresh_tokens", "rt"),
            ("payments", "p"),
            ("payment_transactions", "t"),
            ("audit_logs", "a"),
            ("system_config", "c"),
            ("user_profiles", "pr"),
        ] {
            if exists(t, &id(p, k)) {
                let version = if t == "refresh_tokens" { format!("tok-{k}-{n}") } else { v.clone() };
                ops.push(update(t, &id(p, k), &version));
            }
        }
    }
    if n >= 5 {
        for (t, p) in [
            ("refresh_tokens", "rt"),
            ("payment_transactions", "t"),
            ("audit_logs", "a"),
            ("system_config", "c"),
            ("user_profiles", "pr"),
        ] {
            if exists(t, &id(p, n - 5)) {
                ops.push(delete(t, &id(p, n - 5)));
            }
        }
    }
    if n >= 2 {
        if exists("payments", &id("lp", n - 2)) {
            ops.push(delete("payments", &id("lp", n - 2)));
        }
        if exists("users", &id("lu", n - 2)) {
            ops.push(delete("users", &id("lu", n - 2)));
        }
    }
    ops
}

async fn writer_loop(
    url: String,
    pause: Duration,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    log: Arc<Mutex<WriterLog>>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            conn = PgConnection::connect(&url).await.ok();
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let ops = round(n, &log.lock().unwrap());
        for op in ops {
            let c = conn.as_mut().unwrap();
            let mut q = sqlx::query(&op.sql);
            for p in &op.params {
                q = q.bind(p);
            }
            let key = (op.table.to_string(), op.id.clone());
            match q.execute(&mut *c).await {
                Ok(done) => {
                    let mut l = log.lock().unwrap();
                    let is_insert = op.sql.starts_with("INSERT");
                    // A delete leaves no row; an update that found none shows an uncertain
                    // delete had committed; an insert that inserted nothing changes nothing.
                    if op.after.is_none() || (!is_insert && done.rows_affected() == 0) {
                        l.rows.insert(key.clone(), None);
                        l.uncertain.remove(&key);
                    } else if done.rows_affected() == 1 {
                        l.rows.insert(key.clone(), op.after.clone());
                        l.uncertain.remove(&key);
                    }
                    l.committed += 1;
                    committed.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
                    let mut l = log.lock().unwrap();
                    match code.as_deref() {
                        // Refused by the write block: not committed.
                        Some("25006") => {
                            l.refused += 1;
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        // Any other database error (a parent that is itself uncertain): not committed.
                        Some(c) if c != "57P01" => {}
                        // The session ended under the statement: it may have committed.
                        _ => {
                            l.sessions_ended += 1;
                            l.uncertain.insert(key);
                        }
                    }
                    drop(l);
                    conn = None;
                    break;
                }
            }
        }
        n += 1;
        tokio::time::sleep(pause).await;
    }
}

/// Every `w-` row of every migrated table in `pool`s: (table, id) → version column.
async fn written_rows(stack: &Stack, legacy: bool) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for spec in &TABLES {
        let pool = if legacy { stack.legacy().await } else { stack.split(spec).await };
        let sql = format!("SELECT id, \"{}\" FROM \"{}\" WHERE id LIKE 'w-%'", version_column(spec.name), spec.name);
        let rows: Vec<(String, String)> = sqlx::query_as(&sql).fetch_all(&pool).await.unwrap();
        for (id, v) in rows {
            out.insert((spec.name.to_string(), id), v);
        }
        pool.close().await;
    }
    out
}

/// The split side holds exactly what the writer committed: every row it knows with its last
/// version, none it deleted, and rows whose fate it does not know as legacy has them.
async fn assert_split_matches_the_writer_log(stack: &Stack, log: &WriterLog) {
    let split = written_rows(stack, false).await;
    let legacy = written_rows(stack, true).await;
    assert_eq!(split, legacy, "split and legacy differ on the writer's rows");
    let mut expected = BTreeMap::new();
    for (key, state) in &log.rows {
        if log.uncertain.contains(key) {
            continue;
        }
        if let Some(v) = state {
            expected.insert(key.clone(), v.clone());
        }
    }
    for key in &log.uncertain {
        if let Some(v) = legacy.get(key) {
            expected.insert(key.clone(), v.clone());
        }
    }
    let missing: Vec<_> = expected.keys().filter(|k| !split.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = split.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
    let changed: Vec<_> = expected.iter().filter(|(k, v)| split.get(*k).is_some_and(|s| s != *v)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "lost {missing:?}, unexpected {extra:?}, stale {changed:?}"
    );
    assert!(expected.len() > 100, "the writer committed too little to prove anything: {}", expected.len());
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_online_run_loses_nothing_a_writer_commits_across_sync_and_cutover_and_reports_the_write_pause() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let writer = Writer::start(stack.urls["LEGACY_DATABASE_URL"].clone(), Duration::from_millis(40));
    writer.wait_more(200, Duration::from_secs(60)).await;

    let out = tokio::time::timeout(
        Duration::from_secs(240),
        stack.mfe_async(&["--json", "migrate", "run", "--online", "--timeout", "60"]),
    )
    .await
    .expect("migrate run --online ends within 240 s");
    assert_ok(&out, "migrate run --online");
    let report = json(&out);
    assert_eq!(report["command"], "migrate run");
    assert_eq!(report["passed"], true, "{report}");
    let names: Vec<&str> = report["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for step in
        ["backup", "preflight", "slots", "export", "import", "subscriptions", "catch-up", "auth_db.users", "cutover"]
    {
        assert!(names.contains(&step), "step {step} missing from {names:?}");
    }
    for spec in &TABLES {
        assert!(names.contains(&spec.label().as_str()), "{} not validated: {names:?}", spec.label());
    }
    let pause = report["metrics"]["write_pause_s"].as_f64().expect("a write_pause_s metric");
    assert!(pause > 0.0 && pause < 60.0, "write pause {pause}");
    assert!(report["metrics"]["rows_synced"].as_i64().unwrap() > 0, "{report}");
    // The writer kept changing rows after the baseline: the block rechecked them by id.
    assert!(report["metrics"]["rechecked_rows"].as_i64().unwrap() > 0, "{report}");
    assert!(stderr(&out).contains("write pause"), "{}", stderr(&out));

    // POC-2 is blocked now: the writer sees its session end and then its writes refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while writer.refused() == 0 {
        assert!(Instant::now() < deadline, "the writer was never refused after the cutover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = writer.finish().await;
    eprintln!(
        "figures: writer committed {} statements ({} refused, {} sessions ended); write pause {pause} s; rows synced {}; run {} s",
        log.committed, log.refused, log.sessions_ended, report["metrics"]["rows_synced"], report["metrics"]["seconds"]
    );
    assert!(log.sessions_ended >= 1 || log.refused >= 1, "{log:?}");
    assert_split_matches_the_writer_log(&stack, &log).await;
    // The forward path is gone; only the reverse subscriptions (and their slots and publications) remain.
    let left = stack.replication_leftovers().await;
    assert!(left.iter().all(|o| o.contains("mfe_rev_")), "{left:?}");
    assert_ok(&stack.mfe_async(&["migrate", "finish"]).await, "finish");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cutover_killed_inside_its_write_block_is_completed_by_running_it_again() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let writer = Writer::start(stack.urls["LEGACY_DATABASE_URL"].clone(), Duration::from_millis(40));
    writer.wait_more(100, Duration::from_secs(60)).await;
    assert_ok(&stack.mfe_async(&["migrate", "sync", "start"]).await, "sync start");
    writer.wait_more(100, Duration::from_secs(60)).await;

    let mut child = stack
        .command(&["migrate", "cutover", "--timeout", "60"])
        .env("MFE_CUTOVER_PAUSE_IN_BLOCK", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed at the worst moment: POC-2 blocked, the reverse path enabled, the forward one alive.
    // A connection per look: the block ends the sessions it finds.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // pg_subscription is shared by the server's databases: only this test's database counts
        // (the other tests of this file run their cutovers beside it). A look the block cuts
        // short is simply the next look.
        let look = async {
            let mut legacy = PgConnection::connect(&stack.urls["LEGACY_DATABASE_URL"]).await?;
            let enabled: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname LIKE 'mfe_rev_%' AND subenabled \
                 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            )
            .fetch_one(&mut legacy)
            .await?;
            let _ = legacy.close().await;
            Ok::<_, sqlx::Error>(enabled)
        };
        if look.await.unwrap_or(false) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the cutover ended before its pause point");
        assert!(Instant::now() < deadline, "the cutover never reached its pause point");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // POC-2 stays blocked after the kill: a new session is read-only and the writer is refused.
    let mut legacy = PgConnection::connect(&stack.urls["LEGACY_DATABASE_URL"]).await.unwrap();
    let read_only: String =
        sqlx::query_scalar("SHOW default_transaction_read_only").fetch_one(&mut legacy).await.unwrap();
    legacy.close().await.unwrap();
    assert_eq!(read_only, "on", "POC-2 stays blocked after the kill");
    let refused_before = writer.refused();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.refused() == refused_before {
        assert!(Instant::now() < deadline, "the writer was not refused within 30 s of the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let out = stack.mfe_async(&["--json", "migrate", "cutover", "--timeout", "60"]).await;
    assert_ok(&out, "cutover run again after the kill");
    assert_eq!(json(&out)["passed"], true);
    let log = writer.finish().await;
    assert_split_matches_the_writer_log(&stack, &log).await;
    assert_ok(&stack.mfe_async(&["migrate", "finish"]).await, "finish");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_difference_found_at_cutover_lifts_the_block_keeps_syncing_and_a_later_cutover_passes() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let writer = Writer::start(stack.urls["LEGACY_DATABASE_URL"].clone(), Duration::from_millis(40));
    writer.wait_more(200, Duration::from_secs(60)).await;
    assert_ok(&stack.mfe_async(&["migrate", "sync", "start"]).await, "sync start");
    writer.wait_more(200, Duration::from_secs(60)).await;

    let status = stack.mfe_async(&["--json", "migrate", "sync", "status"]).await;
    assert_ok(&status, "sync status");
    let status = json(&status);
    for c in status["checks"].as_array().unwrap() {
        assert_eq!(c["metrics"]["phase"], "syncing", "{c}");
        assert!(c["metrics"]["lag_bytes"].is_i64() && c["metrics"]["lag_seconds"].is_number(), "{c}");
    }
    let applied: i64 =
        status["checks"].as_array().unwrap().iter().map(|c| c["metrics"]["rows_applied"].as_i64().unwrap()).sum();
    assert!(applied > 0, "no row applied while the writer wrote: {status}");

    let admin = stack.pool("ADMIN_DATABASE_URL").await;
    sqlx::query("INSERT INTO audit_logs (id, action, created_at) VALUES ('x-injected', 'forged', now())")
        .execute(&admin)
        .await
        .unwrap();
    let out = stack.mfe_async(&["--json", "migrate", "cutover", "--timeout", "60"]).await;
    assert_eq!(out.status.code(), Some(1), "cutover must fail: {}", stderr(&out));
    let report = json(&out);
    let failed = failed_checks(&report);
    assert!(
        failed.iter().any(|(n, d)| n == "admin_db.audit_logs" && d.contains("1 extra row(s) (ids: x-injected)")),
        "{failed:?}"
    );
    let cut = failed.iter().find(|(n, _)| n == "cutover").expect("a failed cutover check");
    assert!(cut.1.contains("lifted") && cut.1.contains("keeps running"), "{cut:?}");
    assert_eq!(failed.len(), 2, "only the injected table and the cutover fail: {failed:?}");

    // POC-2 writes again and the sync goes on.
    writer.wait_more(100, Duration::from_secs(30)).await;
    assert!(
        writer.refused() > 0 || writer.log.lock().unwrap().sessions_ended > 0,
        "the writer never noticed the block"
    );
    let status = stack.mfe_async(&["--json", "migrate", "sync", "status"]).await;
    assert_ok(&status, "sync status after the failed cutover");

    sqlx::query("DELETE FROM audit_logs WHERE id = 'x-injected'").execute(&admin).await.unwrap();
    admin.close().await;
    let out = stack.mfe_async(&["--json", "migrate", "cutover", "--timeout", "60"]).await;
    assert_ok(&out, "second cutover");
    assert!(json(&out)["metrics"]["write_pause_s"].as_f64().unwrap() > 0.0);
    let log = writer.finish().await;
    assert_split_matches_the_writer_log(&stack, &log).await;
    assert_ok(&stack.mfe_async(&["migrate", "finish"]).await, "finish");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
}

/// The payments and profile services (their library crates, in this process) on port 0, against
/// this test's split databases: the writes after cutover go through the real APIs.
struct NewServices {
    payments: String,
    profile: String,
    jwt: mfe_kit::jwt::JwtKeys,
    http: reqwest::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NewServices {
    async fn start(stack: &Stack) -> Self {
        use mfe_core::Service;
        use mfe_kit::config::ServiceConfig;
        let config = |service: Service, var: &str| {
            let mut cfg = ServiceConfig::from_env(service).expect("service configuration from the environment");
            cfg.port = 0;
            cfg.bind = "127.0.0.1".into();
            cfg.database_url = stack.urls[var].clone();
            cfg
        };
        let mut settings = payments_service::Settings::from_env().expect("payments settings");
        settings.service = config(Service::Payments, "PAYMENTS_DATABASE_URL");
        let payments = payments_service::Application::build(settings).await.expect("payments service builds");
        let payments_url = format!("http://127.0.0.1:{}", payments.port());
        let mut profile_settings =
            profile_service::Settings::for_service(config(Service::Profile, "PROFILE_DATABASE_URL"))
                .expect("profile settings");
        profile_settings.subscription =
            mfe_events::Subscription::exclusive("profile-switch-back-test", &[mfe_events::types::AUTH_USER_REGISTERED]);
        let profile = profile_service::Application::build(profile_settings).await.expect("profile service builds");
        assert!(
            profile.state().broker.wait_until_consuming(std::time::Duration::from_secs(20)).await,
            "the profile service never started consuming events"
        );
        let profile_url = format!("http://127.0.0.1:{}", profile.port());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = payments.run_until_stopped().await;
            }),
            tokio::spawn(async move {
                let _ = profile.run_until(std::future::pending()).await;
            }),
        ];
        Self {
            payments: payments_url,
            profile: profile_url,
            jwt: mfe_kit::jwt::JwtKeys::new(&mfe_core::env::get("JWT_SECRET")),
            http: reqwest::Client::new(),
            tasks,
        }
    }

    fn token(&self, user_id: &str) -> String {
        self.jwt.issue(user_id, mfe_kit::jwt::Role::Customer, Duration::from_secs(300), None).unwrap().0
    }

    /// `POST /api/payments` as `sender`; the new payment's id.
    async fn create_payment(&self, sender: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/api/payments", self.payments))
            .bearer_auth(self.token(sender))
            .json(&serde_json::json!({"amount": "42", "currency": "USD", "description": "made after cutover"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create payment: {}", resp.text().await.unwrap_or_default());
        let body: serde_json::Value = resp.json().await.unwrap();
        let payment = body.get("payment").unwrap_or(&body);
        payment["id"].as_str().expect("the created payment has an id").to_string()
    }

    /// `PUT /api/profile/me` as `user`.
    async fn change_bio(&self, user: &str, bio: &str) {
        let resp = self
            .http
            .put(format!("{}/api/profile/me", self.profile))
            .bearer_auth(self.token(user))
            .json(&serde_json::json!({"bio": bio}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "change profile: {}", resp.text().await.unwrap_or_default());
    }

    /// The switch-back runbook: stop the new services first.
    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_switch_back_the_new_services_writes_are_in_legacy_and_a_new_attempt_starts_over() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let writer = Writer::start(stack.urls["LEGACY_DATABASE_URL"].clone(), Duration::from_millis(10));
    writer.wait_more(150, Duration::from_secs(60)).await;
    writer.finish().await;
    assert_ok(&stack.mfe_async(&["migrate", "sync", "start"]).await, "sync start");
    assert_ok(&stack.mfe_async(&["migrate", "cutover"]).await, "cutover");
    let legacy = stack.legacy().await;
    let blocked = sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('l-blocked', 'x')").execute(&legacy).await;
    assert!(blocked.unwrap_err().to_string().contains("read-only"), "POC-2 is not blocked after cutover");

    // The new services write through their APIs: a payment created, a profile changed.
    let auth = stack.pool("AUTH_DATABASE_URL").await;
    let sender: String =
        sqlx::query_scalar("SELECT min(id) FROM users WHERE id LIKE 'w-u-%'").fetch_one(&auth).await.unwrap();
    let profile = stack.pool("PROFILE_DATABASE_URL").await;
    let (profile_id, profile_user): (String, String) =
        sqlx::query_as("SELECT id, user_id FROM user_profiles WHERE id LIKE 'w-pr-%' ORDER BY id DESC LIMIT 1")
            .fetch_one(&profile)
            .await
            .unwrap();
    profile.close().await;
    let services = NewServices::start(&stack).await;
    let payment_id = services.create_payment(&sender).await;
    services.change_bio(&profile_user, "changed by the profile service").await;
    services.stop();

    let refused = stack.mfe_async(&["migrate", "switch-back"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    let out = stack.mfe_async(&["--json", "migrate", "switch-back", "--yes"]).await;
    assert_ok(&out, "switch-back");
    let report = json(&out);
    let details: Vec<&str> =
        report["checks"].as_array().unwrap().iter().map(|c| c["detail"].as_str().unwrap()).collect();
    assert!(details.iter().any(|d| d.contains("auth_db.devices") && d.contains("no legacy home")), "{details:?}");

    let legacy = stack.legacy().await;
    let amount: String = sqlx::query_scalar("SELECT amount::text FROM payments WHERE id = $1")
        .bind(&payment_id)
        .fetch_one(&legacy)
        .await
        .expect("the payment made after cutover is in legacy");
    assert_eq!(amount, "42.0000");
    let (n_transactions,): (i64,) = sqlx::query_as("SELECT count(*) FROM payment_transactions WHERE payment_id = $1")
        .bind(&payment_id)
        .fetch_one(&legacy)
        .await
        .unwrap();
    assert!(n_transactions >= 1, "the payment's transaction row is in legacy too");
    let bio: String = sqlx::query_scalar("SELECT bio FROM user_profiles WHERE id = $1")
        .bind(&profile_id)
        .fetch_one(&legacy)
        .await
        .unwrap();
    assert_eq!(bio, "changed by the profile service");
    sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('l-after', 'x')")
        .execute(&legacy)
        .await
        .expect("POC-2 accepts writes after the switch-back");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());

    // POC-2 is the source again: a new attempt must start from empty split tables.
    let again = stack.mfe_async(&["migrate", "sync", "start"]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--reset") && stderr(&again).contains("nothing was changed"), "{}", stderr(&again));
    assert_ok(&stack.mfe_async(&["migrate", "sync", "start", "--reset"]).await, "sync start --reset");
    assert_ok(&stack.mfe_async(&["migrate", "cutover"]).await, "second cutover");
    let finish = stack.mfe_async(&["--json", "migrate", "finish"]).await;
    assert_ok(&finish, "finish");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
    let legacy = stack.legacy().await;
    let blocked = sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('l-retired', 'x')").execute(&legacy).await;
    assert!(blocked.is_err(), "POC-2 must stay blocked after finish");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_table_without_a_primary_key_is_refused_with_one_line_and_nothing_is_made() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let legacy = stack.legacy().await;
    sqlx::query("ALTER TABLE audit_logs DROP CONSTRAINT audit_logs_pkey").execute(&legacy).await.unwrap();
    let out = stack.mfe_async(&["migrate", "sync", "start"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(
        err.contains("legacy_db.audit_logs has no primary key or replica identity") && err.contains("ADD PRIMARY KEY"),
        "{err}"
    );
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erroring_subscription_or_a_lost_slot_is_one_clear_line_and_cutover_refuses_before_blocking() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let stack = Stack::logical().await;
    let writer = Writer::start(stack.urls["LEGACY_DATABASE_URL"].clone(), Duration::from_millis(10));
    writer.wait_more(100, Duration::from_secs(60)).await;
    writer.finish().await;
    assert_ok(&stack.mfe_async(&["migrate", "sync", "start"]).await, "sync start");

    // A row already in admin_db with the id POC-2 then inserts: the apply worker fails on it.
    let admin = stack.pool("ADMIN_DATABASE_URL").await;
    sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('x-conflict', 'split')").execute(&admin).await.unwrap();
    let legacy = stack.legacy().await;
    sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('x-conflict', 'legacy')").execute(&legacy).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let out = stack.mfe_async(&["--json", "migrate", "sync", "status"]).await;
        let failed = failed_checks(&json(&out));
        if let Some((_, d)) = failed.iter().find(|(n, _)| n == "sync admin_db") {
            assert_eq!(out.status.code(), Some(1));
            break d.clone();
        }
        assert!(Instant::now() < deadline, "the apply error never showed in sync status");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(line.contains("apply error") && line.contains("mfe infra logs admin_db"), "{line}");
    // The native runtime's log gives the reason itself.
    assert!(line.contains("duplicate key value") && line.contains("audit_logs"), "{line}");
    let out = stack.mfe_async(&["migrate", "cutover"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("POC-2 was not blocked") && stderr(&out).contains("admin_db"), "{}", stderr(&out));
    sqlx::query("INSERT INTO audit_logs (id, action) VALUES ('x-still-writable', 'x')")
        .execute(&legacy)
        .await
        .expect("a refused cutover leaves POC-2 writable");

    // Removing the conflicting row lets the subscription go on: nothing was lost.
    sqlx::query("DELETE FROM audit_logs WHERE id = 'x-conflict'").execute(&admin).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_logs WHERE id IN ('x-conflict', 'x-still-writable') AND action <> 'split'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the subscription did not recover after the conflict was removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A TRUNCATE on POC-2 reaches the split table too.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM system_config").fetch_one(&admin).await.unwrap();
    assert!(before > 0, "system_config has no rows to truncate");
    sqlx::query("TRUNCATE system_config").execute(&legacy).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM system_config").fetch_one(&admin).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the TRUNCATE did not reach admin_db");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // payments' slot disappears from legacy while syncing.
    let payments = stack.pool("PAYMENTS_DATABASE_URL").await;
    let sub: String = sqlx::query_scalar(
        "SELECT subname::text FROM pg_subscription WHERE subname LIKE 'mfe_sync_payments_%' \
         AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&payments)
    .await
    .unwrap();
    sqlx::raw_sql(&format!("ALTER SUBSCRIPTION \"{sub}\" DISABLE")).execute(&payments).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active")
        .bind(&sub)
        .fetch_one(&legacy)
        .await
        .unwrap()
        > 0
    {
        assert!(Instant::now() < deadline, "the walsender of {sub} did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&sub).execute(&legacy).await.unwrap();
    sqlx::raw_sql(&format!("ALTER SUBSCRIPTION \"{sub}\" ENABLE")).execute(&payments).await.unwrap();
    let out = stack.mfe_async(&["--json", "migrate", "sync", "status"]).await;
    let failed = failed_checks(&json(&out));
    let (_, line) = failed.iter().find(|(n, _)| n == "sync payments_db").expect("payments_db reported");
    assert!(line.contains("slot is gone") && line.contains("mfe migrate sync stop"), "{line}");
    let out = stack.mfe_async(&["migrate", "cutover"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("POC-2 was not blocked") && stderr(&out).contains("slot is gone"),
        "{}",
        stderr(&out)
    );

    // `sync stop` removes everything, the dead slot's subscription included.
    assert_ok(&stack.mfe_async(&["migrate", "sync", "stop"]).await, "sync stop");
    assert_eq!(stack.replication_leftovers().await, Vec::<String>::new());
}
