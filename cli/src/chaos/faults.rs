//! The fault schedule of `mfe test chaos`: each fault is injected into the running native stack,
//! held, and repaired, and its window (injection to the end of repair) goes into the history.
//!
//! The faults act on real processes: `kill -9` of the Erlang VM of the broker node that leads
//! the most quorum queues (and its return through the runtime's own start), SIGSTOP/SIGCONT of
//! another node for longer than the AMQP heartbeat, the leader cut off from the other nodes by a
//! packet filter ([`partition`]), a restart of the payments database, and —
//! on a stack of several replicas (`mfe up --replicas 2`) — `kill -9` of one payments replica
//! and of one gateway with its sockets connected (they reconnect through nginx to another), and
//! admin's consumer crashed between the commit of an event's effects and its ack (armed through
//! [`mfe_events::crash_point`]: the broker redelivers, and the inbox must find the event done).
//! A fault the machine or the stack cannot produce is reported as not run, with the reason.

use anyhow::{bail, Context as _};
use std::time::Duration;

use super::history::FaultWindow;
use super::partition;
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
    /// admin's consumer aborted after a handler committed and before its ack.
    KillConsumerAfterCommit,
}

impl Fault {
    pub const SCHEDULE: [Fault; 7] = [
        Fault::KillBrokerLeader,
        Fault::PauseBrokerNode,
        Fault::PartitionBroker,
        Fault::RestartPaymentsDb,
        Fault::KillPaymentsReplica,
        Fault::KillGatewayReplica,
        Fault::KillConsumerAfterCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBrokerLeader => "kill-broker-leader",
            Fault::PauseBrokerNode => "pause-broker-node",
            Fault::PartitionBroker => "partition-broker",
            Fault::RestartPaymentsDb => "restart-payments-db",
            Fault::KillPaymentsReplica => "kill-payments-replica",
            Fault::KillGatewayReplica => "kill-gateway-replica",
            Fault::KillConsumerAfterCommit => "kill-consumer-after-commit",
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
    /// How long a node stays cut off. The quick hold is below Erlang's net tick (60 s), so the
    /// cluster keeps the node as a member while Raft moves its queues' leaders to the majority;
    /// the full hold is beyond it, so `pause_minority` also stops the node and its clients move.
    pub partition: Duration,
}

impl Timing {
    pub fn quick() -> Self {
        Self {
            calm: Duration::from_secs(5),
            down: Duration::from_secs(8),
            pause: HEARTBEAT * 2 + Duration::from_secs(5),
            partition: Duration::from_secs(20),
        }
    }

