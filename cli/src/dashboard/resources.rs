//! The Resources panel: every component with its state and, when it is not ready, why; log
//! tails; and the operator's actions (restart, re-run migrations, reset a database), each
//! answered 409 with what it would do until the request carries `"confirm": true`.
//!
//! Infrastructure rows come from [`Runtime::status`] (what `mfe infra status` reports, either
//! runtime) and Prometheus's check; services and the gateway from their health endpoint and the
//! pid/restart/log files the `mfe up` supervisor keeps under `<state dir>/stack/`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{ApiError, Shared};
use crate::config::{Component, DbService};
use crate::infra::Runtime;
use crate::stack::{AppProcess, APP_PROCESSES};

/// Lines of log shown beside a resource.
const LOG_TAIL_LINES: usize = 12;

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub name: String,
    /// `infrastructure`, `service`, `gateway` or `part` (a node or queue of the HA broker).
    pub kind: &'static str,
    pub state: String,
    pub healthy: bool,
    pub detail: String,
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<usize>,
    /// Why it is not ready: the last probe's answer or error, what it waits on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The log file beside it, if the runtime keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub log_tail: Vec<String>,
    /// The actions the page offers for it.
    pub actions: Vec<&'static str>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metrics: Map<String, Value>,
}

fn stack_dir(st: &Shared) -> PathBuf {
    st.ctx.config.state_dir.join("stack")
}

/// The log file of a component on this runtime (native only: docker keeps its logs in the daemon).
fn infra_log(rt: &Runtime, c: Component) -> Option<PathBuf> {
    match rt {
        Runtime::Native(n) => Some(n.log_path(c)),
        Runtime::Docker(_) => None,
    }
}

/// The last `n` lines of a file, reading at most its last 256 KB.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut mid-line
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

fn infra_actions(c: Component) -> Vec<&'static str> {
    let mut a = vec!["restart"];
    if c.db_service().is_some() {
        a.extend(["migrate", "reset"]);
    }
    a
}

async fn infra_resources(st: &Shared) -> Vec<Resource> {
    let rt = &st.runtime;
    let statuses = match rt.status(&Component::ALL).await {
        Ok(s) => s,
        Err(e) => {
            return vec![Resource {
                name: "infrastructure".into(),
                kind: "infrastructure",
                state: "unknown".into(),
                healthy: false,
                detail: crate::error_line(&e),
                ports: vec![],
                url: None,
                restarts: None,
                why: Some(crate::error_line(&e)),
                log: None,
                log_tail: vec![],
                actions: vec![],
                metrics: Map::new(),
            }]
        }
    };
    let mut out = Vec::new();
    for s in statuses {
        let log = infra_log(rt, s.component);
        out.push(Resource {
            name: s.component.name().to_string(),
            kind: "infrastructure",
            state: s.state.clone(),
            healthy: s.healthy,
            detail: s.detail.clone(),
            ports: s.ports.clone(),
            url: None,
            restarts: None,
            why: (!s.healthy).then(|| s.detail.clone()),
            log_tail: log.as_deref().map(|p| tail_lines(p, LOG_TAIL_LINES)).unwrap_or_default(),
            log: log.map(|p| p.display().to_string()),
            actions: infra_actions(s.component),
            metrics: s.metrics.clone(),
        });
        for part in &s.extra {
            out.push(Resource {
                name: part.name.clone(),
                kind: "part",
                state: if part.passed { "ok".into() } else { "failing".into() },
                healthy: part.passed,
                detail: part.detail.clone(),
                ports: vec![],
                url: None,
                restarts: None,
                why: (!part.passed).then(|| part.detail.clone()),
                log: None,
                log_tail: vec![],
                actions: vec![],
                metrics: part.metrics.clone(),
            });
        }
    }
    if let Ok(p) = crate::infra::prometheus::Prometheus::new(&st.ctx.config) {
        if let Some(check) = p.check().await {
            out.push(Resource {
                name: check.name.clone(),
                kind: "infrastructure",
                state: if check.passed { "running".into() } else { "not ready".into() },
                healthy: check.passed,
                detail: check.detail.clone(),
                ports: vec![],
                url: Some(p.url()),
                restarts: None,
                why: (!check.passed).then(|| check.detail.clone()),
                log: None,
                log_tail: vec![],
                actions: vec![],
                metrics: check.metrics,
            });
        }
    }
    out
}

fn read_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (!stat.contains(") Z ")).then_some(pid)
}

