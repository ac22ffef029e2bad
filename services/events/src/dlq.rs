//! Dead letters an operator can inspect and re-drive: named operations on [`Hub`] behind
//! `mfe events dlq list|show|replay|purge`, so no crate but this one speaks AMQP.
//!
//! # One dead-letter queue with filters, not one per service
//! The seed planned `<service>.events.dlq`; we keep the single `events.dlq` of SPEC §7 (the
//! external contract names it, `rabbitmq/definitions.json` declares it, the management UI and
//! the runbook point at it) and filter by the headers every dead letter carries:
//! `x-failed-consumer`, `x-failed-queue`, `x-death-reason`, `x-attempts`, `x-first-failure`.
//! What per-service queues would buy — replaying or purging one consumer without reading past
//! the others' messages — costs a scan here, and a scan is cheap at the depths a DLQ has (every
//! message in it is a bug someone has to look at: tens, not millions). One queue keeps one place
//! to look and one alert ("`events.dlq` is not empty"), and lets `list` show every failure in
//! the order it happened across consumers.
//!
//! # Reading without losing anything
//! Every operation is one *scan*: a channel consumes `events.dlq` with manual acks, prefetch
//! unlimited, and as an **exclusive** consumer; it reads as many deliveries as the queue held
//! when the scan began, acts on the matching ones and, at the end, hands every delivery it did
//! not settle back with one `basic.nack(multiple, requeue)`. The broker keeps each message until
//! it is acked, so a scan that crashes or loses its connection leaves the queue as it was (the
//! broker requeues unacked deliveries of a closed channel).
//! - *Why consume rather than `basic.get` + reject:* a rejected-and-requeued message goes back to
//!   the head, so the next `basic.get` returns it again; a scan has to hold what it has seen
//!   either way. Consuming pushes the messages in one stream instead of one round trip each.
//! - *Why exclusive:* two scans at once would each see only what the other does not hold, and a
//!   replay racing a listing would miss messages. RabbitMQ refuses a second exclusive consumer
//!   (`ACCESS_REFUSED`), which we turn into [`HubError::InUse`]: one operation at a time, the
//!   second is told to retry instead of silently seeing half the queue.
//! - *Ordering:* a classic queue puts requeued messages back at their original position, so a
//!   listing leaves the order as it found it; messages dead-lettered during a scan queue up
//!   behind it and are seen by the next one.
//!
//! # Replaying
//! A matching dead letter is published to its failing consumer's queue through the default
//! exchange (routing key = queue name), so no other consumer — none of which failed — sees it
//! again. The body, message id, type, correlation id and trace context are kept, so the
//! consumer's inbox (`processed_events`, [`crate::idempotency`]) keeps its effects once; the
//! failure headers are dropped (the retries start afresh) and `x-replays` is counted up. The
//! DLQ copy is acked only after the broker confirmed the replayed copy: a crash in between
//! leaves both, and a second replay is a duplicate the inbox absorbs (at least once). Publishes
//! go out in batches of [`REPLAY_BATCH`] with their confirms in flight together.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, DeliveryTag, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use serde_json::Value;

use crate::config::HubConfig;
use crate::error::HubError;
use crate::hub::{
    Hub, H_ATTEMPT, H_ATTEMPTS, H_DEAD_LETTERED_AT, H_DEATH_REASON, H_FAILED_CONSUMER, H_FAILED_QUEUE, H_FIRST_FAILURE,
    H_REPLAYS,
};

/// Replayed copies whose confirms are awaited together.
pub const REPLAY_BATCH: usize = 64;

/// How long a scan waits for the next delivery before it gives up on the count it expected
/// (someone else took messages meanwhile); the broker pushes the next one in microseconds.
const SCAN_IDLE: Duration = Duration::from_secs(3);

/// Headers describing a failure: dropped from a replayed copy so its consumer retries afresh.
const FAILURE_HEADERS: &[&str] = &[
    H_ATTEMPT,
    H_ATTEMPTS,
    H_DEATH_REASON,
    H_FAILED_CONSUMER,
    H_FAILED_QUEUE,
    H_FIRST_FAILURE,
    H_DEAD_LETTERED_AT,
    "x-last-error",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
];

/// Which dead letters an operation touches; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// The failing consumer, e.g. `profile`.
    pub consumer: Option<String>,
    /// The event type or a topic pattern (`payments.#`, `auth.user.*`).
    pub event_type: Option<String>,
    /// The event id (the envelope's `id`, the AMQP message id).
    pub id: Option<String>,
}