    pub fn full() -> Self {
        Self {
            calm: Duration::from_secs(20),
            down: Duration::from_secs(30),
            pause: HEARTBEAT * 4,
            partition: Duration::from_secs(90),
        }
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
                if let Some(why) = partition::unavailable() {
                    return Ok(Outcome::NotRun(format!("no partition can be cut here: {why}")));
                }
                // Clients of the cut node stall, they do not fail: the API answers from the
                // outbox meanwhile. A few seconds for the reconnects after healing.
                (self.partition_node(timing).await?, Duration::from_secs(5))
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
            Fault::KillConsumerAfterCommit => {
                // With one replica, admin's API is out from the crash until the supervisor's
                // restart; with two, only the crashed process's connections fail.
                let done = self.crash_consumer("admin").await?;
                (done, t0.elapsed() + Duration::from_secs(2))
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
        Ok(self.leading().await?.0)
    }

    /// [`Injector::leader`] and how many queues it leads, from one look at the cluster.
    async fn leading(&self) -> anyhow::Result<(HaNode, usize)> {
        let topo = self.native.ha_topology()?.context("no HA topology")?;
        let view = cluster::observe(&topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password).await?;
        let node = topo
            .nodes
            .iter()
            .max_by_key(|n| (led_by(&view, n), std::cmp::Reverse(n.amqp_port)))
            .cloned()
            .context("no nodes")?;
        let led = led_by(&view, &node);
        Ok((node, led))
    }

    /// How many quorum queues `node` leads now.
    async fn queues_led(&self, node: &HaNode) -> anyhow::Result<usize> {
        let topo = self.native.ha_topology()?.context("no HA topology")?;
        let view = cluster::observe(&topo, &self.cfg.rabbitmq_user, &self.cfg.rabbitmq_password).await?;
        Ok(led_by(&view, node))
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

    /// The leader cut off from the other two nodes ([`partition`]) for the partition hold,
    /// then healed; done once the cluster is whole again. The report says how many queues it
    /// led before and after: Raft moved the leaders to the majority while it was cut.
    async fn partition_node(&self, timing: &Timing) -> anyhow::Result<String> {
        let topo = self.native.ha_topology()?.context("no HA topology")?;
        let (node, led_before) = self.leading().await?;
        let pid = self.native.ha_node_vm_pid(&node).with_context(|| format!("{} is not running", node.name))?;
        let ports: Vec<u16> = topo.nodes.iter().map(|n| n.dist_port).collect();
        let short = node.name.split('@').next().unwrap_or(&node.name);
        let cut = partition::Partition::cut(pid, &format!("{}-{short}", self.cfg.project), &ports)?;
        let how = cut.describe();
        tokio::time::sleep(timing.partition).await;
        cut.heal().context("healing the partition")?;
        let t = std::time::Instant::now();
        self.native.wait_cluster_whole(Duration::from_secs(180)).await?;
        let whole = t.elapsed();
        let led_after = self.queues_led(&node).await?;
        Ok(format!(
            "{} cut off from the other nodes for {} s ({how}); it led {led_before} queue(s) before and \
             {led_after} after; whole again {:.1} s after healing",
            node.name,
            timing.partition.as_secs(),
            whole.as_secs_f64()
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
        let instance = self
            .instances(process)
            .into_iter()
            .find(|i| i.replica == 0)
            .with_context(|| format!("no {process} process in the stack"))?;
        let pid = self.pid_of(&instance)?;
        signal(pid, "KILL")?;
        let back = self.wait_restarted(&instance, pid).await?;
        Ok(format!(
            "kill -9 of {} (pid {pid}) while its replica served; restarted by the supervisor and healthy after {:.1} s",
            instance.name(),
            back.as_secs_f64()
        ))
    }

    /// Arms the crash point of every replica of `process` (SIGUSR1): the one consuming next
    /// aborts after its handler committed and before the ack. Disarms the others (SIGUSR2),
    /// and waits for the crashed one to be back.
    async fn crash_consumer(&self, process: &str) -> anyhow::Result<String> {
        let armed = self
            .instances(process)
            .into_iter()
            .map(|i| {
                let pid = self.pid_of(&i)?;
                let log = crate::stack::log_file(&self.cfg.state_dir, &i.name());
                let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                Ok((i, pid, log, offset))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!armed.is_empty(), "no {process} process in the stack");
        for (_, pid, ..) in &armed {
            signal(*pid, "USR1")?;
        }
        let t = std::time::Instant::now();
        let crashed = loop {
            if let Some(c) = armed.iter().find(|(_, pid, ..)| !alive(*pid)) {
                break c;
            }
            if t.elapsed() > Duration::from_secs(60) {
                for (_, pid, ..) in &armed {
                    let _ = signal(*pid, "USR2");
                }
                bail!("no {process} consumer handled an event within 60 s of its crash point being armed");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (_, pid, ..) in armed.iter().filter(|(_, pid, ..)| *pid != crashed.1) {
            signal(*pid, "USR2")?;
        }
        let (instance, pid, log, offset) = crashed;
        let event = abort_line_event(log, *offset).with_context(|| {
            format!("{} (pid {pid}) exited without the crash point's line in {}", instance.name(), log.display())
        })?;
        let back = self.wait_restarted(instance, *pid).await?;
        Ok(format!(
            "{} (pid {pid}) aborted after committing event {event} and before its ack; restarted and healthy after {:.1} s",
            instance.name(),
            back.as_secs_f64()
        ))
    }

    fn instances(&self, process: &str) -> Vec<crate::stack::Instance> {
        crate::stack::instances(self.cfg.app_replicas).into_iter().filter(|i| i.process.name == process).collect()
    }

    fn pid_of(&self, instance: &crate::stack::Instance) -> anyhow::Result<u32> {
        let pid_file = crate::stack::pid_file(&self.cfg.state_dir, &instance.name());
        read_pid(&pid_file).with_context(|| format!("{} has no pid file at {}", instance.name(), pid_file.display()))
    }

    /// Waits until the supervisor has replaced the process `old_pid` of `instance`, the new one
    /// answers `/health`, and one gateway health interval has put it back in the rotation;
    /// returns how long the first two took.
    async fn wait_restarted(&self, instance: &crate::stack::Instance, old_pid: u32) -> anyhow::Result<Duration> {
        let pid_file = crate::stack::pid_file(&self.cfg.state_dir, &instance.name());
        let t = std::time::Instant::now();
        let url = format!("{}/health", instance.url()?);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        loop {
            let restarted = read_pid(&pid_file).is_some_and(|p| p != old_pid);
            if restarted && http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(90), "{} was not back within 90 s", instance.name());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let back = t.elapsed();
        let interval = mfe_core::env::parse_env_ms("GATEWAY_HEALTH_INTERVAL_MS", Duration::from_secs(5))?;
        tokio::time::sleep(interval + Duration::from_millis(500)).await;
        Ok(back)
    }
}

fn read_pid(pid_file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Whether the process `pid` still runs (a zombie the supervisor has not reaped counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The event id of the crash point's last line in `log`, written after `offset`.
fn abort_line_event(log: &std::path::Path, offset: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let tail = String::from_utf8_lossy(text.get(offset as usize..)?).into_owned();
    let rest = tail.lines().rev().find_map(|l| l.split_once(mfe_events::crash_point::ABORT_LINE))?.1;
    rest.split_whitespace().next().map(str::to_owned)
}

/// How many quorum queues of `view` `node` leads.
fn led_by(view: &cluster::ClusterView, node: &HaNode) -> usize {
    view.queues.iter().filter(|q| q.leader.as_deref() == Some(node.name.as_str())).count()
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}