/// The readiness answer of a service: `/health/ready` where it has one, else `/health`.
async fn probe(client: &reqwest::Client, base: &str) -> Result<(u16, String), String> {
    let mut last = None;
    for path in ["/health/ready", "/health"] {
        match client.get(format!("{base}{path}")).send().await {
            Ok(r) if r.status().as_u16() == 404 => last = Some((404, String::new())),
            Ok(r) => {
                let code = r.status().as_u16();
                return Ok((code, r.text().await.unwrap_or_default()));
            }
            Err(e) if e.is_connect() => return Err("connection refused".into()),
            Err(e) if e.is_timeout() => return Err("no answer within 3 s".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(last.unwrap_or((404, String::new())))
}

/// What a health body says is wrong: each dependency not up, with its error; else the body.
pub fn why_not_ready(code: u16, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
            let down: Vec<String> = deps
                .iter()
                .filter(|(_, d)| d.get("status").and_then(Value::as_str) != Some("up"))
                .map(|(name, d)| match d.get("error").and_then(Value::as_str) {
                    Some(e) => format!("{name}: {e}"),
                    None => format!("{name}: {}", d.get("status").and_then(Value::as_str).unwrap_or("down")),
                })
                .collect();
            if !down.is_empty() {
                return format!("waits on {}", down.join("; "));
            }
        }
    }
    let body = body.trim();
    if body.is_empty() {
        format!("health answered {code}")
    } else {
        format!("health answered {code}: {}", body.chars().take(400).collect::<String>())
    }
}

async fn app_resource(st: &Shared, client: &reqwest::Client, p: AppProcess) -> Resource {
    let dir = stack_dir(st);
    let pid = read_pid(&dir.join(format!("{}.pid", p.name)));
    let restarts = std::fs::read_to_string(dir.join(format!("{}.restarts", p.name))).unwrap_or_default();
    let n_restarts = restarts.lines().count();
    let url = p.url();
    let log = dir.join(format!("{}.log", p.name));
    let (state, healthy, detail, why) = match probe(client, &url).await {
        Ok((code, _)) if (200..300).contains(&code) => ("ready".to_string(), true, format!("healthy at {url}"), None),
        Ok((code, body)) => {
            let why = why_not_ready(code, &body);
            ("not ready".to_string(), false, format!("answers at {url}, not ready"), Some(why))
        }
        Err(e) if pid.is_some() => ("starting".to_string(), false, format!("process running, {url}: {e}"), Some(e)),
        Err(e) => (
            "stopped".to_string(),
            false,
            format!("nothing answers at {url}"),
            Some(format!("{e} — start the stack with `mfe up`")),
        ),
    };
    let mut detail = match pid {
        Some(pid) => format!("pid {pid}, {detail}"),
        None => detail,
    };
    if let Some(last) = restarts.lines().last() {
        detail.push_str(&format!("; restarted {n_restarts}× after crashes (last: {last})"));
    }
    Resource {
        name: p.name.to_string(),
        kind: if p.name == "gateway" { "gateway" } else { "service" },
        state,
        healthy,
        detail,
        ports: p.port().ok().into_iter().collect(),
        url: Some(url),
        restarts: Some(n_restarts),
        why,
        log_tail: tail_lines(&log, LOG_TAIL_LINES),
        log: log.exists().then(|| log.display().to_string()),
        actions: vec![],
        metrics: Map::new(),
    }
}

/// Every resource: infrastructure first, then the services and the gateway.
pub async fn collect(st: &Shared) -> Vec<Resource> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("a plain HTTP client");
    let infra = infra_resources(st);
    let apps = futures::future::join_all(APP_PROCESSES.iter().map(|p| app_resource(st, &client, *p)));
    let (mut out, apps) = tokio::join!(infra, apps);
    out.extend(apps);
    out
}

