//! The native runtime: every component as a local process started from installed binaries,
//! each with its own `data/`, `log/` and `run/` under `<state dir>/native/<component>/`.
//!
//! This is the one module that knows how to start PostgreSQL, RabbitMQ, Redis and nginx as
//! processes. Ports come from the configuration (the URLs), so a test stack on other ports runs
//! beside a developer's own. Starting is all-or-nothing per call: binaries and ports are checked
//! for every component before anything starts, and what this call started is stopped again if a
//! later component fails.

use crate::config::{Component, Config, PgTarget};
use crate::infra::{health, ports, ComponentStatus};
use anyhow::{bail, Context};
use std::fs;
use std::io::{BufRead, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Server settings of every PostgreSQL the stack runs, for the online migration
/// (`mfe migrate sync`): the legacy server publishes the forward stream and subscribes to the
/// reverse one, the split servers do the opposite, and tests run several migrations at once on
/// the same servers (each needs 4 slots and 4 senders per direction, one apply worker per
/// subscription). The same list is in docker-compose.yml (`x-postgres` command); a compose test
/// keeps them equal.
pub const LOGICAL_REPLICATION_SETTINGS: [&str; 5] = [
    "wal_level=logical",
    "max_replication_slots=32",
    "max_wal_senders=32",
    "max_logical_replication_workers=16",
    "max_worker_processes=32",
];

/// The native runtime over one state directory.
pub struct Native {
    cfg: Config,
    base: PathBuf,
}

/// The user PostgreSQL runs as: `postgres` when we are root (initdb refuses root), else us.
struct PgUser {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Native {
    pub fn new(cfg: &Config) -> Self {
        Self { cfg: cfg.clone(), base: cfg.state_dir.join("native") }
    }

    fn dir(&self, c: Component) -> PathBuf {
        self.base.join(c.name())
    }

    /// The log file `mfe infra logs` shows for a component.
    pub fn log_path(&self, c: Component) -> PathBuf {
        let dir = self.dir(c).join("log");
        match c {
            Component::Rabbitmq => dir.join("rabbit.log"),
            Component::Redis => dir.join("redis.log"),
            Component::Nginx => dir.join("error.log"),
            _ => dir.join("postgres.log"),
        }
    }

    /// Name of a component this runtime is running, if any (used by runtime `auto`).
    pub fn any_running(&self) -> Option<&'static str> {
        Component::ALL.iter().find(|c| self.pid(**c).is_some()).map(|c| c.name())
    }

    /// The state dir holds something of this runtime (data a later start would bring back).
    pub fn has_data(&self) -> bool {
        fs::read_dir(&self.base).is_ok_and(|mut d| d.next().is_some())
    }

    /// The pid of our process for `c`, when it is alive.
    pub fn pid(&self, c: Component) -> Option<u32> {
        let pid_file = match c.db_service() {
            Some(_) => self.dir(c).join("data/postmaster.pid"),
            None => self.dir(c).join("run/pid"),
        };
        let text = fs::read_to_string(pid_file).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        alive.then_some(pid)
    }

    /// Starts `comps` (skipping those already running), waits for health.
    /// `explicit` is true when the user named the components: then a missing prerequisite
    /// (nginx's certificates) is an error instead of a skip.
    pub async fn start(&self, comps: &[Component], explicit: bool) -> anyhow::Result<()> {
        let mut to_start = Vec::new();
        for &c in comps {
            if self.pid(c).is_some() {
                continue;
            }
            if c == Component::Nginx && !super::nginx::certificate_ready(&self.cfg, explicit)? {
                continue;
            }
            to_start.push(c);
        }
        // Preflight everything before starting anything.
        for &c in &to_start {
            binary_for(c)?;
            let mut needed = self.cfg.ports(c)?;
            if c == Component::Rabbitmq {
                needed.push(rabbitmq_dist_port(self.cfg.rabbitmq_port));
            }
            for port in needed {
                if ports::in_use(port) {
                    bail!(
                        "{c} cannot start: {} — stop it or move {c} to another port (see .env.example)",
                        ports::describe_taken(port)
                    );
                }
            }
        }
        let mut started = Vec::new();
        for &c in &to_start {
            eprintln!("{c}: starting");
            let t0 = Instant::now();
            let result = async {
                self.spawn(c).await?;
                let timeout = if c == Component::Rabbitmq { Duration::from_secs(120) } else { Duration::from_secs(60) };
                health::wait_healthy(&self.cfg, c, timeout)
                    .await
                    .with_context(|| format!("see its log: {}", self.log_path(c).display()))
            }
            .await;
            match result {
                Ok(detail) => {
                    eprintln!("{c}: healthy in {:.1} s ({detail})", t0.elapsed().as_secs_f64());
                    started.push(c);
                }
                Err(e) => {
                    started.push(c);
                    // Leave nothing half-started: stop what this call started.
                    let _ = self.stop(&started).await;
                    return Err(e.context(format!("{c} failed to start")));
                }
            }
        }
        Ok(())
    }

    async fn spawn(&self, c: Component) -> anyhow::Result<()> {
        let dir = self.dir(c);
        for sub in ["data", "log", "run"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        match c {
            Component::Rabbitmq => self.spawn_rabbitmq(&dir),
            Component::Redis => self.spawn_redis(&dir),
            Component::Nginx => self.spawn_nginx(&dir),
            db => {
                let target = self.cfg.pg(db.db_service().expect("a database"))?;
                self.start_postgres(db, &dir, &target).await
            }
        }
    }

    async fn start_postgres(&self, c: Component, dir: &Path, target: &PgTarget) -> anyhow::Result<()> {
        let bin = binary_for(c)?;
        let user = PgUser::detect()?;
        let data = dir.join("data");
        user.own(dir)?;
        if !data.join("PG_VERSION").exists() {
            // initdb wants an empty directory it owns; the superuser and password come from the URL.
            let pwfile = dir.join("run/pwfile");
            fs::write(&pwfile, format!("{}\n", target.password))?;
            fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
            user.own(dir)?;
            let out = user
                .command(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    &target.user,
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .context("cannot run initdb")?;
            let _ = fs::remove_file(&pwfile);
            if !out.status.success() {
                let _ = fs::remove_dir_all(&data);
                bail!(
                    "initdb for {c} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
                );
            }
        }
        let run_dir = dir.join("run");
        let replication = LOGICAL_REPLICATION_SETTINGS.iter().map(|s| format!(" -c {s}")).collect::<String>();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 -c shared_buffers=128MB{replication}",
            target.port,
            run_dir.display()
        );
        let status = user
            .command(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.log_path(c))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run pg_ctl")?;
        if !status.success() {
            bail!("pg_ctl start failed for {c} on port {}", target.port);
        }
        ensure_database(target).await
    }

    fn spawn_rabbitmq(&self, dir: &Path) -> anyhow::Result<()> {
        let bin = binary_for(Component::Rabbitmq)?;
        let conf = dir.join("run/rabbitmq.conf");
        let definitions = self.cfg.root.join("rabbitmq/definitions.json");
        anyhow::ensure!(definitions.is_file(), "rabbitmq definitions missing at {}", definitions.display());
        // Settings and VM flags both runtimes share (docker-compose.yml mounts the same files).
        let shared_conf = self.cfg.root.join("rabbitmq/broker.conf");
        let env_file = self.cfg.root.join("rabbitmq/rabbitmq-env.conf");
        anyhow::ensure!(env_file.is_file(), "rabbitmq environment file missing at {}", env_file.display());
        fs::write(
            &conf,
            format!(
                "loopback_users = none\n\
                 listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {mgmt}\n\
                 load_definitions = {defs}\n\
                 log.file.level = info\n\
                 log.console = false\n\
                 disk_free_limit.absolute = 50MB\n\
                 {shared}",
                amqp = self.cfg.rabbitmq_port,
                mgmt = self.cfg.rabbitmq_management_port,
                defs = definitions.display(),
                shared = fs::read_to_string(&shared_conf)
                    .with_context(|| format!("cannot read broker settings {}", shared_conf.display()))?
            ),
        )?;
        fs::write(dir.join("run/enabled_plugins"), "[rabbitmq_management].\n")?;
        let mut cmd = Command::new(bin);
        cmd.env("HOME", dir.join("run"))
            .env("RABBITMQ_NODENAME", self.rabbitmq_node())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.cfg.rabbitmq_port.to_string())
            .env("RABBITMQ_DIST_PORT", rabbitmq_dist_port(self.cfg.rabbitmq_port).to_string())
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("run/enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("data"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", self.log_path(Component::Rabbitmq))
            .env("RABBITMQ_PID_FILE", dir.join("run/rabbit.pid"))
            .env("RABBITMQ_CONF_ENV_FILE", &env_file);
        spawn_detached(cmd, dir, &self.log_path(Component::Rabbitmq).with_file_name("stdout.log"))
    }

    /// Node name unique per AMQP port, so a test broker never collides with a developer's.
    fn rabbitmq_node(&self) -> String {
        format!("mfe{}@localhost", self.cfg.rabbitmq_port)
    }

    fn spawn_redis(&self, dir: &Path) -> anyhow::Result<()> {
        let bin = binary_for(Component::Redis)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.cfg.redis_port.to_string(), "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.join("data"))
            .arg("--logfile")
            .arg(self.log_path(Component::Redis))
            .args(["--save", "60 1000", "--appendonly", "no"]);
        spawn_detached(cmd, dir, &dir.join("log/stdout.log"))
    }

    fn spawn_nginx(&self, dir: &Path) -> anyhow::Result<()> {
        let bin = binary_for(Component::Nginx)?;
        let conf = super::nginx::prepare_native(&self.cfg, dir)?;
        let test = Command::new(&bin).arg("-p").arg(dir).arg("-c").arg(&conf).arg("-t").output()?;
        if !test.status.success() {
            bail!(
                "nginx -t rejected {}: {}",
                conf.display(),
                String::from_utf8_lossy(&test.stderr).trim().lines().last().unwrap_or("")
            );
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf).args(["-g", "daemon off;"]);
        spawn_detached(cmd, dir, &dir.join("log/stdout.log"))
    }

    /// Stops `comps` in reverse start order and waits until their ports are free.
    pub async fn stop(&self, comps: &[Component]) -> anyhow::Result<()> {
        let mut order = comps.to_vec();
        order.sort();
        order.reverse();
        for c in order {
            let Some(pid) = self.pid(c) else { continue };
            eprintln!("{c}: stopping (pid {pid})");
            if c.db_service().is_some() {
                let user = PgUser::detect()?;
                let bin = binary_for(c)?;
                let status = user
                    .command(bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(self.dir(c).join("data"))
                    .args(["-m", "fast", "-w", "-t", "60", "stop"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                if !status.success() {
                    terminate(pid, Duration::from_secs(10));
                }
            } else {
                terminate(pid, Duration::from_secs(60));
                let _ = fs::remove_file(self.dir(c).join("run/pid"));
            }
            for port in self.cfg.ports(c)? {
                wait_port_free(port, Duration::from_secs(15));
            }
        }
        if comps.contains(&Component::Rabbitmq) {
            // epmd outlives the broker; stop it unless another Erlang node still uses it.
            let _ = Command::new("epmd").arg("-kill").stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        Ok(())
    }

    pub async fn status(&self, comps: &[Component]) -> Vec<ComponentStatus> {
        let mut out = Vec::new();
        for &c in comps {
            let ports = self.cfg.ports(c).unwrap_or_default();
            let (state, healthy, detail) = match self.pid(c) {
                // nginx waits for certificates; until then it is skipped, not broken.
                None if c == Component::Nginx && !self.cfg.ssl_cert_path.is_file() => {
                    ("skipped".to_string(), true, "no certificate yet: run `mfe ssl generate`".to_string())
                }
                None => ("stopped".to_string(), false, "not running".to_string()),
                Some(pid) => match health::probe(&self.cfg, c).await {
                    Ok(d) => (format!("running pid {pid}"), true, d),
                    Err(e) => (format!("running pid {pid}"), false, crate::error_line(&e)),
                },
            };
            out.push(ComponentStatus { component: c, state, healthy, detail, ports });
        }
        out
    }

    pub async fn logs(&self, comp: Option<Component>, follow: bool, tail: usize) -> anyhow::Result<()> {
        let comps = match comp {
            Some(c) => vec![c],
            None => Component::ALL.to_vec(),
        };
        let paths: Vec<(Component, PathBuf)> =
            comps.iter().map(|c| (*c, self.log_path(*c))).filter(|(_, p)| p.exists()).collect();
        if paths.is_empty() {
            bail!("no logs yet under {} — start the infrastructure with `mfe infra start`", self.base.display());
        }
        let prefix = paths.len() > 1;
        let mut offsets = Vec::new();
        for (c, p) in &paths {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(tail)..] {
                print_log_line(*c, line, prefix);
            }
            offsets.push(text.len() as u64);
        }
        if !follow {
            return Ok(());
        }
        loop {
            for (i, (c, p)) in paths.iter().enumerate() {
                let Ok(mut f) = fs::File::open(p) else { continue };
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                if len < offsets[i] {
                    offsets[i] = 0; // rotated or truncated
                }
                f.seek(std::io::SeekFrom::Start(offsets[i]))?;
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                while reader.read_line(&mut line)? > 0 {
                    offsets[i] += line.len() as u64;
                    print_log_line(*c, line.trim_end(), prefix);
                    line.clear();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

    /// Stops everything and removes the native state directory.
    pub async fn clean(&self) -> anyhow::Result<()> {
        self.stop(&Component::ALL).await?;
        if self.base.exists() {
            fs::remove_dir_all(&self.base).with_context(|| format!("cannot remove {}", self.base.display()))?;
        }
        Ok(())
    }
}

fn print_log_line(c: Component, line: &str, prefix: bool) {
    if prefix {
        println!("{:<12}| {line}", c.name());
    } else {
        println!("{line}");
    }
}

impl PgUser {
    fn detect() -> anyhow::Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(Self { uid: None, gid: None });
        }
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .context("running as root, PostgreSQL must run as the `postgres` user, which does not exist — install postgresql (apt-get install postgresql) or run mfe as a normal user")?;
        Ok(Self { uid: Some(user.uid.as_raw()), gid: Some(user.gid.as_raw()) })
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut cmd = Command::new(program);
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            cmd.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Gives `dir` (recursively) to the PostgreSQL user and checks it can reach it.
    fn own(&self, dir: &Path) -> anyhow::Result<()> {
        let (Some(uid), Some(gid)) = (self.uid, self.gid) else { return Ok(()) };
        for ancestor in dir.ancestors().skip(1) {
            if let Ok(meta) = fs::metadata(ancestor) {
                if meta.permissions().mode() & 0o001 == 0 {
                    bail!(
                        "the postgres user cannot enter {} (mode {:o}) — set MFE_STATE_DIR to a directory outside it, e.g. /var/tmp/mfe",
                        ancestor.display(),
                        meta.permissions().mode() & 0o777
                    );
                }
            }
        }
        let walk = |p: &Path| -> anyhow::Result<()> {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", p.display()))
        };
        walk(dir)?;
        for sub in ["data", "log", "run"] {
            let p = dir.join(sub);
            if p.exists() {
                walk(&p)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
                if sub != "data" {
                    for entry in fs::read_dir(&p)?.flatten() {
                        walk(&entry.path())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Creates the URL's database on a freshly started server, like the postgres image's POSTGRES_DB.
async fn ensure_database(target: &PgTarget) -> anyhow::Result<()> {
    use sqlx::Connection;
    let admin_url = {
        let mut u = url::Url::parse(&target.url)?;
        u.set_path("/postgres");
        u.to_string()
    };
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("cannot connect to the new server at {}", target.addr()))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&target.database)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let quoted = target.database.replace('"', "\"\"");
        sqlx::query(&format!("CREATE DATABASE \"{quoted}\"")).execute(&mut conn).await?;
    }
    conn.close().await.ok();
    Ok(())
}

/// The Erlang distribution port of our broker: RabbitMQ's own rule (AMQP port + 20000), folded
/// below 65536 for high AMQP ports so two test brokers never share one; `RABBITMQ_DIST_PORT` wins.
pub fn rabbitmq_dist_port(amqp_port: u16) -> u16 {
    if let Some(p) = std::env::var("RABBITMQ_DIST_PORT").ok().and_then(|v| v.parse().ok()) {
        return p;
    }
    let above = u32::from(amqp_port) + 20000;
    if above <= 65535 {
        above as u16
    } else {
        amqp_port - 20000
    }
}

/// The binary (or, for PostgreSQL, the bin directory) of a component, or a line saying how to get it.
pub fn binary_for(c: Component) -> anyhow::Result<PathBuf> {
    match c {
        Component::Rabbitmq => find_binary(
            "MFE_RABBITMQ_SERVER",
            &["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"],
            "rabbitmq-server",
            "apt-get install rabbitmq-server",
        ),
        Component::Redis => {
            find_binary("MFE_REDIS_SERVER", &["/usr/bin/redis-server"], "redis-server", "apt-get install redis-server")
        }
        Component::Nginx => find_binary("MFE_NGINX", &["/usr/sbin/nginx"], "nginx", "apt-get install nginx"),
        _ => {
            if let Ok(dir) = std::env::var("MFE_PG_BIN") {
                let dir = PathBuf::from(dir);
                if dir.join("pg_ctl").is_file() {
                    return Ok(dir);
                }
                bail!("MFE_PG_BIN={} holds no pg_ctl", dir.display());
            }
            for version in ["17", "16", "15", "14"] {
                let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
                if dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
                    return Ok(dir);
                }
            }
            if let Some(p) = which("pg_ctl") {
                return Ok(p.parent().expect("a file has a parent").to_path_buf());
            }
            bail!("PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH) — install them with `apt-get install postgresql` or set MFE_PG_BIN")
        }
    }
}

fn find_binary(env_var: &str, candidates: &[&str], name: &str, install: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} does not exist", p.display());
    }
    for c in candidates {
        if Path::new(c).is_file() {
            return Ok(PathBuf::from(c));
        }
    }
    which(name).ok_or_else(|| {
        anyhow::anyhow!(
            "{name} not found (looked in {} and PATH) — install it with `{install}` or set {env_var}",
            candidates.join(", ")
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_string_lossy().split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Starts `cmd` in its own process group, detached from our terminal, output to `log`, and
/// records its pid in `<dir>/run/pid`.
fn spawn_detached(mut cmd: Command, dir: &Path, log: &Path) -> anyhow::Result<()> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let child = cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    fs::write(dir.join("run/pid"), format!("{}\n", child.id()))?;
    Ok(())
}

/// SIGTERM, then SIGKILL after `grace`.
fn terminate(pid: u32, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if kill(pid, None).is_err() || is_zombie(pid.as_raw()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

fn wait_port_free(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while ports::in_use(port) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::rabbitmq_dist_port;

    #[test]
    fn distribution_ports_of_different_brokers_never_collide() {
        assert_eq!(rabbitmq_dist_port(5672), 25672);
        assert_eq!(rabbitmq_dist_port(25672), 45672);
        assert_ne!(rabbitmq_dist_port(46672), rabbitmq_dist_port(51672));
        assert_eq!(rabbitmq_dist_port(51672), 31672);
    }
}
