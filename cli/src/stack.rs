//! `mfe up`, `mfe down`, `mfe status`: the whole stack — infrastructure, schemas, the four
//! services and the gateway.
//!
//! The services and the gateway run as supervised background processes: `mfe up` starts one
//! detached supervisor (`mfe supervise`, hidden), which starts every binary with its log and pid
//! file under `<state dir>/stack/`, restarts a crashed one with backoff and records each restart
//! so `mfe status` reports it instead of hiding it. `mfe down` asks the supervisor to stop them
//! in reverse order, then stops the infrastructure.

use crate::config::Component;
use crate::infra::{self, Runtime};
use crate::report::{Check, Report};
use crate::Ctx;
use anyhow::{bail, Context};
use mfe_core::Service;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One process of the application tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppProcess {
    pub name: &'static str,
    pub binary: &'static str,
    /// The variable holding its base URL; its port is where it listens.
    pub url_var: &'static str,
}

/// Start order: services first, the gateway (which fronts them) last. Every row of
/// [`mfe_core::SERVICES`] is here (a test checks it).
pub const APP_PROCESSES: [AppProcess; 5] = [
    AppProcess::service(Service::Auth),
    AppProcess::service(Service::Profile),
    AppProcess::service(Service::Payments),
    AppProcess::service(Service::Admin),
    AppProcess { name: "gateway", binary: "mfe-gateway", url_var: "GATEWAY_URL" },
];

impl AppProcess {
    /// The process of a service, from its row of [`mfe_core::SERVICES`].
    pub const fn service(s: Service) -> Self {
        let spec = s.spec();
        Self { name: spec.name, binary: spec.binary, url_var: spec.service_url_var }
    }

    pub fn url(&self) -> String {
        mfe_core::env::get(self.url_var).trim_end_matches('/').to_string()
    }

    pub fn port(&self) -> anyhow::Result<u16> {
        let url = url::Url::parse(&self.url()).with_context(|| format!("{} is not a valid URL", self.url_var))?;
        url.port_or_known_default().with_context(|| format!("{} has no port", self.url_var))
    }
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub runtime: infra::RuntimeArg,
    #[command(flatten)]
    pub ha: infra::HaArg,
    /// Directory holding the service binaries (default: beside this `mfe`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    #[command(flatten)]
    pub observability: infra::ObservabilityArg,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub runtime: infra::RuntimeArg,
    /// Stop the services and gateway only; leave the infrastructure running.
    #[arg(long)]
    pub keep_infra: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub runtime: infra::RuntimeArg,
}

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// Directory holding the service binaries.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: PathBuf,
}

fn stack_dir(ctx: &Ctx) -> PathBuf {
    ctx.config.state_dir.join("stack")
}

fn supervisor_pid_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("supervisor.pid")
}

fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the mfe binary")?;
    Ok(exe.parent().context("the mfe binary has no directory")?.to_path_buf())
}

/// `mfe up`: infra → certificates → schemas → services and gateway → health → (with
/// `--observability`, Prometheus) → status table.
pub async fn up(ctx: &Ctx, args: UpArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => default_bin_dir()?,
    };
    for p in APP_PROCESSES {
        let bin = bin_dir.join(p.binary);
        if !bin.is_file() {
            bail!("{} not found at {} — build it with `cargo build --workspace`", p.binary, bin.display());
        }
    }
    let generated = crate::ssl::ensure_certificates(&ctx.config)?;
    if generated {
        eprintln!(
            "up: generated TLS certificates in {}",
            ctx.config.ssl_cert_path.parent().unwrap_or(Path::new(".")).display()
        );
    }
    let mut ha_ctx = ctx.clone();
    ha_ctx.config.rabbitmq_ha |= args.ha.ha;
    let ctx = &ha_ctx;
    let rt = Runtime::select(ctx, args.runtime.runtime).await?;
    if args.ha.ha {
        infra::refuse_docker_ha(&rt)?;
    }
    rt.start(&Component::ALL, false).await?;
    let split = crate::config::DbService::SPLIT;
    crate::db::migrate_all(&ctx.config, &split).await?;
    // On the HA broker the services get every node as a failover candidate and quorum queues.
    start_supervisor(ctx, &bin_dir, &rt.broker_env()?)?;
    wait_apps_healthy(Duration::from_secs(90)).await?;
    wait_front_door_routes().await?;
    if args.observability.observability {
        infra::prometheus::Prometheus::new(&ctx.config)?.start().await?;
    }
    let report = status_report(ctx, &rt).await?;
    eprintln!("up: stack ready in {:.1} s ({} runtime)", t0.elapsed().as_secs_f64(), rt.name());
    eprintln!(
        "up: https://{}:{}/ (nginx), {} (gateway); stop with `mfe down`",
        ctx.config.nginx_host,
        ctx.config.nginx_https_port,
        mfe_core::env::get("GATEWAY_URL")
    );
    report.emit(ctx.json)
}

