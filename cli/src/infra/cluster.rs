//! The high-availability broker of `--ha`: three RabbitMQ nodes clustered by RabbitMQ itself,
//! the event queues as quorum queues (Raft-replicated on every node), and what `mfe infra status`
//! says about them.
//!
//! Nothing here replicates or elects anything: the nodes find each other through RabbitMQ's
//! classic-config peer discovery (`cluster_formation.classic_config.nodes.N`), share one Erlang
//! cookie, and the quorum queues choose their leaders themselves. This module only names the
//! nodes and their ports, holds the topology they load, and reads the cluster's own view back
//! from the management HTTP API (`/api/nodes`, `/api/queues`: `leader`, `members`, `online`).
//!
//! Ports. Node *k* (0, 1, 2) listens for AMQP on the port of the *k*-th URL of `RABBITMQ_URL`
//! when that lists three brokers, else on the port of its only URL + *k*; for the management API
//! on `RABBITMQ_MANAGEMENT_PORT` + *k*; for Erlang distribution on `RABBITMQ_DIST_PORT` + *k*
//! (else RabbitMQ's own AMQP + 20000 rule, [`super::native::rabbitmq_dist_port`]). With the
//! defaults that is 5672-5674, 15672-15674 and 25672-25674; ports that collide are refused
//! before anything starts.
//!
//! Queue type. The platform's queues are declared by `rabbitmq/definitions.json` (classic, one
//! node: unchanged) or `rabbitmq/definitions-ha.json` (the same topology as quorum queues, loaded
//! once, by the first node, when the cluster forms; the others receive it by joining). Services
//! declare the same queues with the same arguments, so in HA they must run with
//! `RABBITMQ_QUEUE_TYPE=quorum` — [`HaTopology::service_env`] is what `mfe up --ha` gives them,
//! with the three node URLs as their failover list.

use crate::config::Config;
use crate::report::Check;
use anyhow::{bail, Context};
use mfe_events::{HubConfig, QueueType};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Nodes of the cluster: the smallest number that keeps a majority when one node is lost.
pub const HA_NODES: usize = 3;

/// The file of the quorum topology, beside `rabbitmq/definitions.json`.
pub const HA_DEFINITIONS: &str = "rabbitmq/definitions-ha.json";

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaNode {
    /// Erlang node name, `mfe<amqp port>@localhost` like the single node's.
    pub name: String,
    pub amqp_port: u16,
    pub management_port: u16,
    pub dist_port: u16,
    /// The AMQP URL clients use for this node.
    pub url: String,
}

/// The three nodes, derived from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaTopology {
    pub nodes: Vec<HaNode>,
}

impl HaTopology {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        Self::derive(&cfg.rabbitmq_urls, cfg.rabbitmq_management_port, cfg.rabbitmq_dist_port)
    }

    /// The rules of the module doc, without the environment.
    pub fn derive(urls: &[String], management_port: u16, dist_base: Option<u16>) -> anyhow::Result<Self> {
        let parsed: Vec<url::Url> = urls
            .iter()
            .map(|u| url::Url::parse(u).with_context(|| "RABBITMQ_URL is not a valid amqp:// URL list".to_string()))
            .collect::<anyhow::Result<_>>()?;
        let amqp: Vec<(u16, String)> = match parsed.as_slice() {
            [one] => {
                let base = one.port().unwrap_or(5672);
                (0..HA_NODES as u16)
                    .map(|k| {
                        let port = base.checked_add(k).context("RABBITMQ_URL's port is too high for three nodes")?;
                        let mut u = one.clone();
                        u.set_port(Some(port)).map_err(|_| anyhow::anyhow!("RABBITMQ_URL cannot carry a port"))?;
                        Ok((port, u.to_string()))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            many if many.len() == HA_NODES => {
                many.iter().zip(urls).map(|(u, raw)| (u.port().unwrap_or(5672), raw.clone())).collect()
            }
            other => bail!(
                "RABBITMQ_URL lists {} brokers; --ha runs {HA_NODES} nodes: list {HA_NODES} URLs (one per node) or one (the nodes take its port and the next two)",
                other.len()
            ),
        };
        let plus = |base: u16, k: usize, what: &str| -> anyhow::Result<u16> {
            base.checked_add(k as u16).with_context(|| format!("{what} {base} is too high for three nodes"))
        };
        let mut nodes = Vec::new();
        for (k, (port, url)) in amqp.into_iter().enumerate() {
            let dist_port = match dist_base {
                Some(b) => plus(b, k, "RABBITMQ_DIST_PORT")?,
                None => super::native::rabbitmq_dist_port(port),
            };
            nodes.push(HaNode {
                name: format!("mfe{port}@localhost"),
                amqp_port: port,
                management_port: plus(management_port, k, "RABBITMQ_MANAGEMENT_PORT")?,
                dist_port,
                url,
            });
        }
        let mut seen = std::collections::BTreeMap::new();
        for n in &nodes {
            for (port, what) in
                [(n.amqp_port, "AMQP"), (n.management_port, "management"), (n.dist_port, "distribution")]
            {
                if let Some(other) = seen.insert(port, format!("{what} port of {}", n.name)) {
                    bail!(
                        "--ha: port {port} would be both the {other} and the {what} port of {} — list three URLs in RABBITMQ_URL, or move RABBITMQ_MANAGEMENT_PORT / RABBITMQ_DIST_PORT",
                        n.name
                    );
                }
            }
        }
        Ok(Self { nodes })
    }

    /// Every port of every node (preflight, and waiting for them to be free after a stop).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().flat_map(|n| [n.amqp_port, n.management_port, n.dist_port]).collect()
    }

    /// The node names, for `cluster_formation.classic_config.nodes.N`.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// `base` as a client of the cluster needs it: every node as a failover candidate, and the
    /// queue type the cluster's queues were declared with.
    pub fn hub_config(&self, base: HubConfig) -> HubConfig {
        HubConfig { urls: self.nodes.iter().map(|n| n.url.clone()).collect(), queue_type: QueueType::Quorum, ..base }
    }

    /// The same as the variables a service reads ([`HubConfig::from_env`]).
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        let cfg = self.hub_config(HubConfig::default());
        vec![("RABBITMQ_URL", cfg.urls.join(",")), ("RABBITMQ_QUEUE_TYPE", cfg.queue_type.as_str().to_string())]
    }
}

