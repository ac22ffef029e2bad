//! The RabbitMQ topology of SPEC §7, as data ([`Plan`]) and as declarations on a channel.
//!
//! - exchange `events` (topic): every event, routing key = type;
//! - per consumer a durable queue `<service>.events.queue` bound with that consumer's keys,
//!   dead-lettering to `events.dlx`;
//! - per consumer and retry delay a queue `<queue>.retry.<ms>` with that message TTL, which
//!   dead-letters back through the default exchange to `<queue>` only — so a retry never
//!   reaches another consumer;
//! - exchange `events.dlx` (direct) and queue `events.dlq`, bound with routing key `events.dlq`.
//!
//! Only services that consume have a queue (SPEC §7: per-consumer queues): admin and profile.
//! Auth and payments only publish; their former queues (`auth.events.queue`,
//! `payments.events.queue` and their retry queues) had no consumer and grew without bound, so
//! they are gone from the topology, and the policy [`RETIRED_QUEUES_POLICY`] (in the
//! definitions both brokers load at boot) deletes them, with what they hold, from a broker that
//! still has them once they have been unused for [`RETIRED_QUEUE_EXPIRES_MS`].
//!
//! `rabbitmq/definitions.json` holds the same topology for the default [`HubConfig`]; a test
//! compares the two.

use crate::config::{HubConfig, QueueType};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What a consumer reads: its queue and the routing keys bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The consuming service, e.g. `profile`; recorded on dead-lettered messages.
    pub consumer: String,
    /// The queue, e.g. `profile.events.queue`; empty with `exclusive` for a generated name.
    pub queue: String,
    /// Routing keys (topic patterns) bound to the queue, e.g. `["auth.user.registered"]`.
    pub bindings: Vec<String>,
    /// A per-replica queue (the gateway's). On classic queues: non-durable, exclusive to the
    /// connection, deleted with it. On quorum queues (the HA broker): a quorum queue of its own
    /// that expires when no consumer used it for [`REPLICA_QUEUE_EXPIRES_MS`], so it survives the
    /// death of the node the replica was connected to and the replica resumes it from another
    /// node with nothing lost (an exclusive queue dies with its node: `mfe test chaos` counted the
    /// socket deliveries a killed or paused node cost). Its retry queues expire when unused.
    pub exclusive: bool,
}

impl Subscription {
    /// A durable per-service queue `<consumer>.events.queue`.
    pub fn durable(consumer: &str, bindings: &[&str]) -> Self {
        Self {
            consumer: consumer.into(),
            queue: format!("{consumer}.events.queue"),
            bindings: bindings.iter().map(|s| s.to_string()).collect(),
            exclusive: false,
        }
    }

    /// A per-replica queue named `<consumer>.<uuid>`, gone when the connection closes.
    pub fn exclusive(consumer: &str, bindings: &[&str]) -> Self {
        Self {
            consumer: consumer.into(),
            queue: String::new(),
            bindings: bindings.iter().map(|s| s.to_string()).collect(),
            exclusive: true,
        }
    }

    /// The same subscription with every name under a private prefix (for test suites).
    pub fn isolated(mut self, prefix: &str) -> Self {
        if !self.queue.is_empty() {
            self.queue = format!("{prefix}.{}", self.queue);
        }
        self
    }
}

/// The queues of the services that consume (SPEC §7) and their bindings (the gateway uses
/// exclusive queues). A queue nobody reads only grows: a service gets one here when it gets a
/// consumer.
pub fn service_queues() -> Vec<Subscription> {
    vec![
        // Admin keeps the audit log of everything.
        Subscription::durable("admin", &["#"]),
        Subscription::durable("profile", &["auth.user.registered", "profile.#"]),
    ]
}

