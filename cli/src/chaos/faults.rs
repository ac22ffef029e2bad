//! The fault schedule of `mfe test chaos`: each fault is injected into the running native stack,
//! held, and repaired, and its window (injection to the end of repair) goes into the history.
//!
//! The faults act on real processes: `kill -9` of the Erlang VM of the broker node that leads
//! the most quorum queues (and its return through the runtime's own start), SIGSTOP/SIGCONT of
//! another node for longer than the AMQP heartbeat, a restart of the payments database, and —
//! on a stack of several replicas (`mfe up --replicas 2`) — `kill -9` of one payments replica
//! and of one gateway with its sockets connected (they reconnect through nginx to another).
//! A fault the machine or the stack cannot produce is reported as not run, with the reason.

use anyhow::{bail, Context as _};
use std::time::Duration;

use super::history::FaultWindow;
use super::workload::Clock;
use crate::config::{Component, Config};
use crate::infra::cluster::{self, HaNode};
use crate::infra::native::Native;

/// The AMQP heartbeat the broker offers (`rabbitmq/broker.conf`): a paused node must stay
/// paused longer than two of them for its clients to give up on it.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the node leading the most quorum queues, then its restart.
    KillBrokerLeader,
    /// SIGSTOP of the node leading the most queues for longer than the heartbeat, then SIGCONT.
    PauseBrokerNode,
    /// A network partition between the broker nodes.
    PartitionBroker,
    /// A fast restart of the payments database.
    RestartPaymentsDb,
    /// `kill -9` of the first payments replica; the supervisor starts it again.
    KillPaymentsReplica,
    /// `kill -9` of the first gateway, with sockets connected to it.
    KillGatewayReplica,
}

impl Fault {
    pub const SCHEDULE: [Fault; 6] = [
        Fault::KillBrokerLeader,
        Fault::PauseBrokerNode,
        Fault::PartitionBroker,
        Fault::RestartPaymentsDb,
        Fault::KillPaymentsReplica,
        Fault::KillGatewayReplica,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBrokerLeader => "kill-broker-leader",
            Fault::PauseBrokerNode => "pause-broker-node",
            Fault::PartitionBroker => "partition-broker",
            Fault::RestartPaymentsDb => "restart-payments-db",
            Fault::KillPaymentsReplica => "kill-payments-replica",
            Fault::KillGatewayReplica => "kill-gateway-replica",
        }
    }
}

/// How long each fault is held; the quick schedule shortens the holds, not the faults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Steady traffic before the first fault and between two faults.
    pub calm: Duration,
    /// How long a killed node stays dead.
    pub down: Duration,
    /// How long a node stays paused (longer than two heartbeats).
    pub pause: Duration,
}

impl Timing {
    pub fn quick() -> Self {
        Self {
            calm: Duration::from_secs(5),
            down: Duration::from_secs(8),
            pause: HEARTBEAT * 2 + Duration::from_secs(5),
        }
    }

    pub fn full() -> Self {
        Self { calm: Duration::from_secs(20), down: Duration::from_secs(30), pause: HEARTBEAT * 4 }
    }
}

/// What happened to one fault.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Injected and repaired: the window, and a line on what was done.
    Ran(FaultWindow, String),
    /// Not produced, and why.
    NotRun(String),
}

/// Injects and repairs faults on the native runtime.
pub struct Injector {
    native: Native,
    cfg: Config,
    clock: Clock,
    /// The workload's operations per second: a fault may cost the requests of its outage.
    rate: u64,
}

impl Injector {
    pub fn new(cfg: &Config, clock: Clock, rate: u32) -> anyhow::Result<Self> {
        let native = Native::new(cfg);
        if native.ha_topology()?.is_none() {
            bail!("mfe test chaos needs the three-node broker: start the stack with `mfe up --ha` (native runtime)");
        }
        Ok(Self { native, cfg: cfg.clone(), clock, rate: u64::from(rate) })
    }