/// `mfe down`: services and gateway (reverse order), then infrastructure.
pub async fn down(ctx: &Ctx, args: DownArgs) -> anyhow::Result<()> {
    infra::prometheus::Prometheus::new(&ctx.config)?.stop();
    stop_supervisor(ctx)?;
    if !args.keep_infra {
        let rt = Runtime::select(ctx, args.runtime.runtime).await?;
        rt.stop(&Component::ALL).await?;
    }
    eprintln!("down: everything stopped");
    Ok(())
}

/// `mfe status`: one table of infrastructure, services and gateway.
pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<()> {
    let rt = Runtime::select(ctx, args.runtime.runtime).await?;
    status_report(ctx, &rt).await?.emit(ctx.json)
}

async fn status_report(ctx: &Ctx, rt: &Runtime) -> anyhow::Result<Report> {
    let mut report = Report::new("status");
    for s in rt.status(&Component::ALL).await? {
        for check in s.checks() {
            report.push(check);
        }
    }
    for p in APP_PROCESSES {
        report.push(app_check(ctx, p).await);
    }
    if let Some(check) = infra::prometheus::Prometheus::new(&ctx.config)?.check().await {
        report.push(check);
    }
    report.metric("runtime", rt.name());
    Ok(report)
}

async fn app_check(ctx: &Ctx, p: AppProcess) -> Check {
    let dir = stack_dir(ctx);
    let pid = read_pid(&dir.join(format!("{}.pid", p.name)));
    let restarts = fs::read_to_string(dir.join(format!("{}.restarts", p.name))).unwrap_or_default();
    let n_restarts = restarts.lines().count();
    let url = p.url();
    let health = probe_health(&url).await;
    let mut detail = match (&pid, &health) {
        (Some(pid), Ok(())) => format!("running pid {pid}, healthy at {url}"),
        (Some(pid), Err(e)) => format!("running pid {pid}, unhealthy at {url}: {e}"),
        (None, Ok(())) => format!("healthy at {url} (not started by mfe)"),
        (None, Err(_)) => "stopped".to_string(),
    };
    if n_restarts > 0 {
        let last = restarts.lines().last().unwrap_or_default();
        detail.push_str(&format!("; restarted {n_restarts}× after crashes (last: {last})"));
    }
    Check::new(p.name, health.is_ok(), detail).metric("restarts", n_restarts as u64).metric("url", url)
}

async fn probe_health(base: &str) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().map_err(|e| e.to_string())?;
    match client.get(format!("{base}/health")).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("/health answered {}", r.status().as_u16())),
        Err(e) => Err(if e.is_connect() { "connection refused".into() } else { e.to_string() }),
    }
}