/// The queue argument that makes the broker deliver a service queue to one consumer at a time
/// (RabbitMQ's *single active consumer*, classic and quorum queues alike); the other replicas'
/// consumers wait, and the broker hands the queue to one of them, unacked messages first, when
/// the active one goes. Chosen over an ordering key because the consumers apply events
/// one at a time already (a handler acks before it sees the next delivery): with one active
/// consumer per queue the order of publication is the order of application, for admin's
/// audit log and profile's updates alike, with nothing to partition or re-sequence. The price
/// is that replicas add failover, not throughput, to a consumer; `mfe test chaos` on two
/// replicas counted 26 status events applied out of order by admin without it. Messages that
/// fail and wait in a retry queue still come back behind newer ones, as before.
///
/// Queue arguments are fixed when a queue is created: a broker that holds a service queue
/// declared without it gets it through [`crate::Hub::upgrade_queue`] (`mfe up`,
/// `mfe events upgrade-queues`).
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";

/// The retry queue that holds a failed message of `queue` for `delay_ms` before it returns.
pub fn retry_queue_name(queue: &str, delay_ms: u64) -> String {
    format!("{queue}.retry.{delay_ms}")
}

/// Idle retry queues of exclusive subscriptions disappear after this long.
const EXCLUSIVE_RETRY_EXPIRES_MS: i64 = 10 * 60 * 1000;

/// A per-replica quorum queue disappears after this long without a consumer: longer than any
/// failover (seconds), short enough that a replica gone for good does not collect every event
/// for long.
pub const REPLICA_QUEUE_EXPIRES_MS: i64 = 2 * 60 * 1000;

/// The queues of the services that never consumed (auth, payments): `<service>.events.queue`
/// and its retry queues. Nothing declares them any more.
pub const RETIRED_QUEUES: &[&str] = &["auth.events.queue", "payments.events.queue"];

/// The name of the policy that deletes [`RETIRED_QUEUES`] from a broker that still has them.
pub const RETIRED_QUEUES_POLICY: &str = "retired-event-queues";

/// How long a retired queue lives unused (no consumer, no `basic.get`) before the broker deletes
/// it: deletion discards its messages (no dead-lettering), which nobody was going to read.
pub const RETIRED_QUEUE_EXPIRES_MS: i64 = 60 * 1000;