impl DeadLetterFilter {
    pub fn matches(&self, dl: &DeadLetter) -> bool {
        self.consumer.as_deref().is_none_or(|c| c == dl.consumer)
            && self.event_type.as_deref().is_none_or(|t| topic_matches(t, &dl.event_type))
            && self.id.as_deref().is_none_or(|id| id.eq_ignore_ascii_case(&dl.id))
    }

    pub fn is_empty(&self) -> bool {
        self.consumer.is_none() && self.event_type.is_none() && self.id.is_none()
    }
}

/// AMQP topic matching: words split on `.`, `*` is exactly one word, `#` zero or more. Written
/// here (twenty lines) because the only crates offering it are whole broker implementations.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((word, rest)) => match k.split_first() {
                Some((kw, krest)) => (*word == "*" || word == kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// One message of the dead-letter queue, as `mfe events dlq list|show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The event id (AMQP message id, else the envelope's `id`); `-` when neither exists.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The consumer whose handler failed (`x-failed-consumer`, else derived from `x-death`).
    pub consumer: String,
    /// Where a replay sends it: the failing consumer's queue.
    pub queue: String,
    pub reason: String,
    /// Handler runs before it was dead-lettered (1 + retries).
    pub attempts: u32,
    pub first_failure: Option<DateTime<Utc>>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// How many times it was replayed before (and failed again).
    pub replays: u32,
    pub source: Option<String>,
    pub correlation_id: Option<String>,
    /// 1-based position in the queue when it was read.
    pub position: usize,
    /// Every AMQP header, as JSON.
    pub headers: BTreeMap<String, Value>,
    /// The body: the envelope as JSON, or the raw text of a body that is not JSON.
    pub envelope: Value,
}

/// The result of [`Hub::dead_letters`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    pub queue: String,
    /// Messages in the queue when the scan began.
    pub total: usize,
    /// How many matched the filter (shown or not).
    pub matched: usize,
    /// The matching ones, in queue order (at most the limit asked for).
    pub dead_letters: Vec<DeadLetter>,
    /// True when more matched than the limit allowed to show.
    pub truncated: bool,
}

/// One dead letter sent back to its consumer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub consumer: String,
    pub queue: String,
}

/// One dead letter a replay could not send; it stays in the dead-letter queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotReplayed {
    pub id: String,
    pub consumer: String,
    pub queue: String,
    pub error: String,
}

/// The result of [`Hub::replay_dead_letters`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub queue: String,
    pub total: usize,
    pub replayed: Vec<Replayed>,
    pub failed: Vec<NotReplayed>,
    pub elapsed_ms: f64,
}

/// The result of [`Hub::purge_dead_letters`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    pub queue: String,
    pub total: usize,
    pub purged: usize,
}

impl Hub {
    /// The dead letters matching `filter`, at most `limit` of them, in queue order; the queue
    /// is left as it was (see the module docs).
    pub async fn dead_letters(&self, filter: &DeadLetterFilter, limit: usize) -> Result<DeadLetterList, HubError> {
        let mut scan = Scan::open(self).await?;
        let total = scan.expected;
        let (mut shown, mut truncated, mut matched) = (Vec::new(), false, 0);
        while let Some(d) = scan.next().await? {
            let dl = describe(&d, self.config(), scan.seen);
            if filter.matches(&dl) {
                matched += 1;
                if shown.len() < limit {
                    shown.push(dl);
                } else {
                    truncated = true;
                }
            }
        }
        scan.finish().await?;
        Ok(DeadLetterList { queue: self.config().dlq.clone(), total, matched, dead_letters: shown, truncated })
    }

    /// Sends every dead letter matching `filter` back to its failing consumer's queue only, and
    /// removes it from the dead-letter queue once the broker confirmed the copy. Letters that
    /// cannot be sent (their queue is gone, the broker refuses) stay and are reported.
    pub async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<ReplayReport, HubError> {
        let started = std::time::Instant::now();
        let mut scan = Scan::open(self).await?;
        let mut report = ReplayReport {
            queue: self.config().dlq.clone(),
            total: scan.expected,
            replayed: Vec::new(),
            failed: Vec::new(),
            elapsed_ms: 0.0,
        };
        let mut batch: Vec<(Delivery, DeadLetter)> = Vec::with_capacity(REPLAY_BATCH);
        while let Some(d) = scan.next().await? {
            let dl = describe(&d, self.config(), scan.seen);
            if filter.matches(&dl) {
                batch.push((d, dl));
                if batch.len() >= REPLAY_BATCH {
                    self.replay_batch(&scan.ch, std::mem::take(&mut batch), &mut report).await?;
                }
            }
        }
        self.replay_batch(&scan.ch, batch, &mut report).await?;
        scan.finish().await?;
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(report)
    }

