//! A whole stack of one test's own, brought up with the real `mfe` binary: every variable that
//! names a port, a directory or a project is set from one port base, so nothing inherited
//! (`make test` exports test.env) points the test at another stack. Ports: `base + 432..436`
//! PostgreSQL, `+572` AMQP, `+582` management, `+592` Erlang distribution, `+379` Redis, `+080`
//! / `+443` nginx, `+090` Prometheus, `+000` gateway, `+001..004` the services. Dropping it stops and removes it (a failed test keeps the app logs in
//! `$TMPDIR/mfe-<project>-logs`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub struct OwnStack {
    pub base: u16,
    pub state_dir: PathBuf,
    pub project: String,
    /// Variables a test sets beyond the stack's own ([`OwnStack::with`]).
    extra: Vec<(String, String)>,
}

/// Inherited variables that would change what the stack is; removed from every run.
const REMOVED: &[&str] = &["RABBITMQ_QUEUE_TYPE", "GATEWAY_UPSTREAMS", "PSP_AUTO_COMPLETE_MS"];

impl OwnStack {
    /// A stack on ports `base..base + 999`, named `project` (its state dir and compose project).
    pub fn new(project: &str, base: u16) -> Self {
        let state_dir = std::env::temp_dir().join(format!("mfe-{project}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        Self { base, state_dir, project: project.to_string(), extra: Vec::new() }
    }

    /// The same stack with `name=value` set for every run (e.g. a short health interval).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_string(), value.to_string()));
        self
    }

    /// Every variable of this stack, as `mfe` and the services read them.
    pub fn env(&self) -> Vec<(String, String)> {
        let b = self.base;
        let db = |off: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{}/{name}", b + off);
        let url = |off: u16| format!("http://127.0.0.1:{}", b + off);
        let state = |p: &str| self.state_dir.join(p).display().to_string();
        [
            ("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_string()),
            ("MFE_STATE_DIR", self.state_dir.display().to_string()),
            ("MFE_RUNTIME", "native".into()),
            ("COMPOSE_PROJECT_NAME", format!("mfe{}", self.project.replace('-', ""))),
            ("AUTH_DATABASE_URL", db(432, "auth_db")),
            ("PAYMENTS_DATABASE_URL", db(433, "payments_db")),
            ("ADMIN_DATABASE_URL", db(434, "admin_db")),
            ("PROFILE_DATABASE_URL", db(435, "profile_db")),
            ("LEGACY_DATABASE_URL", db(436, "mfe_poc2")),
            ("RABBITMQ_URL", format!("amqp://admin:admin@127.0.0.1:{}/%2f", b + 572)),
            ("RABBITMQ_MANAGEMENT_PORT", (b + 582).to_string()),
            ("RABBITMQ_DIST_PORT", (b + 592).to_string()),
            ("REDIS_URL", format!("redis://127.0.0.1:{}", b + 379)),
            ("NGINX_HOST", "localhost".into()),
            ("NGINX_HTTP_PORT", (b + 80).to_string()),
            ("NGINX_HTTPS_PORT", (b + 443).to_string()),
            ("SSL_CERT_PATH", state("ssl/self-signed.crt")),
            ("SSL_KEY_PATH", state("ssl/self-signed.key")),
            ("GATEWAY_URL", url(0)),
            ("AUTH_SERVICE_URL", url(1)),
            ("PAYMENTS_SERVICE_URL", url(2)),
            ("ADMIN_SERVICE_URL", url(3)),
            ("PROFILE_SERVICE_URL", url(4)),
            ("WS_URL", format!("wss://localhost:{}/ws", b + 443)),
            ("PROMETHEUS_PORT", (b + 90).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.extra.iter().cloned())
        .collect()
    }

    /// Runs `mfe args` against this stack.
    pub fn mfe(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
        cmd.args(args).envs(self.env());
        for name in REMOVED {
            cmd.env_remove(name);
        }
        cmd.output().expect("the mfe binary runs")
    }

    /// Runs `mfe args`, which must succeed.
    pub fn must(&self, args: &[&str]) {
        let out = self.mfe(args);
        assert!(out.status.success(), "mfe {args:?} failed:\n{}", text(&out));
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        let _ = self.mfe(&["down"]);
        // A failed test keeps the processes' logs for whoever reads the failure.
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("mfe-{}-logs", self.project));
            let _ = std::fs::remove_dir_all(&kept);
            if Command::new("cp")
                .arg("-r")
                .arg(self.state_dir.join("stack"))
                .arg(&kept)
                .status()
                .is_ok_and(|s| s.success())
            {
                eprintln!("own stack: the app processes' logs are kept in {}", kept.display());
            }
        }
        let _ = self.mfe(&["infra", "clean", "--yes", "--runtime", "native"]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// stdout and stderr of a run, for failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// An HTTP client for the stack's fronts: nginx serves the stack's self-signed certificate for
/// `localhost`.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(20)).build().unwrap()
}

/// One JSON call: the status and the body (`null` when not JSON); a transport failure is
/// status 0 with its message as the body.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(serde_json::Value::Null))
        }
        Err(e) => (0, serde_json::Value::String(format!("{url}: {e}"))),
    }
}
