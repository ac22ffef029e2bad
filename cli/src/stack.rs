//! `mfe up`, `mfe down`, `mfe status`: the whole stack — infrastructure, schemas, the four
//! services and the gateway.
//!
//! The services and the gateway run as supervised background processes: `mfe up` starts one
//! detached supervisor (`mfe supervise`, hidden), which starts every binary with its log and pid
//! file under `<state dir>/stack/`, restarts a crashed one with backoff and records each restart
//! so `mfe status` reports it instead of hiding it. `mfe down` asks the supervisor to stop them
//! in reverse order, then stops the infrastructure.
//!
//! `mfe up --replicas N` runs N processes of each service and of the gateway ([`Instance`]:
//! replica *k* listens [`crate::config::REPLICA_PORT_STEP`] × *k* ports above the first). Every
//! process is given every replica of every service (a list per `*_SERVICE_URL`): the gateway
//! balances its routes over them, the services their calls to each other
//! (`mfe_kit::replicas`); nginx is given every gateway.

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
    GATEWAY,
];

/// The gateway: started last, it fronts the services.
pub const GATEWAY: AppProcess = AppProcess { name: "gateway", binary: "mfe-gateway", url_var: "GATEWAY_URL" };

/// One running copy of an [`AppProcess`]: replica `replica` (0 the first) of the stack's N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub process: AppProcess,
    pub replica: usize,
}

impl Instance {
    /// `auth` for the first replica, `auth-2`, `auth-3`, … for the others: the names of its log,
    /// pid and restart files and of its `mfe status` row.
    pub fn name(&self) -> String {
        mfe_core::replica_name(self.process.name, self.replica)
    }

    /// Its base URL: the process's, with the port of this replica.
    pub fn url(&self) -> anyhow::Result<String> {
        crate::config::replica_url(self.process.url_var, &self.process.url(), self.replica)
    }

    pub fn port(&self) -> anyhow::Result<u16> {
        let url = self.url()?;
        let parsed = url::Url::parse(&url).with_context(|| format!("{} is not a valid URL", self.process.url_var))?;
        parsed.port_or_known_default().with_context(|| format!("{} has no port", self.process.url_var))
    }
}

/// Every instance of a stack of `replicas`, in start order: each service's replicas, then the
/// gateways.
pub fn instances(replicas: usize) -> Vec<Instance> {
    APP_PROCESSES
        .iter()
        .flat_map(|&process| (0..replicas.max(1)).map(move |replica| Instance { process, replica }))
        .collect()
}

/// What every process of a stack of `replicas` is told beyond its port: every replica of every
/// service, one comma-separated list per `*_SERVICE_URL`. Empty with one replica (the
/// environment already says it).
pub fn replica_env(replicas: usize) -> anyhow::Result<Vec<(&'static str, String)>> {
    if replicas <= 1 {
        return Ok(Vec::new());
    }
    APP_PROCESSES
        .iter()
        .filter(|p| !p.is_gateway())
        .map(|&process| {
            let urls =
                (0..replicas).map(|replica| Instance { process, replica }.url()).collect::<anyhow::Result<Vec<_>>>()?;
            Ok((process.url_var, urls.join(",")))
        })
        .collect()
}

impl AppProcess {
    /// The process of a service, from its row of [`mfe_core::SERVICES`].
    pub const fn service(s: Service) -> Self {
        let spec = s.spec();
        Self { name: spec.name, binary: spec.binary, url_var: spec.service_url_var }
    }

    pub fn url(&self) -> String {
        mfe_core::env::get(self.url_var).trim_end_matches('/').to_string()
    }

    /// The port of its first replica.
    pub fn port(&self) -> anyhow::Result<u16> {
        Instance { process: *self, replica: 0 }.port()
    }

