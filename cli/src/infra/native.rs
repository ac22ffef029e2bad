//! The native runtime: every component as a local process started from installed binaries,
//! each with its own `data/`, `log/` and `run/` under `<state dir>/native/<component>/`.
//!
//! This is the one module that knows how to start PostgreSQL, RabbitMQ, Redis and nginx as
//! processes. Ports come from the configuration (the URLs), so a test stack on other ports runs
//! beside a developer's own. Starting is all-or-nothing per call: binaries and ports are checked
//! for every component before anything starts, and what this call started is stopped again if a
//! later component fails.
//!
//! With `--ha` (or once HA nodes hold data in the state dir) the `rabbitmq` component is the
//! three-node cluster of [`super::cluster`]: each node under `<state dir>/native/rabbitmq-ha/
//! <node>/`, all sharing the Erlang cookie `rabbitmq-ha/.erlang.cookie` (their HOME), so the
//! commands that start, stop, show and clean `rabbitmq` act on every node.

use crate::config::{Component, Config, PgTarget};
use crate::infra::cluster::{self, HaNode, HaTopology};
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
    /// RabbitMQ is the three-node cluster: asked for (`--ha`) or found in the state dir.
    ha: bool,
}

/// The user PostgreSQL runs as: `postgres` when we are root (initdb refuses root), else us.
struct PgUser {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl Native {
    pub fn new(cfg: &Config) -> Self {
        let base = cfg.state_dir.join("native");
        let ha = cfg.rabbitmq_ha
            || fs::read_dir(base.join("rabbitmq-ha")).is_ok_and(|d| d.flatten().any(|e| e.path().is_dir()));
        Self { cfg: cfg.clone(), base, ha }
    }

    /// The distribution port of the one-node broker: `RABBITMQ_DIST_PORT`, else derived.
    fn dist_port(&self) -> u16 {
        self.cfg.rabbitmq_dist_port.unwrap_or_else(|| rabbitmq_dist_port(self.cfg.rabbitmq_port))
    }

    /// The cluster's nodes when RabbitMQ runs as one; `Err` when the configuration cannot
    /// place three nodes (named ports collide).
    pub fn ha_topology(&self) -> anyhow::Result<Option<HaTopology>> {
        if !self.ha {
            return Ok(None);
        }
        HaTopology::from_config(&self.cfg).map(Some)
    }

    fn ha_dir(&self) -> PathBuf {
        self.base.join("rabbitmq-ha")
    }

    fn node_dir(&self, n: &HaNode) -> PathBuf {
        self.ha_dir().join(n.name.split('@').next().unwrap_or(&n.name))
    }

    fn node_log(&self, n: &HaNode) -> PathBuf {
        self.node_dir(n).join("log/rabbit.log")
    }

    /// The pid of a cluster node's `rabbitmq-server` (which runs the Erlang VM as its child).
    fn node_pid(&self, n: &HaNode) -> Option<u32> {
        live_pid(&self.node_dir(n).join("run/pid"))
    }

    /// The Erlang VM's own pid (what `kill -9` of "the node" means), once the node booted.
    fn node_os_pid(&self, n: &HaNode) -> Option<u32> {
        live_pid(&self.node_dir(n).join("run/rabbit.pid"))
    }

    /// The Erlang VM pid of a cluster node while it runs: what `mfe test chaos` signals.
    pub fn ha_node_vm_pid(&self, n: &HaNode) -> Option<u32> {
        self.node_os_pid(n)
    }