    async fn replay_batch(
        &self,
        scan_ch: &Channel,
        batch: Vec<(Delivery, DeadLetter)>,
        report: &mut ReplayReport,
    ) -> Result<(), HubError> {
        if batch.is_empty() {
            return Ok(());
        }
        let sends = batch.iter().map(|(d, dl)| async move {
            let props = replay_properties(&d.properties, dl.replays);
            self.publish_raw("", &dl.queue, &d.data, props).await
        });
        let results = futures::future::join_all(sends).await;
        for ((d, dl), result) in batch.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    scan_ch
                        .basic_ack(d.delivery_tag, BasicAckOptions::default())
                        .await
                        .map_err(HubError::amqp(format!("acknowledging the replayed dead letter {}", dl.id)))?;
                    report.replayed.push(Replayed {
                        id: dl.id,
                        event_type: dl.event_type,
                        consumer: dl.consumer,
                        queue: dl.queue,
                    });
                }
                Err(e) => {
                    let error = match e {
                        HubError::Unroutable { .. } => format!(
                            "queue {:?} of consumer {:?} does not exist (is that consumer deployed under this name?)",
                            dl.queue, dl.consumer
                        ),
                        other => other.to_string(),
                    };
                    report.failed.push(NotReplayed { id: dl.id, consumer: dl.consumer, queue: dl.queue, error });
                }
            }
        }
        Ok(())
    }

    /// Deletes the dead letters matching `filter` for good (every one with an empty filter, in
    /// one `queue.purge`); returns how many.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<PurgeReport, HubError> {
        let dlq = self.config().dlq.clone();
        if filter.is_empty() {
            let ch = self.channel().await?;
            let q = ch
                .queue_declare(&dlq, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
                .await
                .map_err(HubError::amqp(format!("looking up queue {dlq:?}")))?;
            // A purge only removes ready messages: what a running scan holds would come back.
            if q.consumer_count() > 0 {
                return Err(HubError::InUse { queue: dlq });
            }
            let total = q.message_count() as usize;
            let purged = ch
                .queue_purge(&dlq, QueuePurgeOptions::default())
                .await
                .map_err(HubError::amqp(format!("purging {dlq:?}")))?;
            let _ = ch.close(200, "purged").await;
            return Ok(PurgeReport { queue: dlq, total, purged: purged as usize });
        }
        let mut scan = Scan::open(self).await?;
        let total = scan.expected;
        let mut purged = 0;
        while let Some(d) = scan.next().await? {
            if filter.matches(&describe(&d, self.config(), scan.seen)) {
                scan.ch
                    .basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                    .map_err(HubError::amqp("acknowledging a purged dead letter"))?;
                purged += 1;
            }
        }
        scan.finish().await?;
        Ok(PurgeReport { queue: dlq, total, purged })
    }
}