    /// Whether this is the gateway (the process that fronts the services).
    pub fn is_gateway(&self) -> bool {
        self.binary == GATEWAY.binary
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
    /// Also run `mfe dashboard` in the background (127.0.0.1:DASHBOARD_PORT) and have every
    /// service and the gateway export their traces to it; `mfe down` stops it.
    #[arg(long)]
    pub dashboard: bool,
    /// Processes of each service and of the gateway (native runtime): replica k listens 100 × k
    /// ports above the first, nginx balances over the gateways, each gateway over the replicas.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=crate::config::MAX_REPLICAS as i64))]
    pub replicas: u16,
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

fn replicas_file(ctx: &Ctx) -> PathBuf {
    crate::config::replicas_file(&ctx.config.state_dir)
}

/// The pid file the supervisor keeps for the process `name` (an [`Instance::name`]).
pub fn pid_file(state_dir: &Path, name: &str) -> PathBuf {
    pid_file_in(&state_dir.join("stack"), name)
}

fn pid_file_in(stack_dir: &Path, name: &str) -> PathBuf {
    stack_dir.join(format!("{name}.pid"))
}

/// The log (stdout and stderr) of the process `name` (an [`Instance::name`]).
pub fn log_file(state_dir: &Path, name: &str) -> PathBuf {
    log_file_in(&state_dir.join("stack"), name)
}

fn log_file_in(stack_dir: &Path, name: &str) -> PathBuf {
    stack_dir.join(format!("{name}.log"))
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
    let mut up_ctx = ctx.clone();
    up_ctx.config.rabbitmq_ha |= args.ha.ha;
    let replicas = usize::from(args.replicas);
    let replicas_before = up_ctx.config.app_replicas;
    up_ctx.config.app_replicas = replicas;
    let ctx = &up_ctx;
    let rt = Runtime::select(ctx, args.runtime.runtime).await?;
    if args.ha.ha {
        infra::refuse_docker_ha(&rt)?;
    }
    if let Some(pid) = read_pid(&supervisor_pid_file(ctx)) {
        if replicas != replicas_before {
            bail!(
                "the stack already runs with {replicas_before} replica(s) (supervisor pid {pid}) — `mfe down --keep-infra` first to change it to {replicas}"
            );
        }
    }
    fs::create_dir_all(stack_dir(ctx)).with_context(|| format!("cannot create {}", stack_dir(ctx).display()))?;
    fs::write(replicas_file(ctx), format!("{replicas}\n"))?;
    if replicas != replicas_before {
        // nginx lists the gateways in its configuration: one started for another count is
        // restarted with the new list.
        rt.stop(&[Component::Nginx]).await?;
    }
    rt.start(&Component::ALL, false).await?;
    let split = crate::config::DbService::SPLIT;
    crate::db::migrate_all(&ctx.config, &split).await?;
    // On the HA broker the services get every node as a failover candidate and quorum queues.
    upgrade_event_queues(rt.broker_hub_config(mfe_events::HubConfig::from_env()?.with_connection_name("mfe up"))?)
        .await?;
    let mut app_env = rt.broker_env()?;
    let dashboard_url = if args.dashboard {
        let (endpoint, url) = start_dashboard(ctx).await?;
        let supervised = read_pid(&supervisor_pid_file(ctx));
        if supervised.is_some_and(|pid| env_of(pid, mfe_kit::otel::ENDPOINT_VAR).as_deref() != Some(endpoint.as_str()))
        {
            eprintln!(
                "up: the services already run without the dashboard's trace endpoint: `mfe down --keep-infra`, then `mfe up --dashboard`, to see their traces"
            );
        }
        app_env.push((mfe_kit::otel::ENDPOINT_VAR, endpoint));
        Some(url)
    } else {
        None
    };
    start_supervisor(ctx, &bin_dir, &app_env)?;
    wait_apps_healthy(replicas, Duration::from_secs(90)).await?;
    wait_front_door_routes(replicas).await?;
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
    if let Some(url) = dashboard_url {
        eprintln!("up: dashboard {url} (also in {})", dashboard_url_file(ctx).display());
    }
    report.emit(ctx.json)
}

/// Recreates the service queues an older version declared with other arguments
/// (`mfe events upgrade-queues`), before the services read them — as the schemas are migrated
/// before they start. A queue that cannot be upgraded now (its consumers already run) is said
/// in one line and left as it is: the services consume it as it is.
async fn upgrade_event_queues(cfg: mfe_events::HubConfig) -> anyhow::Result<()> {
    let hub = mfe_events::Hub::connect(cfg).await?;
    let report = crate::events::upgrade_queues(&hub, None).await;
    hub.close().await;
    for check in report?.checks {
        if check.detail != "current" {
            eprintln!("up: queue {}: {}", check.name, check.detail);
        }
    }
    Ok(())
}

/// `mfe down`: services and gateway (reverse order), then infrastructure.
pub async fn down(ctx: &Ctx, args: DownArgs) -> anyhow::Result<()> {
    infra::prometheus::Prometheus::new(&ctx.config)?.stop();
    stop_supervisor(ctx)?;
    stop_dashboard(ctx);
    if !args.keep_infra {
        // Kept with the infrastructure: nginx still lists that many gateways, and the next
        // `mfe up` restarts it when it asks for another count.
        let _ = fs::remove_file(replicas_file(ctx));
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
    for instance in instances(ctx.config.app_replicas) {
        report.push(app_check(ctx, instance).await);
    }
    if let Some(check) = infra::prometheus::Prometheus::new(&ctx.config)?.check().await {
        report.push(check);
    }
    if let Some(pid) = read_pid(&dashboard_pid_file(ctx)) {
        let detail = format!("up (pid {pid}); its URL with the access token: {}", dashboard_url_file(ctx).display());
        report.push(Check::new("dashboard", true, detail));
    }
    report.metric("runtime", rt.name());
    Ok(report)
}

async fn app_check(ctx: &Ctx, instance: Instance) -> Check {
    let dir = stack_dir(ctx);
    let name = instance.name();
    let pid = read_pid(&pid_file(&ctx.config.state_dir, &name));
    let restarts = fs::read_to_string(dir.join(format!("{name}.restarts"))).unwrap_or_default();
    let n_restarts = restarts.lines().count();
    let url = match instance.url() {
        Ok(url) => url,
        Err(e) => return Check::new(name, false, e.to_string()),
    };
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
    Check::new(name, health.is_ok(), detail).metric("restarts", n_restarts as u64).metric("url", url)
}

async fn probe_health(base: &str) -> Result<(), String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().map_err(|e| e.to_string())?;
    match client.get(format!("{base}/health")).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("/health answered {}", r.status().as_u16())),
        Err(e) => Err(if e.is_connect() { "connection refused".into() } else { e.to_string() }),
    }
}