    pub async fn run(&self, fault: Fault, timing: &Timing) -> anyhow::Result<Outcome> {
        let start = self.clock.now();
        let t0 = std::time::Instant::now();
        // How long the platform may fail requests: a client notices a dead node at once (the
        // connection drops) and a paused one within two heartbeats; a database is out while it
        // restarts. A few seconds more for health checks to see it back.
        let (done, outage) = match fault {
            Fault::KillBrokerLeader => (self.kill_leader(timing).await?, Duration::from_secs(5)),
            Fault::PauseBrokerNode => (self.pause_node(timing).await?, HEARTBEAT * 2 + Duration::from_secs(5)),
            Fault::PartitionBroker => {
                return Ok(Outcome::NotRun(
                    "the native runtime's broker nodes share one network namespace (127.0.0.1), so no \
                     partition can be cut between them; kill and pause faults cover node loss"
                        .into(),
                ))
            }
            Fault::RestartPaymentsDb => {
                let done = self.restart_db(Component::PaymentsDb).await?;
                (done, t0.elapsed() + Duration::from_secs(5))
            }
            Fault::KillPaymentsReplica | Fault::KillGatewayReplica => {
                if self.cfg.app_replicas < 2 {
                    return Ok(Outcome::NotRun(format!(
                        "the stack runs {} replica of each process: start it with `mfe up --ha --replicas 2`",
                        self.cfg.app_replicas
                    )));
                }
                let process = if fault == Fault::KillPaymentsReplica { "payments" } else { "gateway" };
                // The requests on the killed process's connections at that instant; the rest
                // go to the other replica.
                (self.kill_replica(process).await?, Duration::from_secs(2))
            }
        };
        let end = self.clock.now();
        let window = FaultWindow {
            name: fault.name().into(),
            start,
            end,
            max_failed_requests: outage.as_secs().max(1) * self.rate,
        };
        Ok(Outcome::Ran(window, done))
    }

    /// The node leading the most quorum queues (ties: the first node).
    async fn leader(&self) -> anyhow::Result<HaNode> {
        let topo = self.native.ha_topology()?.context("no HA topology")?;
        let view = cluster::observe(&topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password).await?;
        let led = |n: &HaNode| view.queues.iter().filter(|q| q.leader.as_deref() == Some(n.name.as_str())).count();
        topo.nodes.iter().max_by_key(|n| (led(n), std::cmp::Reverse(n.amqp_port))).cloned().context("no nodes")
    }

    async fn kill_leader(&self, timing: &Timing) -> anyhow::Result<String> {
        let node = self.leader().await?;
        let pid = self.native.ha_node_vm_pid(&node).with_context(|| format!("{} is not running", node.name))?;
        signal(pid, "KILL")?;
        tokio::time::sleep(timing.down).await;
        let t = std::time::Instant::now();
        self.native.start(&[Component::Rabbitmq], true).await.context("restarting the killed node")?;
        Ok(format!(
            "kill -9 of {} (pid {pid}, leading the most queues), back after {:.1} s",
            node.name,
            t.elapsed().as_secs_f64()
        ))
    }

    async fn pause_node(&self, timing: &Timing) -> anyhow::Result<String> {
        // The leader again: its queues stall while it is paused (the others only notice a
        // paused node after Erlang's net tick), which is the harder case for publishers.
        let node = self.leader().await?;
        let pid = self.native.ha_node_vm_pid(&node).with_context(|| format!("{} is not running", node.name))?;
        signal(pid, "STOP")?;
        tokio::time::sleep(timing.pause).await;
        signal(pid, "CONT")?;
        // Back in the cluster before the next fault.
        let t = std::time::Instant::now();
        self.native.wait_cluster_whole(Duration::from_secs(120)).await?;
        Ok(format!(
            "SIGSTOP of {} (pid {pid}) for {} s (heartbeat {} s), whole again {:.1} s after SIGCONT",
            node.name,
            timing.pause.as_secs(),
            HEARTBEAT.as_secs(),
            t.elapsed().as_secs_f64()
        ))
    }

    async fn restart_db(&self, c: Component) -> anyhow::Result<String> {
        let t = std::time::Instant::now();
        self.native.stop(&[c]).await?;
        self.native.start(&[c], true).await?;
        Ok(format!("{c} stopped and started again in {:.1} s", t.elapsed().as_secs_f64()))
    }

    /// `kill -9` of the first replica of `process`, then waits until the supervisor has started
    /// it again, it answers `/health`, and one gateway health interval has put it back in the
    /// rotation.
    async fn kill_replica(&self, process: &str) -> anyhow::Result<String> {
        let instance = crate::stack::instances(self.cfg.app_replicas)
            .into_iter()
            .find(|i| i.process.name == process && i.replica == 0)
            .with_context(|| format!("no {process} process in the stack"))?;
        let pid_file = crate::stack::pid_file(&self.cfg.state_dir, &instance.name());
        let read_pid = || -> Option<u32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
        let pid =
            read_pid().with_context(|| format!("{} has no pid file at {}", instance.name(), pid_file.display()))?;
        signal(pid, "KILL")?;
        let t = std::time::Instant::now();
        let url = format!("{}/health", instance.url()?);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        loop {
            let restarted = read_pid().is_some_and(|p| p != pid);
            if restarted && http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(90), "{} was not back within 90 s", instance.name());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let back = t.elapsed();
        let interval = mfe_core::env::parse_env_ms("GATEWAY_HEALTH_INTERVAL_MS", Duration::from_secs(5))?;
        tokio::time::sleep(interval + Duration::from_millis(500)).await;
        Ok(format!(
            "kill -9 of {} (pid {pid}) while its replica served; restarted by the supervisor and healthy after {:.1} s",
            instance.name(),
            back.as_secs_f64()
        ))
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}