pub async fn list(State(st): State<Shared>) -> Json<Value> {
    let resources = collect(&st).await;
    let ready = resources.iter().filter(|r| r.healthy).count();
    Json(json!({
        "runtime": st.runtime.name(),
        "stateDir": st.ctx.config.state_dir.display().to_string(),
        "ready": ready,
        "total": resources.len(),
        "resources": resources,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ActionRequest {
    /// `restart`, `migrate` or `reset`.
    pub action: String,
    /// A component (`rabbitmq`, `auth_db`, ...) or, for `migrate`, a service database or `all`.
    pub target: String,
    #[serde(default)]
    pub confirm: bool,
}

fn db_targets(target: &str) -> Result<Vec<DbService>, ApiError> {
    if target.eq_ignore_ascii_case("all") {
        return Ok(DbService::SPLIT.to_vec());
    }
    if let Ok(c) = Component::parse(target) {
        if let Some(db) = c.db_service() {
            return Ok(vec![db]);
        }
    }
    DbService::parse(target).map(|d| vec![d]).map_err(|e| ApiError::bad_request(crate::error_line(&e)))
}

/// `POST /api/actions {action, target, confirm}`.
pub async fn action(State(st): State<Shared>, Json(req): Json<ActionRequest>) -> Result<Json<Value>, ApiError> {
    let cfg = &st.ctx.config;
    match req.action.as_str() {
        "restart" => {
            let c = Component::parse(&req.target).map_err(|e| ApiError::bad_request(crate::error_line(&e)))?;
            if !req.confirm {
                return Err(ApiError::confirm(
                    format!(
                        "restart {}: it stops and starts again ({} runtime); its clients reconnect — send again with confirm",
                        c.name(),
                        st.runtime.name()
                    ),
                    json!({"action": "restart", "target": c.name()}),
                ));
            }
            let _one = st.action_lock.lock().await;
            st.runtime.restart(&[c]).await.map_err(|e| ApiError::failed(&e))?;
            let status = st.runtime.status(&[c]).await.map_err(|e| ApiError::failed(&e))?;
            let detail = status.first().map(|s| s.check().detail).unwrap_or_default();
            Ok(Json(json!({"action": "restart", "target": c.name(), "done": true, "detail": detail})))
        }
        "migrate" => {
            let dbs = db_targets(&req.target)?;
            let names: Vec<&str> = dbs.iter().map(|d| d.name()).collect();
            if !req.confirm {
                return Err(ApiError::confirm(
                    format!(
                        "apply the pending migrations of {} (`mfe db migrate`) — send again with confirm",
                        names.join(", ")
                    ),
                    json!({"action": "migrate", "targets": names}),
                ));
            }
            let _one = st.action_lock.lock().await;
            let outcomes = crate::db::migrate_all(cfg, &dbs).await.map_err(|e| ApiError::failed(&e))?;
            let each: Vec<Value> = outcomes
                .iter()
                .map(|o| json!({"service": o.service.name(), "applied": o.n_applied(), "known": o.n_known}))
                .collect();
            Ok(Json(json!({"action": "migrate", "done": true, "results": each})))
        }
        "reset" => {
            let dbs = db_targets(&req.target)?;
            if dbs.len() != 1 {
                return Err(ApiError::bad_request("reset one database at a time: name it (e.g. payments_db)"));
            }
            let db = dbs[0];
            if !req.confirm {
                return Err(ApiError::confirm(
                    format!(
                        "reset {}: revert every migration (its data is gone for good), then apply them again — send again with confirm",
                        db.component().name()
                    ),
                    json!({"action": "reset", "target": db.name()}),
                ));
            }
            let _one = st.action_lock.lock().await;
            let reverted = crate::db::revert_service(cfg, db, crate::db::RevertTarget::All)
                .await
                .map_err(|e| ApiError::failed(&e))?;
            let o = crate::db::migrate_service(cfg, db).await.map_err(|e| ApiError::failed(&e))?;
            Ok(Json(json!({"action": "reset", "target": db.name(), "done": true,
                "reverted": reverted.len(), "applied": o.n_applied()})))
        }
        other => Err(ApiError::bad_request(format!("unknown action {other:?}: restart, migrate or reset"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub component: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub lines: Option<usize>,
}

/// `GET /api/logs?component=C&filter=TEXT&lines=N`: the last lines of a component's log, only
/// those containing `filter` (a correlation id, say) when given.
pub async fn logs(State(st): State<Shared>, Query(q): Query<LogQuery>) -> Result<Json<Value>, ApiError> {
    let path = match APP_PROCESSES.iter().find(|p| p.name == q.component) {
        Some(p) => stack_dir(&st).join(format!("{}.log", p.name)),
        None => {
            let c = Component::parse(&q.component).map_err(|e| ApiError::bad_request(crate::error_line(&e)))?;
            infra_log(&st.runtime, c).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the docker runtime keeps {}'s log in the daemon: `mfe infra logs {}`",
                    c.name(),
                    c.name()
                ))
            })?
        }
    };
    let want = q.lines.unwrap_or(200).min(5000);
    let filter = q.filter.filter(|f| !f.trim().is_empty());
    let lines: Vec<String> = match &filter {
        None => tail_lines(&path, want),
        Some(f) => {
            let all = tail_lines(&path, 50_000);
            let hits: Vec<String> = all.into_iter().filter(|l| l.contains(f.as_str())).collect();
            hits[hits.len().saturating_sub(want)..].to_vec()
        }
    };
    Ok(Json(json!({"component": q.component, "path": path.display().to_string(), "exists": path.exists(),
        "filter": filter, "lines": lines})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_why_names_each_dependency_that_is_down() {
        let body = r#"{"service":"payments","status":"degraded","dependencies":{
            "database":{"status":"up","latencyMs":1.0},
            "broker":{"status":"down","error":"connection refused","latencyMs":0.1},
            "redis":{"status":"down","latencyMs":0.1}}}"#;
        assert_eq!(why_not_ready(503, body), "waits on broker: connection refused; redis: down");
        assert_eq!(why_not_ready(503, "  "), "health answered 503");
        assert_eq!(why_not_ready(500, "boom"), "health answered 500: boom");
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, (1..=30).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        assert_eq!(tail_lines(&p, 2), ["line 29", "line 30"]);
        assert!(tail_lines(&dir.path().join("missing"), 3).is_empty());
    }
}