/// The content `rabbitmq/definitions-ha.json` must have: `definitions.json` (users, vhosts,
/// permissions, policies) with its queues replaced by the code's topology as quorum queues.
pub fn ha_definitions(root: &Path) -> anyhow::Result<Value> {
    let path = root.join("rabbitmq/definitions.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut defs: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let cfg = HubConfig { queue_type: QueueType::Quorum, ..HubConfig::default() };
    let code = mfe_events::topology::definitions(&mfe_events::topology::platform_plan(&cfg));
    defs["queues"] = code["queues"].clone();
    Ok(defs)
}

/// One quorum queue as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub name: String,
    pub leader: Option<String>,
    pub members: Vec<String>,
    pub online: Vec<String>,
}

/// The cluster's own view, read from one node's management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Every node the cluster knows, and whether it runs.
    pub nodes: Vec<(String, bool)>,
    pub queues: Vec<QueueView>,
}

/// Reads the view from the first node whose management API answers.
pub async fn observe(topo: &HaTopology, user: &str, password: &str) -> anyhow::Result<ClusterView> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut reasons = Vec::new();
    for n in &topo.nodes {
        let base = format!("http://127.0.0.1:{}/api", n.management_port);
        let get = |path: &str| {
            let req = client.get(format!("{base}/{path}")).basic_auth(user, Some(password));
            async move {
                let resp = req.send().await?.error_for_status()?;
                anyhow::Ok(resp.json::<Value>().await?)
            }
        };
        let nodes = match get("nodes?columns=name,running").await {
            Ok(v) => v,
            Err(e) => {
                reasons.push(format!("{}: {}", n.management_port, crate::error_line(&e)));
                continue;
            }
        };
        let queues = get("queues?columns=name,type,leader,members,online").await?;
        return Ok(parse_view(&nodes, &queues));
    }
    bail!("no node's management API answered ({})", reasons.join("; "))
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default();
    out.sort();
    out
}