async fn wait_apps_healthy(replicas: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for instance in instances(replicas) {
        let (name, url) = (instance.name(), instance.url()?);
        loop {
            match probe_health(&url).await {
                Ok(()) => {
                    eprintln!("{name}: healthy at {url}");
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!("{name} did not become healthy at {url}: {e} — see its log with `tail .mfe/stack/{name}.log`")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    Ok(())
}

/// The gateway's view of its upstreams (`GET /health` → `upstreams`: name → `up`; with several
/// replicas of a service, `replicas`: name → URL → `up`, each replica named `auth <url>`), or
/// `None` when no gateway answers at `gateway` with that list.
async fn gateway_upstreams(gateway: &str) -> Option<Vec<(String, bool)>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().ok()?;
    let url = format!("{}/health", gateway.trim_end_matches('/'));
    let body: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    let upstreams = body.get("upstreams")?.as_object()?;
    let mut states = Vec::new();
    for (name, state) in upstreams {
        match body.pointer(&format!("/replicas/{name}")).and_then(|r| r.as_object()).filter(|r| r.len() > 1) {
            Some(replicas) => {
                states.extend(replicas.iter().map(|(url, state)| (format!("{name} {url}"), state == "up")))
            }
            None => states.push((name.clone(), state == "up")),
        }
    }
    Some(states)
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
/// upstream up (at most three health intervals, at least 30 s) — every gateway of `replicas`,
/// every replica of every service.
async fn wait_front_door_routes(replicas: usize) -> anyhow::Result<()> {
    let interval = mfe_core::env::parse_env_ms("GATEWAY_HEALTH_INTERVAL_MS", Duration::from_secs(5))?;
    let timeout = (interval * 3).max(Duration::from_secs(30));
    for gateway in instances(replicas).into_iter().filter(|i| i.process.is_gateway()) {
        let (name, url) = (gateway.name(), gateway.url()?);
        match wait_gateway_routes(&url, timeout).await {
            Ok(waited) => {
                eprintln!("{name}: routes to every service ({:.1} s after they answered)", waited.as_secs_f64())
            }
            Err(NotRouting::NoGateway) => {
                bail!("the gateway at {url} does not list its upstreams on /health — see `tail .mfe/stack/{name}.log`")
            }
            Err(NotRouting::Down(down)) => bail!(
                "the gateway at {url} still marks {} down {} s after every service answered /health — see `mfe status` and `tail .mfe/stack/{name}.log`",
                down.join(", "),
                timeout.as_secs()
            ),
        }
    }
    Ok(())
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

fn dashboard_pid_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("dashboard.pid")
}

fn dashboard_url_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("dashboard.url")
}

/// `mfe up --dashboard`: `mfe dashboard` on DASHBOARD_PORT in its own process group, its log in
/// `<state>/stack/dashboard.log`; one already running is kept. Returns the OTLP endpoint the
/// services export to and the page's URL (with its token).
async fn start_dashboard(ctx: &Ctx) -> anyhow::Result<(String, String)> {
    let port = crate::config::port_var("DASHBOARD_PORT")?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let url_file = dashboard_url_file(ctx);
    if read_pid(&dashboard_pid_file(ctx)).is_some() {
        let url = fs::read_to_string(&url_file).with_context(|| format!("cannot read {}", url_file.display()))?;
        return Ok((endpoint, url.trim().to_string()));
    }
    if crate::infra::ports::in_use(port) {
        bail!(
            "the dashboard cannot start: {} — stop it or set DASHBOARD_PORT",
            crate::infra::ports::describe_taken(port)
        );
    }
    let _ = fs::remove_file(&url_file);
    let log = fs::OpenOptions::new().create(true).append(true).open(stack_dir(ctx).join("dashboard.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("dashboard").arg("--port").arg(port.to_string()).arg("--url-file").arg(&url_file);
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    let mut child = cmd.spawn().context("cannot start the dashboard")?;
    fs::write(dashboard_pid_file(ctx), format!("{}\n", child.id()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(url) = fs::read_to_string(&url_file) {
            if url.ends_with('\n') {
                return Ok((endpoint, url.trim().to_string()));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the dashboard exited ({status}) — see {}", stack_dir(ctx).join("dashboard.log").display());
        }
        if Instant::now() > deadline {
            bail!("the dashboard did not listen within 15 s — see {}", stack_dir(ctx).join("dashboard.log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the dashboard `mfe up --dashboard` started (SIGINT: it stops as on Ctrl-C).
fn stop_dashboard(ctx: &Ctx) {
    let Some(pid) = read_pid(&dashboard_pid_file(ctx)) else { return };
    eprintln!("down: stopping the dashboard (pid {pid})");
    crate::infra::native::stop_process(pid, nix::sys::signal::Signal::SIGINT, Duration::from_secs(10));
    let _ = fs::remove_file(dashboard_pid_file(ctx));
    let _ = fs::remove_file(dashboard_url_file(ctx));
}

/// The value of `name` in the environment process `pid` was started with (what the running
/// supervisor passed to the services).
fn env_of(pid: u32, name: &str) -> Option<String> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(name)?.strip_prefix('=').map(str::to_string)
    })
}

fn start_supervisor(ctx: &Ctx, bin_dir: &Path, env: &[(&'static str, String)]) -> anyhow::Result<()> {
    let dir = stack_dir(ctx);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(pid) = read_pid(&supervisor_pid_file(ctx)) {
        eprintln!("up: services already supervised (pid {pid})");
        return Ok(());
    }
    for instance in instances(ctx.config.app_replicas) {
        let port = instance.port()?;
        if crate::infra::ports::in_use(port) {
            bail!(
                "{} cannot start: {} — stop it or set {}",
                instance.name(),
                crate::infra::ports::describe_taken(port),
                instance.process.url_var
            );
        }
        let _ = fs::remove_file(dir.join(format!("{}.restarts", instance.name())));
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
    let all = instances(ctx.config.app_replicas);
    let replica_env = replica_env(ctx.config.app_replicas)?;
    let mut children: Vec<Option<tokio::process::Child>> = Vec::new();
    // Per process: the next restart's delay (doubling from FIRST_BACKOFF up to MAX_BACKOFF, back
    // to FIRST_BACKOFF after a run of STABLE_RUN), when it was started, and when a crashed one
    // is due again — each process waits out its own backoff, never another's.
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    const MAX_BACKOFF: Duration = Duration::from_secs(30);
    const STABLE_RUN: Duration = Duration::from_secs(10);
    let mut backoff = vec![FIRST_BACKOFF; all.len()];
    let mut started = vec![Instant::now(); all.len()];
    let mut due: Vec<Option<Instant>> = vec![None; all.len()];
    for instance in &all {
        children.push(Some(spawn_app(&dir, &args.bin_dir, instance, &replica_env)?));
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for (i, instance) in all.iter().enumerate() {
            if let Some(at) = due[i] {
                if Instant::now() >= at {
                    due[i] = None;
                    started[i] = Instant::now();
                    children[i] = spawn_app(&dir, &args.bin_dir, instance, &replica_env).ok();
                }
                continue;
            }
            let name = instance.name();
            let exited = match children[i].as_mut() {
                Some(child) => child.try_wait()?.map(|s| s.to_string()),
                None => Some("not running".into()),
            };
            if let Some(status) = exited {
                children[i] = None;
                if started[i].elapsed() >= STABLE_RUN {
                    backoff[i] = FIRST_BACKOFF;
                }
                let line = format!(
                    "{} {name} exited ({status}); restarting in {:.1} s",
                    chrono::Utc::now().format("%H:%M:%S"),
                    backoff[i].as_secs_f64()
                );
                eprintln!("supervisor: {line}");
                let mut f =
                    fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.restarts")))?;
                use std::io::Write;
                writeln!(f, "{} at {}", status, chrono::Utc::now().format("%H:%M:%S"))?;
                due[i] = Some(Instant::now() + backoff[i]);
                backoff[i] = (backoff[i] * 2).min(MAX_BACKOFF);
            }
        }
    }
    eprintln!("supervisor: stopping");
    for (i, instance) in all.iter().enumerate().rev() {
        if let Some(mut child) = children[i].take() {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        let _ = fs::remove_file(pid_file_in(&dir, &instance.name()));
        eprintln!("supervisor: {} stopped", instance.name());
    }
    let _ = fs::remove_file(supervisor_pid_file(ctx));
    Ok(())
}

/// Starts `instance` on its port, told where every replica is ([`replica_env`]).
fn spawn_app(
    dir: &Path,
    bin_dir: &Path,
    instance: &Instance,
    replica_env: &[(&'static str, String)],
) -> anyhow::Result<tokio::process::Child> {
    let (name, p) = (instance.name(), instance.process);
    let log = fs::OpenOptions::new().create(true).append(true).open(log_file_in(dir, &name))?;
    let child = tokio::process::Command::new(bin_dir.join(p.binary))
        .env("PORT", instance.port()?.to_string())
        .envs(replica_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", p.binary))?;
    if let Some(pid) = child.id() {
        fs::write(pid_file_in(dir, &name), format!("{pid}\n"))?;
    }
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_is_read_from_the_environment_a_process_started_with() {
        let me = std::process::id();
        assert_eq!(env_of(me, "PATH"), std::env::var("PATH").ok(), "the test runner starts with a PATH");
        assert_eq!(env_of(me, "PAT"), None, "a prefix of a name is not the name");
        assert_eq!(env_of(me, "MFE_NO_SUCH_VARIABLE_SET"), None);
        assert_eq!(env_of(u32::MAX, "PATH"), None, "no such process");
    }

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
    fn replicas_are_named_placed_a_hundred_ports_apart_and_started_services_first() {
        let all = instances(2);
        assert_eq!(all.len(), 2 * APP_PROCESSES.len());
        let names: Vec<String> = all.iter().map(Instance::name).collect();
        assert_eq!(names[..2], ["auth", "auth-2"]);
        assert_eq!(names[names.len() - 2..], ["gateway", "gateway-2"]);
        for i in &all {
            assert_eq!(i.port().unwrap(), i.process.port().unwrap() + 100 * i.replica as u16, "{}", i.name());
        }
        assert_eq!(instances(1).iter().map(Instance::name).collect::<Vec<_>>(), APP_PROCESSES.map(|p| p.name));
    }

    #[test]
    fn every_process_is_told_every_replica_of_every_service() {
        assert!(replica_env(1).unwrap().is_empty(), "one replica: the environment says it already");
        let env = replica_env(3).unwrap();
        assert_eq!(env.len(), mfe_core::SERVICES.len());
        let (var, urls) = &env[0];
        assert_eq!(*var, "AUTH_SERVICE_URL");
        let port = APP_PROCESSES[0].port().unwrap();
        let want: Vec<String> = (0..3).map(|k| format!("http://127.0.0.1:{}", port + 100 * k)).collect();
        assert_eq!(urls, &want.join(","));
    }

    #[tokio::test]
    async fn a_replicated_route_counts_as_routing_only_when_every_replica_is_in() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let body = r#"{"upstreams":{"auth":"up"},"replicas":{"auth":{"http://a":"up","http://b":"down"}}}"#;
                let resp =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        let err = wait_gateway_routes(&url, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err, NotRouting::Down(vec!["auth http://b".into()]));
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