async fn wait_apps_healthy(timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for p in APP_PROCESSES {
        loop {
            match probe_health(&p.url()).await {
                Ok(()) => {
                    eprintln!("{}: healthy at {}", p.name, p.url());
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} did not become healthy at {}: {e} — see its log with `tail .mfe/stack/{}.log`",
                        p.name,
                        p.url(),
                        p.name
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    Ok(())
}

/// The gateway's view of its upstreams (`GET /health` → `upstreams`: name → `up`), or `None` when
/// no gateway answers at `gateway` with that list.
async fn gateway_upstreams(gateway: &str) -> Option<Vec<(String, bool)>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().ok()?;
    let url = format!("{}/health", gateway.trim_end_matches('/'));
    let body: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    let upstreams = body.get("upstreams")?.as_object()?;
    Some(upstreams.iter().map(|(name, state)| (name.clone(), state == "up")).collect())
}

/// Why [`wait_gateway_routes`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRouting {
    /// No gateway answered `/health` with its upstreams.
    NoGateway,
    /// These upstreams were still marked down at the deadline.
    Down(Vec<String>),
}

/// Polls the gateway at `gateway` until it marks every upstream up; returns how long that took.
/// The gateway takes an upstream out when a health check fails and back in at the next passing
/// one (`GATEWAY_HEALTH_INTERVAL_MS` later), so a service that answers its own `/health` may
/// still get 503 through the gateway for up to one interval.
pub async fn wait_gateway_routes(gateway: &str, timeout: Duration) -> Result<Duration, NotRouting> {
    let started = Instant::now();
    loop {
        let down = match gateway_upstreams(gateway).await {
            Some(upstreams) if !upstreams.is_empty() => {
                let down: Vec<String> = upstreams.into_iter().filter(|(_, up)| !up).map(|(n, _)| n).collect();
                if down.is_empty() {
                    return Ok(started.elapsed());
                }
                NotRouting::Down(down)
            }
            _ => NotRouting::NoGateway,
        };
        if started.elapsed() >= timeout {
            return Err(down);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last step of `mfe up`: every service answers its `/health`, but the front door (nginx →
/// gateway) routes to it only once the gateway's own health check has passed — a check that ran
/// while the service was still starting marked it down. Waits for the gateway to mark every
/// upstream up (at most three health intervals, at least 30 s).
async fn wait_front_door_routes() -> anyhow::Result<()> {
    let interval = mfe_core::env::parse_env_ms("GATEWAY_HEALTH_INTERVAL_MS", Duration::from_secs(5))?;
    let timeout = (interval * 3).max(Duration::from_secs(30));
    let gateway = APP_PROCESSES[APP_PROCESSES.len() - 1].url();
    match wait_gateway_routes(&gateway, timeout).await {
        Ok(waited) => {
            eprintln!("gateway: routes to every service ({:.1} s after they answered)", waited.as_secs_f64());
            Ok(())
        }
        Err(NotRouting::NoGateway) => {
            bail!("the gateway at {gateway} does not list its upstreams on /health — see `tail .mfe/stack/gateway.log`")
        }
        Err(NotRouting::Down(down)) => bail!(
            "the gateway still marks {} down {} s after every service answered /health — see `mfe status` and `tail .mfe/stack/gateway.log`",
            down.join(", "),
            timeout.as_secs()
        ),
    }
}

/// After something restarted a shared dependency (the event-hub suite restarts RabbitMQ), waits
/// until a running gateway routes to every service again, so the next command a user types
/// (`mfe test proxy`, `mfe ws probe`) does not meet a 503 while the services reconnect.
/// `Ok(None)`: no gateway is running, nothing to wait for; `Ok(Some(waited))`: routing again;
/// `Err`: still some upstream down at the deadline (named in the message).
pub async fn wait_routing_again(timeout: Duration) -> Result<Option<Duration>, String> {
    let gateway = APP_PROCESSES[APP_PROCESSES.len() - 1].url();
    if gateway_upstreams(&gateway).await.is_none() {
        return Ok(None);
    }
    match wait_gateway_routes(&gateway, timeout).await {
        Ok(waited) => Ok(Some(waited)),
        Err(NotRouting::NoGateway) => Err(format!("the gateway at {gateway} stopped answering /health")),
        Err(NotRouting::Down(down)) => Err(format!(
            "the gateway still marks {} down {} s after the broker restart — see `mfe status`",
            down.join(", "),
            timeout.as_secs()
        )),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    (!stat.contains(") Z ")).then_some(pid)
}

fn start_supervisor(ctx: &Ctx, bin_dir: &Path, env: &[(&'static str, String)]) -> anyhow::Result<()> {
    let dir = stack_dir(ctx);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(pid) = read_pid(&supervisor_pid_file(ctx)) {
        eprintln!("up: services already supervised (pid {pid})");
        return Ok(());
    }
    for p in APP_PROCESSES {
        let port = p.port()?;
        if crate::infra::ports::in_use(port) {
            bail!(
                "{} cannot start: {} — stop it or set {}",
                p.name,
                crate::infra::ports::describe_taken(port),
                p.url_var
            );
        }
        let _ = fs::remove_file(dir.join(format!("{}.restarts", p.name)));
    }
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("supervisor.log"))?;
    // The mfe beside the services (a rebuilt binary replaces the running one's path).
    let mfe = match bin_dir.join("mfe") {
        p if p.is_file() => p,
        _ => std::env::current_exe()?,
    };
    let mut cmd = std::process::Command::new(mfe);
    cmd.arg("supervise").arg("--bin-dir").arg(bin_dir).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    let child = cmd.spawn().context("cannot start the service supervisor")?;
    fs::write(supervisor_pid_file(ctx), format!("{}\n", child.id()))?;
    Ok(())
}

fn stop_supervisor(ctx: &Ctx) -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = read_pid(&supervisor_pid_file(ctx)) else { return Ok(()) };
    eprintln!("down: stopping services and gateway (supervisor pid {pid})");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(40);
    while read_pid(&supervisor_pid_file(ctx)).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if read_pid(&supervisor_pid_file(ctx)).is_some() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = fs::remove_file(supervisor_pid_file(ctx));
    Ok(())
}

/// The supervisor loop (`mfe supervise`, started by `mfe up`): runs every app process, restarts
/// crashed ones with backoff and records each restart; on SIGTERM stops them in reverse order.
pub async fn supervise(ctx: &Ctx, args: SuperviseArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let dir = stack_dir(ctx);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut children: Vec<Option<tokio::process::Child>> = Vec::new();
    let mut backoff = vec![Duration::from_millis(500); APP_PROCESSES.len()];
    for p in APP_PROCESSES {
        children.push(Some(spawn_app(&dir, &args.bin_dir, p)?));
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, p) in APP_PROCESSES.iter().enumerate() {
            let exited = match children[i].as_mut() {
                Some(child) => child.try_wait()?.map(|s| s.to_string()),
                None => Some("not running".into()),
            };
            if let Some(status) = exited {
                let line =
                    format!("{} {} exited ({status}); restarting", chrono::Utc::now().format("%H:%M:%S"), p.name);
                eprintln!("supervisor: {line}");
                let mut f =
                    fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.restarts", p.name)))?;
                use std::io::Write;
                writeln!(f, "{} at {}", status, chrono::Utc::now().format("%H:%M:%S"))?;
                tokio::time::sleep(backoff[i]).await;
                backoff[i] = (backoff[i] * 2).min(Duration::from_secs(30));
                children[i] = spawn_app(&dir, &args.bin_dir, *p).ok();
            }
        }
    }
    eprintln!("supervisor: stopping");
    for (i, p) in APP_PROCESSES.iter().enumerate().rev() {
        if let Some(mut child) = children[i].take() {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        let _ = fs::remove_file(dir.join(format!("{}.pid", p.name)));
        eprintln!("supervisor: {} stopped", p.name);
    }
    let _ = fs::remove_file(supervisor_pid_file(ctx));
    Ok(())
}

fn spawn_app(dir: &Path, bin_dir: &Path, p: AppProcess) -> anyhow::Result<tokio::process::Child> {
    let log = fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.log", p.name)))?;
    let child = tokio::process::Command::new(bin_dir.join(p.binary))
        .env("PORT", p.port()?.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", p.binary))?;
    if let Some(pid) = child.id() {
        fs::write(dir.join(format!("{}.pid", p.name)), format!("{pid}\n"))?;
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in gateway on a free port: its `/health` lists `auth` down for the first
    /// `down_for` requests, then up. Returns its URL and the count of requests it answered.
    async fn fake_gateway(down_for: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let auth = if n < down_for { "down" } else { "up" };
                let body = format!(r#"{{"status":"ok","upstreams":{{"auth":"{auth}","payments":"up"}}}}"#);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn up_waits_until_the_gateway_marks_every_upstream_up() {
        let (url, count) = fake_gateway(3).await;
        let waited = wait_gateway_routes(&url, Duration::from_secs(10)).await;
        assert!(waited.is_ok(), "{waited:?}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4, "returned at the first all-up answer");
    }

    #[tokio::test]
    async fn up_gives_up_naming_the_upstreams_still_down() {
        let (url, _) = fake_gateway(usize::MAX).await;
        let started = Instant::now();
        let err = wait_gateway_routes(&url, Duration::from_millis(600)).await.unwrap_err();
        assert_eq!(err, NotRouting::Down(vec!["auth".into()]));
        assert!(started.elapsed() < Duration::from_secs(5), "bounded by its timeout");
        let nobody = wait_gateway_routes("http://127.0.0.1:9", Duration::from_millis(300)).await;
        assert_eq!(nobody, Err(NotRouting::NoGateway));
    }

    #[test]
    fn every_service_of_the_table_is_started_once_before_the_gateway() {
        for spec in &mfe_core::SERVICES {
            let n = APP_PROCESSES[..4].iter().filter(|p| p.name == spec.name && p.binary == spec.binary).count();
            assert_eq!(n, 1, "{} is started {n} times", spec.name);
        }
        assert_eq!(APP_PROCESSES.len(), mfe_core::SERVICES.len() + 1);
        assert_eq!(APP_PROCESSES[APP_PROCESSES.len() - 1].name, "gateway");
    }
}