/// The `policies` section of the definitions in vhost `/`: [`RETIRED_QUEUES_POLICY`], matching
/// each retired queue and its retry queues by an anchored pattern (isolated test topologies,
/// `<prefix>.auth.events.queue`, never match).
pub fn policies() -> Value {
    let names: Vec<String> = RETIRED_QUEUES.iter().map(|q| q.replace('.', "\\.")).collect();
    json!([{
        "vhost": "/",
        "name": RETIRED_QUEUES_POLICY,
        "pattern": format!("^({})(\\.retry\\.[0-9]+)?$", names.join("|")),
        "apply-to": "queues",
        "priority": 0,
        "definition": {"expires": RETIRED_QUEUE_EXPIRES_MS},
    }])
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDecl {
    pub name: String,
    /// `topic` or `direct`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    /// `x-` arguments; numbers are integers, everything else strings.
    pub arguments: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingDecl {
    pub source: String,
    pub destination: String,
    pub routing_key: String,
}

/// A set of declarations, applied in order: exchanges, queues, bindings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub exchanges: Vec<ExchangeDecl>,
    pub queues: Vec<QueueDecl>,
    pub bindings: Vec<BindingDecl>,
}

impl Plan {
    pub fn extend(&mut self, other: Plan) {
        self.exchanges.extend(other.exchanges);
        self.queues.extend(other.queues);
        self.bindings.extend(other.bindings);
    }
}

fn args(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// The shared part: the events exchange, the DLX and the DLQ.
pub fn base_plan(cfg: &HubConfig) -> Plan {
    Plan {
        exchanges: vec![
            ExchangeDecl { name: cfg.exchange.clone(), kind: "topic".into() },
            ExchangeDecl { name: cfg.dlx.clone(), kind: "direct".into() },
        ],
        queues: vec![QueueDecl {
            name: cfg.dlq.clone(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: args(&[("x-queue-type", json!(cfg.queue_type.as_str()))]),
        }],
        bindings: vec![BindingDecl {
            source: cfg.dlx.clone(),
            destination: cfg.dlq.clone(),
            routing_key: cfg.dlq.clone(),
        }],
    }
}

/// One consumer's queue, its retry queues and its bindings. `sub.queue` must be set.
pub fn subscription_plan(cfg: &HubConfig, sub: &Subscription) -> Plan {
    let mut plan = Plan::default();
    let mut main_args =
        args(&[("x-dead-letter-exchange", json!(cfg.dlx)), ("x-dead-letter-routing-key", json!(cfg.dlq))]);
    // On the quorum broker a replica's queue is a replicated one that expires (see `exclusive`).
    let connection_bound = sub.exclusive && cfg.queue_type != QueueType::Quorum;
    if !connection_bound {
        // Exclusive queues are always classic; a queue type argument would be refused for quorum.
        main_args.insert("x-queue-type".into(), json!(cfg.queue_type.as_str()));
    }
    if sub.exclusive && !connection_bound {
        main_args.insert("x-expires".into(), json!(REPLICA_QUEUE_EXPIRES_MS));
    }
    if !sub.exclusive {
        // A service queue is shared by every replica of its service: one consumer at a time
        // keeps the events of one payment in the order they were published (see
        // `SINGLE_ACTIVE_CONSUMER`).
        main_args.insert(SINGLE_ACTIVE_CONSUMER.into(), json!(true));
    }
    plan.queues.push(QueueDecl {
        name: sub.queue.clone(),
        durable: !connection_bound,
        exclusive: connection_bound,
        auto_delete: connection_bound,
        arguments: main_args,
    });
    let mut delays: Vec<u64> = cfg.retry_delays.iter().map(|d| d.as_millis() as u64).collect();
    delays.dedup();
    for ms in delays {
        let mut a = args(&[
            ("x-message-ttl", json!(ms)),
            ("x-dead-letter-exchange", json!("")),
            ("x-dead-letter-routing-key", json!(sub.queue)),
        ]);
        if sub.exclusive {
            a.insert("x-expires".into(), json!(EXCLUSIVE_RETRY_EXPIRES_MS));
        }
        if !connection_bound {
            a.insert("x-queue-type".into(), json!(cfg.queue_type.as_str()));
        }
        plan.queues.push(QueueDecl {
            name: retry_queue_name(&sub.queue, ms),
            durable: !connection_bound,
            exclusive: false,
            auto_delete: false,
            arguments: a,
        });
    }
    for key in &sub.bindings {
        plan.bindings.push(BindingDecl {
            source: cfg.exchange.clone(),
            destination: sub.queue.clone(),
            routing_key: key.clone(),
        });
    }
    plan
}

/// The whole topology of the platform: base plus every service queue.
pub fn platform_plan(cfg: &HubConfig) -> Plan {
    let mut plan = base_plan(cfg);
    for sub in service_queues() {
        plan.extend(subscription_plan(cfg, &sub));
    }
    plan
}

/// The `exchanges`, `queues` and `bindings` sections of `rabbitmq/definitions.json` for `plan`
/// in vhost `/` (the `policies` section is [`policies`]).
pub fn definitions(plan: &Plan) -> Value {
    let exchanges: Vec<Value> = plan
        .exchanges
        .iter()
        .map(|e| {
            json!({"name": e.name, "vhost": "/", "type": e.kind, "durable": true, "auto_delete": false,
                   "internal": false, "arguments": {}})
        })
        .collect();
    let queues: Vec<Value> = plan
        .queues
        .iter()
        .map(|q| json!({"name": q.name, "vhost": "/", "durable": q.durable, "auto_delete": q.auto_delete, "arguments": q.arguments}))
        .collect();
    let bindings: Vec<Value> = plan
        .bindings
        .iter()
        .map(|b| {
            json!({"source": b.source, "vhost": "/", "destination": b.destination, "destination_type": "queue",
                   "routing_key": b.routing_key, "arguments": {}})
        })
        .collect();
    json!({"exchanges": exchanges, "queues": queues, "bindings": bindings})
}

fn field_table(arguments: &BTreeMap<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in arguments {
        let value = match v {
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        t.insert(ShortString::from(k.as_str()), value);
    }
    t
}

/// Declares `plan` on `channel` (idempotent: same arguments, same result).
pub async fn apply(channel: &Channel, plan: &Plan) -> Result<(), lapin::Error> {
    for e in &plan.exchanges {
        let kind = if e.kind == "topic" { ExchangeKind::Topic } else { ExchangeKind::Direct };
        let opts = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(&e.name, kind, opts, FieldTable::default()).await?;
    }
    for q in &plan.queues {
        let opts = QueueDeclareOptions {
            durable: q.durable,
            exclusive: q.exclusive,
            auto_delete: q.auto_delete,
            ..Default::default()
        };
        channel.queue_declare(&q.name, opts, field_table(&q.arguments)).await?;
    }
    for b in &plan.bindings {
        channel
            .queue_bind(&b.destination, &b.source, &b.routing_key, QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Declares the shared part (exchanges, DLX, DLQ): what every connection does first.
pub async fn declare(channel: &Channel, cfg: &HubConfig) -> Result<(), lapin::Error> {
    apply(channel, &base_plan(cfg)).await
}

impl crate::Hub {
    /// Deletes the topology of this hub's configuration and `subs` (queues with their retry
    /// queues, the DLQ, the exchanges) — only for an isolated configuration
    /// ([`HubConfig::isolated`]): the live topology is never deleted this way.
    pub async fn delete_isolated_topology(&self, subs: &[Subscription]) -> Result<(), crate::HubError> {
        let cfg = self.config();
        let default = HubConfig::default();
        if cfg.dlq == default.dlq || !cfg.dlq.ends_with(&format!(".{}", default.dlq)) {
            return Err(crate::HubError::NotIsolated { exchange: cfg.exchange.clone() });
        }
        let ch = self.channel().await?;
        let mut plan = base_plan(cfg);
        for s in subs.iter().filter(|s| !s.queue.is_empty()) {
            plan.extend(subscription_plan(cfg, s));
        }
        for q in &plan.queues {
            ch.queue_delete(&q.name, lapin::options::QueueDeleteOptions::default())
                .await
                .map_err(crate::HubError::amqp(format!("deleting queue {:?}", q.name)))?;
        }
        for e in &plan.exchanges {
            ch.exchange_delete(&e.name, lapin::options::ExchangeDeleteOptions::default())
                .await
                .map_err(crate::HubError::amqp(format!("deleting exchange {:?}", e.name)))?;
        }
        let _ = ch.close(200, "deleted").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn definitions_file() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rabbitmq/definitions.json");
        let text = std::fs::read_to_string(path).expect("rabbitmq/definitions.json is readable");
        serde_json::from_str(&text).expect("rabbitmq/definitions.json is valid JSON")
    }

    fn as_set(v: &Value, section: &str) -> BTreeSet<String> {
        v[section].as_array().unwrap_or(&Vec::new()).iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn definitions_json_declares_exactly_the_topology_the_code_declares() {
        let file = definitions_file();
        let code = definitions(&platform_plan(&HubConfig::default()));
        for section in ["exchanges", "queues", "bindings"] {
            let (in_file, in_code) = (as_set(&file, section), as_set(&code, section));
            let missing: Vec<_> = in_code.difference(&in_file).collect();
            let extra: Vec<_> = in_file.difference(&in_code).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{section}: missing from definitions.json {missing:?}; only in definitions.json {extra:?}"
            );
        }
        assert_eq!(file["policies"], policies(), "definitions.json's policies are the code's");
    }

    #[test]
    fn every_durable_queue_has_a_consumer_and_the_retired_ones_are_deleted_by_policy() {
        let plan = platform_plan(&HubConfig::default());
        let consumers: BTreeSet<String> = service_queues().into_iter().map(|s| s.consumer).collect();
        // The services that consume: admin (audit log) and profile (user registered).
        assert_eq!(consumers, BTreeSet::from(["admin".to_string(), "profile".to_string()]));
        let policy = &policies()[0];
        let pattern = regex::Regex::new(policy["pattern"].as_str().unwrap()).unwrap();
        for q in &plan.queues {
            assert!(!pattern.is_match(&q.name), "the retirement policy would delete the live queue {}", q.name);
        }
        for retired in RETIRED_QUEUES {
            assert!(plan.queues.iter().all(|q| !q.name.starts_with(retired)), "{retired} is still declared");
            for name in [retired.to_string(), retry_queue_name(retired, 1000), retry_queue_name(retired, 4000)] {
                assert!(pattern.is_match(&name), "the policy misses {name}");
            }
            assert!(!pattern.is_match(&format!("mfe.test.1.{retired}")), "an isolated queue is not retired");
        }
        assert_eq!(policy["apply-to"], "queues");
        assert_eq!(policy["definition"], json!({"expires": RETIRED_QUEUE_EXPIRES_MS}));
    }

    #[test]
    fn a_retry_queue_returns_messages_only_to_its_own_consumer_queue() {
        let cfg = HubConfig::default();
        let plan = subscription_plan(&cfg, &Subscription::durable("profile", &["auth.user.registered"]));
        let retry = plan.queues.iter().find(|q| q.name == "profile.events.queue.retry.2000").expect("2 s retry queue");
        assert_eq!(retry.arguments["x-message-ttl"], json!(2000));
        assert_eq!(retry.arguments["x-dead-letter-exchange"], json!(""));
        assert_eq!(retry.arguments["x-dead-letter-routing-key"], json!("profile.events.queue"));
        assert!(plan.bindings.iter().all(|b| b.destination == "profile.events.queue"));
    }

    #[test]
    fn a_replica_queue_is_bound_to_its_connection_on_classic_and_replicated_on_quorum() {
        let mut sub = Subscription::exclusive("gateway", &["#"]);
        sub.queue = "gateway.r1".into();
        let classic = subscription_plan(&HubConfig::default(), &sub);
        let q = &classic.queues[0];
        assert!(q.exclusive && q.auto_delete && !q.durable);
        assert!(!q.arguments.contains_key("x-queue-type") && !q.arguments.contains_key("x-expires"));

        let quorum = HubConfig { queue_type: QueueType::Quorum, ..HubConfig::default() };
        let plan = subscription_plan(&quorum, &sub);
        for q in &plan.queues {
            assert!(q.durable && !q.exclusive && !q.auto_delete, "{}", q.name);
            assert_eq!(q.arguments["x-queue-type"], json!("quorum"), "{}", q.name);
            assert!(q.arguments.contains_key("x-expires"), "{}", q.name);
        }
        assert_eq!(plan.queues[0].arguments["x-expires"], json!(REPLICA_QUEUE_EXPIRES_MS));
    }

    #[test]
    fn a_service_queue_has_one_active_consumer_and_a_replica_queue_and_retry_queues_do_not() {
        for cfg in [HubConfig::default(), HubConfig { queue_type: QueueType::Quorum, ..HubConfig::default() }] {
            for sub in service_queues() {
                let plan = subscription_plan(&cfg, &sub);
                assert_eq!(plan.queues[0].arguments[SINGLE_ACTIVE_CONSUMER], json!(true), "{}", sub.queue);
                assert!(plan.queues[1..].iter().all(|q| !q.arguments.contains_key(SINGLE_ACTIVE_CONSUMER)));
            }
            let mut replica = Subscription::exclusive("gateway", &["#"]);
            replica.queue = "gateway.r1".into();
            let plan = subscription_plan(&cfg, &replica);
            assert!(!plan.queues[0].arguments.contains_key(SINGLE_ACTIVE_CONSUMER), "every replica reads its own");
        }
    }

    #[test]
    fn the_admin_queue_receives_every_event() {
        let admin = service_queues().into_iter().find(|s| s.consumer == "admin").unwrap();
        assert_eq!(admin.bindings, vec!["#"]);
    }
}