async fn passive_count(ch: &Channel, queue: &str) -> Result<usize, HubError> {
    let q = ch
        .queue_declare(queue, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .map_err(HubError::amqp(format!("looking up queue {queue:?}")))?;
    Ok(q.message_count() as usize)
}

/// One pass over the dead-letter queue as its only consumer; see the module docs.
struct Scan {
    ch: Channel,
    consumer: Option<(lapin::Consumer, String)>,
    queue: String,
    /// Messages in the queue when the scan began: it reads that many.
    expected: usize,
    seen: usize,
    last_tag: Option<DeliveryTag>,
}

impl Scan {
    async fn open(hub: &Hub) -> Result<Scan, HubError> {
        let queue = hub.config().dlq.clone();
        let ch = hub.channel().await?;
        let expected = passive_count(&ch, &queue).await?;
        let mut scan = Scan { ch, consumer: None, queue, expected, seen: 0, last_tag: None };
        // Even when nothing is ready: messages held by another reader do not count as ready, so
        // an empty count alone could hide them; the exclusive consume finds that reader.
        // Prefetch 0 = unlimited: the scan holds every message it has not settled, so any limit
        // below the queue's depth would stall it.
        scan.ch
            .basic_qos(0, BasicQosOptions::default())
            .await
            .map_err(HubError::amqp("setting the scan's prefetch"))?;
        let tag = format!("mfe-dlq-scan.{}", uuid::Uuid::new_v4().simple());
        let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
        match scan.ch.basic_consume(&scan.queue, &tag, opts, FieldTable::default()).await {
            Ok(c) => scan.consumer = Some((c, tag)),
            Err(e) => {
                let text = e.to_string();
                if text.contains("ACCESS_REFUSED") || text.contains("exclusive") {
                    return Err(HubError::InUse { queue: scan.queue });
                }
                return Err(HubError::Amqp { what: format!("reading {:?}", scan.queue), source: e });
            }
        }
        Ok(scan)
    }

    /// The next delivery, until as many as the queue held at the start were read.
    async fn next(&mut self) -> Result<Option<Delivery>, HubError> {
        if self.seen >= self.expected {
            return Ok(None);
        }
        let Some((consumer, _)) = self.consumer.as_mut() else { return Ok(None) };
        match tokio::time::timeout(SCAN_IDLE, consumer.next()).await {
            // Fewer than counted: someone else took messages meanwhile; what was read is all.
            Err(_) | Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(HubError::Amqp { what: format!("reading {:?}", self.queue), source: e }),
            Ok(Some(Ok(d))) => {
                self.seen += 1;
                self.last_tag = Some(d.delivery_tag);
                Ok(Some(d))
            }
        }
    }

    /// Hands back every delivery not acked, in one `nack(multiple, requeue)`, and lets go.
    async fn finish(self) -> Result<(), HubError> {
        if let Some(tag) = self.last_tag {
            self.ch
                .basic_nack(tag, BasicNackOptions { multiple: true, requeue: true })
                .await
                .map_err(HubError::amqp(format!("handing the unsettled messages back to {:?}", self.queue)))?;
        }
        if let Some((_, tag)) = &self.consumer {
            let _ = self.ch.basic_cancel(tag, BasicCancelOptions::default()).await;
        }
        // Anything delivered past the count is requeued by the broker with the channel.
        let _ = self.ch.close(200, "scan done").await;
        Ok(())
    }
}

/// A replayed copy's properties: the original ones without the failure headers, `x-replays`
/// counted up.
fn replay_properties(original: &BasicProperties, replays: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            if !FAILURE_HEADERS.contains(&k.as_str()) && k.as_str() != H_REPLAYS {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(ShortString::from(H_REPLAYS), AMQPValue::LongLongInt(i64::from(replays) + 1));
    original.clone().with_headers(headers)
}

/// The topology prefix of an isolated configuration (`mfe.test.x.` for `mfe.test.x.events.dlq`).
fn prefix_of(cfg: &HubConfig) -> &str {
    let default = HubConfig::default();
    cfg.dlq.strip_suffix(default.dlq.as_str()).unwrap_or("")
}

/// What one delivery of the dead-letter queue says about itself.
pub(crate) fn describe(d: &Delivery, cfg: &HubConfig, position: usize) -> DeadLetter {
    let props = &d.properties;
    let headers: BTreeMap<String, Value> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), amqp_to_json(v))).collect())
        .unwrap_or_default();
    let envelope: Value = serde_json::from_slice(&d.data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.data).into_owned()));
    let text = |name: &str| headers.get(name).and_then(Value::as_str).map(String::from);
    let number = |name: &str| headers.get(name).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    let time =
        |name: &str| text(name).and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    // Dead-lettered by the broker itself (a reject, an expiry, a quorum delivery limit): the
    // newest `x-death` entry names the queue and the reason.
    let death = headers.get("x-death").and_then(Value::as_array).and_then(|a| a.first()).cloned();
    let death_text = |k: &str| death.as_ref().and_then(|d| d.get(k)).and_then(Value::as_str).map(String::from);
    let envelope_text = |k: &str| envelope.get(k).and_then(Value::as_str).map(String::from);

    let prefix = prefix_of(cfg);
    let consumer = text(H_FAILED_CONSUMER)
        .or_else(|| {
            death_text("queue").map(|q| {
                let q = q.strip_prefix(prefix).unwrap_or(&q);
                q.strip_suffix(".events.queue").unwrap_or(q).to_string()
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let queue = text(H_FAILED_QUEUE)
        .or_else(|| death_text("queue"))
        .unwrap_or_else(|| format!("{prefix}{consumer}.events.queue"));
    let death_time = death
        .as_ref()
        .and_then(|d| d.get("time"))
        .and_then(Value::as_i64)
        .and_then(|s| Utc.timestamp_opt(s, 0).single());
    DeadLetter {
        id: props
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .or_else(|| envelope_text("id"))
            .unwrap_or_else(|| "-".into()),
        event_type: props
            .kind()
            .as_ref()
            .map(|k| k.to_string())
            .or_else(|| envelope_text("type"))
            .or_else(|| text(crate::hub::H_ORIGINAL_ROUTING_KEY))
            .unwrap_or_else(|| d.routing_key.to_string()),
        consumer,
        queue,
        reason: text(H_DEATH_REASON).or_else(|| death_text("reason")).unwrap_or_else(|| "unknown".into()),
        attempts: number(H_ATTEMPTS)
            .or_else(|| death.as_ref().and_then(|d| d.get("count")).and_then(Value::as_u64).map(|n| n as u32))
            .unwrap_or(1),
        first_failure: time(H_FIRST_FAILURE).or(death_time),
        dead_lettered_at: time(H_DEAD_LETTERED_AT).or(death_time),
        replays: number(H_REPLAYS).unwrap_or(0),
        source: props.app_id().as_ref().map(|a| a.to_string()).or_else(|| envelope_text("source")),
        correlation_id: props
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .or_else(|| envelope_text("correlationId")),
        position,
        headers,
        envelope,
    }
}

/// An AMQP header value as JSON (timestamps as seconds, byte arrays as lossy text).
pub(crate) fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => serde_json::json!(f),
        AMQPValue::Double(f) => serde_json::json!(f),
        AMQPValue::DecimalValue(d) => {
            serde_json::json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => {
            Value::Object(t.inner().iter().map(|(k, v)| (k.to_string(), amqp_to_json(v))).collect())
        }
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn long_string(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq_routes_them() {
        assert!(topic_matches("payments.#", "payments.payment.created"));
        assert!(topic_matches("#", "auth.user.login"));
        assert!(topic_matches("auth.user.*", "auth.user.login"));
        assert!(!topic_matches("auth.user.*", "auth.user.login.extra"));
        assert!(topic_matches("auth.#.login", "auth.user.login"));
        assert!(topic_matches("auth.user.login", "auth.user.login"));
        assert!(!topic_matches("auth.user.login", "auth.user.logout"));
        assert!(!topic_matches("payments.*", "auth.user"));
        assert!(topic_matches("payments.#", "payments"));
    }

    #[test]
    fn a_filter_matches_on_every_field_it_names() {
        let dl = DeadLetter {
            id: "6f1c0000-0000-4000-8000-000000000001".into(),
            event_type: "auth.user.registered".into(),
            consumer: "profile".into(),
            queue: "profile.events.queue".into(),
            reason: "boom".into(),
            attempts: 4,
            first_failure: None,
            dead_lettered_at: None,
            replays: 0,
            source: None,
            correlation_id: None,
            position: 1,
            headers: BTreeMap::new(),
            envelope: Value::Null,
        };
        assert!(DeadLetterFilter::default().matches(&dl));
        let f = |c: Option<&str>, t: Option<&str>, i: Option<&str>| DeadLetterFilter {
            consumer: c.map(String::from),
            event_type: t.map(String::from),
            id: i.map(String::from),
        };
        assert!(f(Some("profile"), Some("auth.#"), None).matches(&dl));
        assert!(!f(Some("admin"), None, None).matches(&dl));
        assert!(!f(None, Some("payments.#"), None).matches(&dl));
        assert!(f(None, None, Some("6F1C0000-0000-4000-8000-000000000001")).matches(&dl));
        assert!(!f(None, None, Some("6f1c0000")).matches(&dl), "ids match whole, never by prefix");
    }

    #[test]
    fn a_replayed_copy_loses_the_failure_headers_and_counts_the_replay() {
        let mut h = FieldTable::default();
        for k in [H_ATTEMPT, H_ATTEMPTS, H_DEATH_REASON, H_FAILED_CONSUMER, H_FAILED_QUEUE, H_FIRST_FAILURE] {
            h.insert(k.into(), long_string("x"));
        }
        h.insert("traceparent".into(), long_string("00-abc-def-01"));
        h.insert(H_REPLAYS.into(), AMQPValue::LongLongInt(1));
        let props = BasicProperties::default().with_message_id("id-1".into()).with_headers(h);
        let out = replay_properties(&props, 1);
        let keys: Vec<String> = out.headers().as_ref().unwrap().inner().keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, vec!["traceparent".to_string(), H_REPLAYS.to_string()]);
        assert_eq!(out.headers().as_ref().unwrap().inner().get(H_REPLAYS), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(out.message_id().as_ref().map(|m| m.to_string()).as_deref(), Some("id-1"));
    }

    #[test]
    fn an_isolated_configuration_derives_its_prefix_from_the_dlq_name() {
        assert_eq!(prefix_of(&HubConfig::default()), "");
        assert_eq!(prefix_of(&HubConfig::default().isolated("mfe.test.x")), "mfe.test.x.");
    }
}