/// `/api/nodes` and `/api/queues` bodies → the view (quorum queues only, sorted by name).
pub fn parse_view(nodes: &Value, queues: &Value) -> ClusterView {
    let mut node_list: Vec<(String, bool)> = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["running"].as_bool().unwrap_or(false))))
                .collect()
        })
        .unwrap_or_default();
    node_list.sort();
    let mut queue_list: Vec<QueueView> = queues
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|q| q["type"] == "quorum")
                .filter_map(|q| {
                    Some(QueueView {
                        name: q["name"].as_str()?.to_string(),
                        leader: q["leader"].as_str().map(String::from),
                        members: strings(&q["members"]),
                        online: strings(&q["online"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    queue_list.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterView { nodes: node_list, queues: queue_list }
}

/// What this machine knows of one node without asking the cluster: its process and an AMQP probe.
#[derive(Debug, Clone)]
pub struct NodeLocal {
    /// `running pid N` or `stopped`.
    pub state: String,
    /// `Ok(detail)` when its AMQP port answered.
    pub amqp: Result<String, String>,
}

/// The summary row (named `rabbitmq`, like the single node's) and one row per node and per
/// quorum queue, from the local facts and the cluster's view (`Err` when no node answered).
pub fn checks(
    topo: &HaTopology,
    local: &[NodeLocal],
    view: &Result<ClusterView, String>,
) -> (bool, String, Vec<Check>) {
    let mut rows = Vec::new();
    let in_cluster = |name: &str| match view {
        Ok(v) => v.nodes.iter().find(|(n, _)| n == name).map(|(_, running)| *running),
        Err(_) => None,
    };
    let mut down = Vec::new();
    for (n, l) in topo.nodes.iter().zip(local) {
        let member = in_cluster(&n.name);
        let ok = l.amqp.is_ok() && member == Some(true);
        let cluster_note = match (view, member) {
            (Err(_), _) => "cluster view unavailable",
            (Ok(_), Some(true)) => "cluster member, running",
            (Ok(_), Some(false)) => "cluster member, down",
            (Ok(_), None) => "NOT a member of the cluster",
        };
        let health = match &l.amqp {
            Ok(d) => d.clone(),
            Err(e) => e.clone(),
        };
        if !ok {
            down.push(n.name.clone());
        }
        let ports = format!("{},{},{}", n.amqp_port, n.management_port, n.dist_port);
        rows.push(
            Check::new(
                format!("rabbitmq:{}", n.name),
                ok,
                format!("{} ({health}; {cluster_note}) ports {ports}", l.state),
            )
            .metric("node", n.name.clone())
            .metric("ports", ports)
            .metric("url", mfe_core::redact_url_password(&n.url)),
        );
    }
    let running = topo.nodes.len() - down.len();
    let total = topo.nodes.len();
    let whole = down.is_empty();
    let summary = if whole {
        format!("cluster: whole ({running}/{total} running)")
    } else if running == 0 {
        format!("cluster: down (0/{total} running)")
    } else {
        format!("cluster: degraded ({running}/{total} running; {} down)", down.join(", "))
    };
    if let Ok(v) = view {
        for q in &v.queues {
            let majority = q.online.len() * 2 > q.members.len();
            let ok = q.leader.is_some() && majority;
            let leader = q.leader.clone().unwrap_or_else(|| "none".into());
            rows.push(
                Check::new(
                    format!("queue:{}", q.name),
                    ok,
                    format!(
                        "quorum, leader {leader}; members {}; online {}/{}{}",
                        q.members.join(", "),
                        q.online.len(),
                        q.members.len(),
                        if majority { "" } else { " — no majority: the queue is unavailable until a node returns" }
                    ),
                )
                .metric("leader", leader)
                .metric("members", q.members.clone())
                .metric("online", q.online.clone()),
            );
        }
    }
    (whole, summary, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_url_gives_three_consecutive_nodes_and_three_urls_give_theirs() {
        let t = HaTopology::derive(&urls(&["amqp://admin:admin@127.0.0.1:5672/%2f"]), 15672, None).unwrap();
        let ports: Vec<_> = t.nodes.iter().map(|n| (n.amqp_port, n.management_port, n.dist_port)).collect();
        assert_eq!(ports, vec![(5672, 15672, 25672), (5673, 15673, 25673), (5674, 15674, 25674)]);
        assert_eq!(t.nodes[1].url, "amqp://admin:admin@127.0.0.1:5673/%2f");
        assert_eq!(t.nodes[2].name, "mfe5674@localhost");
        let three =
            urls(&["amqp://a:b@127.0.0.1:6001/%2f", "amqp://a:b@127.0.0.1:6005/%2f", "amqp://a:b@127.0.0.1:6009/%2f"]);
        let t = HaTopology::derive(&three, 7000, Some(8000)).unwrap();
        let ports: Vec<_> = t.nodes.iter().map(|n| (n.amqp_port, n.management_port, n.dist_port)).collect();
        assert_eq!(ports, vec![(6001, 7000, 8000), (6005, 7001, 8001), (6009, 7002, 8002)]);
        let env = t.service_env();
        assert_eq!(env[0], ("RABBITMQ_URL", three.join(",")));
        assert_eq!(env[1], ("RABBITMQ_QUEUE_TYPE", "quorum".to_string()));
    }

    #[test]
    fn two_urls_or_colliding_ports_are_refused_with_what_to_change() {
        let err =
            HaTopology::derive(&urls(&["amqp://h:1/%2f", "amqp://h:2/%2f"]), 15672, None).unwrap_err().to_string();
        assert!(err.starts_with("RABBITMQ_URL lists 2 brokers; --ha runs 3 nodes"), "{err}");
        // test.env's layout: management on AMQP + 1, which node 2's AMQP port would take.
        let err = HaTopology::derive(&urls(&["amqp://h:25672/%2f"]), 25673, None).unwrap_err().to_string();
        assert!(err.contains("port 25673 would be both"), "{err}");
        assert!(err.contains("RABBITMQ_MANAGEMENT_PORT"), "{err}");
    }

    #[test]
    fn the_committed_ha_definitions_are_the_code_topology_as_quorum_queues() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let expected = ha_definitions(&root).unwrap();
        let text = std::fs::read_to_string(root.join(HA_DEFINITIONS)).expect("rabbitmq/definitions-ha.json exists");
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(file, expected, "regenerate {HA_DEFINITIONS} from definitions.json and the code's quorum plan");
        let queues = file["queues"].as_array().unwrap();
        assert!(queues.len() >= 5);
        assert!(queues.iter().all(|q| q["arguments"]["x-queue-type"] == "quorum"), "every queue is quorum");
        let single: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("rabbitmq/definitions.json")).unwrap()).unwrap();
        assert_eq!(file["users"], single["users"]);
        assert_eq!(file["bindings"], single["bindings"]);
    }

    fn topo() -> HaTopology {
        HaTopology::derive(&urls(&["amqp://admin:admin@127.0.0.1:5672/%2f"]), 15672, None).unwrap()
    }

    fn local(ok: &[bool]) -> Vec<NodeLocal> {
        ok.iter()
            .map(|ok| NodeLocal {
                state: if *ok { "running pid 1".into() } else { "stopped".into() },
                amqp: if *ok { Ok("amqp ok".into()) } else { Err("not running".into()) },
            })
            .collect()
    }

    #[test]
    fn the_summary_says_whole_or_names_the_missing_node_and_queues_keep_a_majority() {
        let nodes = json!([
            {"name": "mfe5672@localhost", "running": true},
            {"name": "mfe5673@localhost", "running": false},
            {"name": "mfe5674@localhost", "running": true}]);
        let queues = json!([
            {"name": "auth.events.queue", "type": "quorum", "leader": "mfe5672@localhost",
             "members": ["mfe5674@localhost", "mfe5672@localhost", "mfe5673@localhost"],
             "online": ["mfe5672@localhost", "mfe5674@localhost"]},
            {"name": "other", "type": "classic"}]);
        let view = Ok(parse_view(&nodes, &queues));
        let (whole, summary, rows) = checks(&topo(), &local(&[true, false, true]), &view);
        assert!(!whole);
        assert_eq!(summary, "cluster: degraded (2/3 running; mfe5673@localhost down)");
        assert_eq!(rows.len(), 4, "three nodes and the one quorum queue: {rows:?}");
        assert!(!rows[1].passed && rows[1].detail.contains("cluster member, down"), "{:?}", rows[1]);
        let q = &rows[3];
        assert!(q.passed, "2 of 3 members online is a majority: {q:?}");
        assert_eq!(q.name, "queue:auth.events.queue");
        assert!(q.detail.starts_with("quorum, leader mfe5672@localhost; members mfe5672@localhost, mfe5673@localhost, mfe5674@localhost; online 2/3"), "{}", q.detail);

        let all_up = json!([
            {"name": "mfe5672@localhost", "running": true},
            {"name": "mfe5673@localhost", "running": true},
            {"name": "mfe5674@localhost", "running": true}]);
        let (whole, summary, _) = checks(&topo(), &local(&[true, true, true]), &Ok(parse_view(&all_up, &json!([]))));
        assert!(whole);
        assert_eq!(summary, "cluster: whole (3/3 running)");

        // A node that runs but formed a cluster of its own is not whole either.
        let split =
            json!([{"name": "mfe5672@localhost", "running": true}, {"name": "mfe5673@localhost", "running": true}]);
        let (whole, summary, rows) = checks(&topo(), &local(&[true, true, true]), &Ok(parse_view(&split, &json!([]))));
        assert!(!whole, "{summary}");
        assert!(rows[2].detail.contains("NOT a member of the cluster"), "{:?}", rows[2]);

        let lost = json!([{"name": "q", "type": "quorum", "leader": null,
            "members": ["a", "b", "c"], "online": ["a"]}]);
        let (_, _, rows) = checks(&topo(), &local(&[true, false, false]), &Ok(parse_view(&all_up, &lost)));
        assert!(!rows[3].passed && rows[3].detail.contains("no majority"), "{:?}", rows[3]);
    }
}