    /// Waits until the cluster's management API reports every node running.
    pub async fn wait_cluster_whole(&self, max: Duration) -> anyhow::Result<()> {
        let topo = self.ha_topology()?.context("RabbitMQ is not the three-node cluster")?;
        let deadline = Instant::now() + max;
        loop {
            let seen = cluster::observe(&topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password).await;
            match seen {
                Ok(view) if view.nodes.len() == topo.nodes.len() && view.nodes.iter().all(|(_, up)| *up) => {
                    return Ok(())
                }
                _ if Instant::now() >= deadline => {
                    bail!("the RabbitMQ cluster is not whole after {} s: {seen:?}", max.as_secs())
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn dir(&self, c: Component) -> PathBuf {
        self.base.join(c.name())
    }

    /// The log file `mfe infra logs` shows for a component.
    pub fn log_path(&self, c: Component) -> PathBuf {
        if c == Component::Rabbitmq {
            if let Ok(Some(topo)) = self.ha_topology() {
                return self.node_log(&topo.nodes[0]);
            }
        }
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
    /// For the HA broker: the pid of the first node that runs.
    pub fn pid(&self, c: Component) -> Option<u32> {
        if c == Component::Rabbitmq {
            if let Ok(Some(topo)) = self.ha_topology() {
                return topo.nodes.iter().find_map(|n| self.node_pid(n));
            }
        }
        let pid_file = match c.db_service() {
            Some(_) => self.dir(c).join("data/postmaster.pid"),
            None => self.dir(c).join("run/pid"),
        };
        live_pid(&pid_file)
    }

    /// Starts `comps` (skipping those already running), waits for health.
    /// `explicit` is true when the user named the components: then a missing prerequisite
    /// (nginx's certificates) is an error instead of a skip.
    pub async fn start(&self, comps: &[Component], explicit: bool) -> anyhow::Result<()> {
        let ha = if comps.contains(&Component::Rabbitmq) { self.ha_topology()? } else { None };
        let mut to_start = Vec::new();
        for &c in comps {
            let running = match (&ha, c) {
                // The cluster starts whatever node of it is not running.
                (Some(topo), Component::Rabbitmq) => topo.nodes.iter().all(|n| self.node_pid(n).is_some()),
                _ => self.pid(c).is_some(),
            };
            if running {
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
            match (&ha, c) {
                (Some(topo), Component::Rabbitmq) => {
                    needed = topo
                        .nodes
                        .iter()
                        .filter(|n| self.node_pid(n).is_none())
                        .flat_map(|n| [n.amqp_port, n.management_port, n.dist_port])
                        .collect();
                }
                (None, Component::Rabbitmq) => needed.push(self.dist_port()),
                _ => {}
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
                if let (Some(topo), Component::Rabbitmq) = (&ha, c) {
                    return self.start_cluster(topo).await;
                }
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
        let definitions = self.cfg.root.join("rabbitmq/definitions.json");
        let node = BrokerNode {
            name: self.rabbitmq_node(),
            amqp_port: self.cfg.rabbitmq_port,
            management_port: self.cfg.rabbitmq_management_port,
            dist_port: self.dist_port(),
            definitions: Some(&definitions),
            peers: &[],
            home: dir.join("run"),
        };
        self.spawn_broker(dir, &node)
    }

    /// Writes a node's rabbitmq.conf and starts it. The single node's file is exactly what it
    /// was before clustering existed: the cluster's lines come only with `peers`.
    fn spawn_broker(&self, dir: &Path, node: &BrokerNode) -> anyhow::Result<()> {
        let bin = binary_for(Component::Rabbitmq)?;
        let conf = dir.join("run/rabbitmq.conf");
        if let Some(definitions) = node.definitions {
            anyhow::ensure!(definitions.is_file(), "rabbitmq definitions missing at {}", definitions.display());
        }
        // Settings and VM flags both runtimes share (docker-compose.yml mounts the same files).
        let shared_conf = self.cfg.root.join("rabbitmq/broker.conf");
        let env_file = self.cfg.root.join("rabbitmq/rabbitmq-env.conf");
        anyhow::ensure!(env_file.is_file(), "rabbitmq environment file missing at {}", env_file.display());
        let mut text = format!(
            "loopback_users = none\n\
             listeners.tcp.default = 127.0.0.1:{amqp}\n\
             management.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {mgmt}\n",
            amqp = node.amqp_port,
            mgmt = node.management_port,
        );
        if let Some(definitions) = node.definitions {
            text.push_str(&format!("load_definitions = {}\n", definitions.display()));
        }
        text.push_str("log.file.level = info\nlog.console = false\ndisk_free_limit.absolute = 50MB\n");
        text.push_str(
            &fs::read_to_string(&shared_conf)
                .with_context(|| format!("cannot read broker settings {}", shared_conf.display()))?,
        );
        if !node.peers.is_empty() {
            text.push_str(&cluster_conf(node.peers));
        }
        fs::write(&conf, text)?;
        fs::write(dir.join("run/enabled_plugins"), "[rabbitmq_management].\n")?;
        let log = dir.join("log/rabbit.log");
        let mut cmd = Command::new(bin);
        cmd.env("HOME", &node.home)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("run/enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("data"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", &log)
            .env("RABBITMQ_PID_FILE", dir.join("run/rabbit.pid"))
            .env("RABBITMQ_CONF_ENV_FILE", &env_file);
        spawn_detached(cmd, dir, &log.with_file_name("stdout.log"))
    }

    /// Starts the nodes of the cluster that are not running and waits until every node answers
    /// AMQP and the cluster counts all of them as running members.
    ///
    /// A new cluster forms around its first node, which boots with the definitions' users,
    /// vhosts and exchanges (so no default `guest` user is ever created); the others are started
    /// once it answers, so peer discovery finds it and they join it (started together, each new
    /// node could find no peer up and form a cluster of its own). Nodes of an existing cluster
    /// start together: each waits for the peers it knew, so the order they stopped in does not
    /// matter.
    ///
    /// The queues are imported once the cluster is whole, through the management API: a quorum
    /// queue's members are the nodes of the cluster when it is declared (RabbitMQ 3.10 does not
    /// add later nodes by itself), so declared on the first node alone they would have one
    /// member and no replica.
    async fn start_cluster(&self, topo: &HaTopology) -> anyhow::Result<String> {
        let t0 = Instant::now();
        let ha_dir = self.ha_dir();
        fs::create_dir_all(&ha_dir).with_context(|| format!("cannot create {}", ha_dir.display()))?;
        ensure_cookie(&ha_dir.join(".erlang.cookie"))?;
        let full_path = self.cfg.root.join(cluster::HA_DEFINITIONS);
        let full: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(&full_path).with_context(|| format!("cannot read {}", full_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", full_path.display()))?;
        let definitions = ha_dir.join("boot-definitions.json");
        let mut boot = full.clone();
        if let Some(map) = boot.as_object_mut() {
            map.remove("queues");
            map.remove("bindings");
        }
        fs::write(&definitions, serde_json::to_vec_pretty(&boot)?)?;
        let peers = topo.names();
        let fresh = topo.nodes.iter().all(|n| !dir_has_entries(&self.node_dir(n).join("data")));
        let pending: Vec<&HaNode> = topo.nodes.iter().filter(|n| self.node_pid(n).is_none()).collect();
        let spawn = |k: usize, n: &HaNode| -> anyhow::Result<()> {
            let dir = self.node_dir(n);
            for sub in ["data", "log", "run"] {
                fs::create_dir_all(dir.join(sub))
                    .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
            }
            let node = BrokerNode {
                name: n.name.clone(),
                amqp_port: n.amqp_port,
                management_port: n.management_port,
                dist_port: n.dist_port,
                definitions: (k == 0).then_some(definitions.as_path()),
                peers: &peers,
                home: ha_dir.clone(),
            };
            eprintln!("rabbitmq: starting node {} (amqp {}, management {})", n.name, n.amqp_port, n.management_port);
            self.spawn_broker(&dir, &node)
        };
        let timeout = Duration::from_secs(120);
        let log_hint = |n: &HaNode| format!("see its logs: {} and stdout.log beside it", self.node_log(n).display());
        let mut rest = pending.clone();
        if fresh {
            let first = &topo.nodes[0];
            spawn(0, first)?;
            wait_amqp(&first.url, timeout, || self.node_pid(first).is_some()).await.with_context(|| log_hint(first))?;
            rest.retain(|n| n.name != first.name);
        }
        for n in &rest {
            let k = topo.nodes.iter().position(|x| x.name == n.name).unwrap_or(0);
            spawn(k, n)?;
        }
        for n in &pending {
            wait_amqp(&n.url, timeout, || self.node_pid(n).is_some()).await.with_context(|| log_hint(n))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = cluster::observe(topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password).await;
            let missing: Vec<String> = match &view {
                Ok(v) => peers
                    .iter()
                    .filter(|p| !v.nodes.iter().any(|(name, running)| name == *p && *running))
                    .cloned()
                    .collect(),
                Err(e) => vec![crate::error_line(e)],
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the nodes answer but the cluster does not count {} as running members after 60 s — see {}",
                    missing.join(", "),
                    self.ha_dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let imported = ha_dir.join("definitions-imported");
        if !imported.exists() {
            let n = &topo.nodes[0];
            let url = format!("http://127.0.0.1:{}/api/definitions", n.management_port);
            let resp = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?
                .post(&url)
                .basic_auth(&self.cfg.rabbitmq_user, Some(&self.cfg.rabbitmq_password))
                .json(&full)
                .send()
                .await
                .with_context(|| format!("cannot import {} through {url}", full_path.display()))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                bail!("importing {} into the cluster was refused ({status}): {}", full_path.display(), body.trim());
            }
            fs::write(&imported, format!("{}\n", full_path.display()))?;
            eprintln!("rabbitmq: quorum topology imported into the whole cluster ({})", full_path.display());
        }
        Ok(format!(
            "{} of {} nodes started, cluster whole in {:.1} s",
            pending.len(),
            topo.nodes.len(),
            t0.elapsed().as_secs_f64()
        ))
    }

    /// Stops every node of the cluster at once (SIGTERM, then SIGKILL after `grace`).
    fn stop_cluster(&self, topo: &HaTopology) {
        let pids: Vec<(u32, PathBuf)> =
            topo.nodes.iter().filter_map(|n| Some((self.node_pid(n)?, self.node_dir(n).join("run/pid")))).collect();
        if pids.is_empty() {
            return;
        }
        eprintln!(
            "rabbitmq: stopping {} cluster nodes (pids {})",
            pids.len(),
            pids.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", ")
        );
        terminate_all(&pids.iter().map(|(p, _)| *p).collect::<Vec<_>>(), Duration::from_secs(60));
        for (_, file) in &pids {
            let _ = fs::remove_file(file);
        }
        for port in topo.ports() {
            wait_port_free(port, Duration::from_secs(15));
        }
    }

    async fn cluster_status(&self, topo: &HaTopology) -> ComponentStatus {
        let mut local = Vec::new();
        for n in &topo.nodes {
            local.push(match self.node_pid(n) {
                None => cluster::NodeLocal { state: "stopped".into(), amqp: Err("not running".into()) },
                Some(pid) => {
                    let probe = tokio::time::timeout(Duration::from_secs(5), health::probe_amqp(&n.url)).await;
                    let amqp = match probe {
                        Ok(Ok(d)) => Ok(d),
                        Ok(Err(e)) => Err(crate::error_line(&e)),
                        Err(_) => Err("no AMQP answer within 5 s".into()),
                    };
                    let os = self.node_os_pid(n).map(|p| format!(", vm pid {p}")).unwrap_or_default();
                    cluster::NodeLocal { state: format!("running pid {pid}{os}"), amqp }
                }
            });
        }
        let view = cluster::observe(topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password)
            .await
            .map_err(|e| crate::error_line(&e));
        let (whole, summary, mut rows) = cluster::checks(topo, &local, &view);
        for (row, n) in rows.iter_mut().zip(&topo.nodes) {
            if let Some(p) = self.node_os_pid(n).filter(|_| self.node_pid(n).is_some()) {
                row.metrics.insert("vm_pid".into(), p.into());
            }
        }
        let detail = match &view {
            Ok(v) => {
                let led = v.queues.iter().filter(|q| q.leader.is_some()).count();
                format!("{} nodes; {led}/{} quorum queues with a leader", topo.nodes.len(), v.queues.len())
            }
            Err(e) => format!("cluster view unavailable: {e}"),
        };
        let running = local.iter().filter(|l| l.amqp.is_ok()).count();
        let mut metrics = serde_json::Map::new();
        metrics.insert("topology".into(), "ha".into());
        metrics.insert("nodes".into(), topo.nodes.len().into());
        metrics.insert("nodes_running".into(), running.into());
        metrics.insert(
            "cluster".into(),
            (if whole {
                "whole"
            } else if running == 0 {
                "down"
            } else {
                "degraded"
            })
            .into(),
        );
        ComponentStatus {
            component: Component::Rabbitmq,
            state: summary,
            healthy: whole,
            detail,
            ports: topo.nodes.iter().map(|n| n.amqp_port).collect(),
            metrics,
            extra: rows,
        }
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
            if c == Component::Rabbitmq {
                if let Ok(Some(topo)) = self.ha_topology() {
                    self.stop_cluster(&topo);
                    continue;
                }
            }
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
            if c == Component::Rabbitmq {
                match self.ha_topology() {
                    Ok(Some(topo)) => {
                        out.push(self.cluster_status(&topo).await);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        out.push(ComponentStatus::new(c, "unknown".into(), false, crate::error_line(&e), Vec::new()));
                        continue;
                    }
                }
            }
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
            out.push(ComponentStatus::new(c, state, healthy, detail, ports));
        }
        out
    }

    pub async fn logs(&self, comp: Option<Component>, follow: bool, tail: usize) -> anyhow::Result<()> {
        let comps = match comp {
            Some(c) => vec![c],
            None => Component::ALL.to_vec(),
        };
        let ha = self.ha_topology().ok().flatten();
        let mut paths: Vec<(String, PathBuf)> = Vec::new();
        for c in comps {
            match (&ha, c) {
                (Some(topo), Component::Rabbitmq) => {
                    paths.extend(topo.nodes.iter().map(|n| (format!("rabbitmq:{}", n.amqp_port), self.node_log(n))))
                }
                _ => paths.push((c.name().to_string(), self.log_path(c))),
            }
        }
        paths.retain(|(_, p)| p.exists());
        if paths.is_empty() {
            bail!("no logs yet under {} — start the infrastructure with `mfe infra start`", self.base.display());
        }
        let prefix = paths.len() > 1;
        let mut offsets = Vec::new();
        for (c, p) in &paths {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(tail)..] {
                print_log_line(c, line, prefix);
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
                    print_log_line(c, line.trim_end(), prefix);
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

fn print_log_line(label: &str, line: &str, prefix: bool) {
    if prefix {
        println!("{label:<12}| {line}");
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

/// What differs between the single broker and a cluster node.
struct BrokerNode<'a> {
    name: String,
    amqp_port: u16,
    management_port: u16,
    dist_port: u16,
    /// Loaded at boot: the single node, and the first node of a cluster.
    definitions: Option<&'a Path>,
    /// Every node of the cluster (empty: not clustered).
    peers: &'a [String],
    /// Where the Erlang cookie is (`$HOME/.erlang.cookie`): the cluster's nodes share one.
    home: PathBuf,
}

/// The clustering lines of a node's rabbitmq.conf.
///
/// `pause_minority`: a node that can no longer see a majority of the cluster stops serving, so
/// its clients reconnect to the majority side instead of writing to a minority that will be
/// overruled (RabbitMQ's recommendation for three nodes; quorum queues need a majority anyway).
fn cluster_conf(peers: &[String]) -> String {
    let mut s = String::from(
        "\n# --ha: one node of a cluster (cli/src/infra/cluster.rs)\n\
         cluster_formation.peer_discovery_backend = classic_config\n",
    );
    for (i, p) in peers.iter().enumerate() {
        s.push_str(&format!("cluster_formation.classic_config.nodes.{} = {p}\n", i + 1));
    }
    s.push_str("cluster_partition_handling = pause_minority\n");
    // New queues' leaders spread over the nodes instead of all on the declaring one, so losing
    // one node moves a third of the leaders, not all of them.
    s.push_str("queue_leader_locator = balanced\n");
    s
}

/// The cluster's Erlang cookie, made once (random, readable by its owner only): the nodes and
/// `rabbitmqctl` authenticate each other with it.
fn ensure_cookie(path: &Path) -> anyhow::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    use rand::distributions::{Alphanumeric, DistString};
    let cookie = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    fs::write(path, cookie).with_context(|| format!("cannot write the Erlang cookie {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o400))?;
    Ok(())
}

fn dir_has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// The pid in the first line of `file` when that process is alive (not a zombie).
fn live_pid(file: &Path) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let alive = Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
    alive.then_some(pid)
}

/// Waits until an AMQP connection to `url` opens; fails at once when `alive` says the node's
/// process is gone (a node that cannot boot exits, it does not hang).
async fn wait_amqp(url: &str, timeout: Duration, alive: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let probe = tokio::time::timeout(Duration::from_secs(5), health::probe_amqp(url)).await;
        match probe {
            Ok(Ok(_)) => return Ok(()),
            _ if !alive() => {
                bail!("the node of {} exited while starting", mfe_core::redact_url_password(url))
            }
            _ if Instant::now() >= deadline => {
                bail!("{} did not accept AMQP within {} s", mfe_core::redact_url_password(url), timeout.as_secs())
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// SIGTERM to every pid at once, then SIGKILL to those still alive after `grace`.
fn terminate_all(pids: &[u32], grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let alive = |pid: u32| kill(Pid::from_raw(pid as i32), None).is_ok() && !is_zombie(pid as i32);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in pids.iter().filter(|p| alive(**p)) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
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
/// below 65536 for high AMQP ports so two test brokers never share one. `RABBITMQ_DIST_PORT`
/// ([`Config::rabbitmq_dist_port`]) wins over it.
pub fn rabbitmq_dist_port(amqp_port: u16) -> u16 {
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
            if let Some(dir) = mfe_core::env::lookup("MFE_PG_BIN") {
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
    if let Some(p) = mfe_core::env::lookup(env_var) {
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
    stop_process(pid, nix::sys::signal::Signal::SIGTERM, grace);
}

/// `signal` (the one the process stops gracefully on), then SIGKILL if it still runs after `grace`.
pub(crate) fn stop_process(pid: u32, signal: nix::sys::signal::Signal, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    let _ = kill(pid, signal);
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
