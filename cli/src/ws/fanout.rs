//! Triggered events and their delivery: a reader on every socket records when each event
//! arrives, one trigger per second goes out for `--duration` (one event with a single socket),
//! and the report gets the delivery latency and rate. With `--connections N` this is the
//! fan-out load benchmark of SPEC §8.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::probe::{create_payment, post_json, ProbeArgs, Socket, Trigger};
use crate::{
    report::{Check, Report},
    tls::ClientTls,
};

/// Where triggers go and as whom.
pub(super) struct Target<'a> {
    pub http: &'a reqwest::Client,
    pub tls: &'a ClientTls,
    pub api_url: &'a str,
    pub token: &'a str,
    /// The token's user (the `senderId` of published events).
    pub sender: Option<String>,
}

/// Other identifiers of an event (a created payment's id) → its index, for events that do not
/// carry the marker. Looked up only when the marker is missing.
pub(super) type Pending = Arc<Mutex<HashMap<String, usize>>>;

/// Deliveries observed by the readers, written without locks so that 10 000 readers woken by
/// one event do not queue behind each other: the receipt time is taken when the frame is read,
/// before anything else, and stored in the reader's own slot.
///
/// Every instant is nanoseconds since `base` (+1, so 0 means "not yet").
pub(super) struct Deliveries {
    base: Instant,
    /// Each event's marker is `{prefix}{index}`; the prefix names this run.
    prefix: String,
    /// When each event was triggered (set just before the publish or the API call).
    sent_at: Box<[AtomicU64]>,
    /// Sockets that received each event (the latest receipt is found from `arrivals` at the
    /// end: a shared maximum updated by every reader was a contended cache line per delivery).
    count: Box<[AtomicUsize]>,
    /// First receipt of event `e` on socket `r` at `r * events + e`.
    arrivals: Box<[AtomicU64]>,
    events: usize,
    closed: AtomicUsize,
    /// Identifiers other than the marker (payment ids).
    aliases: Pending,
}

impl Deliveries {
    fn new(sockets: usize, events: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self {
            base: Instant::now(),
            prefix: format!("probe-{}-", uuid::Uuid::new_v4().simple()),
            sent_at: zeros(events),
            count: (0..events).map(|_| AtomicUsize::new(0)).collect(),
            arrivals: zeros(sockets * events),
            events,
            closed: AtomicUsize::new(0),
            aliases: Arc::default(),
        }
    }

    fn marker(&self, event: usize) -> String {
        format!("{}{event}", self.prefix)
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.duration_since(self.base).as_nanos() as u64 + 1
    }

    fn triggered(&self, event: usize) {
        self.sent_at[event].store(self.stamp(Instant::now()), Ordering::Release);
    }

    /// The event a frame carries: its marker (`{prefix}{index}`), else a registered alias.
    fn event_of(&self, text: &str) -> Option<usize> {
        if let Some(at) = text.find(self.prefix.as_str()) {
            let digits = &text[at + self.prefix.len()..];
            let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
            return digits[..end].parse().ok().filter(|e| *e < self.events);
        }
        let aliases = self.aliases.lock().expect("aliases lock");
        aliases.iter().find(|(id, _)| text.contains(id.as_str())).map(|(_, e)| *e)
    }

    /// Records that socket `reader` received `event` at `at` (first receipt only).
    fn record(&self, reader: usize, event: usize, at: Instant) {
        let stamp = self.stamp(at);
        let slot = &self.arrivals[reader * self.events + event];
        if slot.compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.count[event].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Deliveries recorded, all events together.
    fn total(&self) -> usize {
        self.count.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    /// Latency of every recorded delivery (µs), and deliveries per second of each event (its
    /// receipts over the time from its trigger to its last receipt).
    fn summary(&self) -> (Histogram<u64>, Vec<f64>) {
        let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
        let mut last = vec![0u64; self.events];
        for (i, slot) in self.arrivals.iter().enumerate() {
            let at = slot.load(Ordering::Acquire);
            let sent = self.sent_at[i % self.events].load(Ordering::Acquire);
            if at != 0 && sent != 0 {
                let _ = hist.record(at.saturating_sub(sent) / 1000);
                last[i % self.events] = last[i % self.events].max(at);
            }
        }
        let rates = (0..self.events)
            .filter_map(|e| {
                let sent = self.sent_at[e].load(Ordering::Acquire);
                let span = last[e].checked_sub(sent).filter(|s| *s > 0)? as f64 / 1e9;
                Some(self.count[e].load(Ordering::Acquire) as f64 / span)
            })
            .collect();
        (hist, rates)
    }
}

/// Step 4 of the probe: readers on every socket, then one trigger per second for
/// `--duration`; pushes the delivery check (and `held` for a fan-out) onto `report`.
pub(super) async fn trigger_and_measure(
    args: &ProbeArgs,
    trigger: Trigger,
    sockets: Vec<Socket>,
    target: &Target<'_>,
    wait: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Target { http, tls, api_url, token, .. } = *target;
    let n = args.connections.max(1);
    let connected = sockets.len();
    // 4. Readers on every socket, then one trigger per second for --duration.
    let n_events = if n > 1 { args.duration.max(1) as usize } else { 1 };
    let deliveries = Arc::new(Deliveries::new(connected, n_events));
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(read_events(s, i, deliveries.clone(), trigger.message_type())))
        .collect();
    let hub = match trigger {
        Trigger::Event => Some(
            mfe_events::Hub::connect(mfe_events::HubConfig::from_env()?.with_connection_name("mfe-ws-probe"))
                .await
                .context("--trigger event publishes to RABBITMQ_URL")?,
        ),
        Trigger::Payment | Trigger::Announcement => None,
    };
    let sender = target.sender.clone().unwrap_or_default();
    let mut trigger_errors = Vec::new();
    let mut markers = Vec::new();
    let hold_until = Instant::now() + Duration::from_secs(args.duration);
    for i in 0..n_events {
        let marker = deliveries.marker(i);
        deliveries.triggered(i);
        let sent = match trigger {
            Trigger::Event => {
                let env = mfe_events::Envelope::new(
                    mfe_events::types::PAYMENTS_PAYMENT_CREATED,
                    "mfe-ws-probe",
                    json!({"senderId": sender, "probeMarker": marker, "amount": "1.00", "currency": "USD"}),
                );
                hub.as_ref().expect("hub for events").publish(&env).await.map_err(anyhow::Error::from)
            }
            Trigger::Payment => create_payment(http, tls, api_url, token, &marker, i, &deliveries.aliases).await,
            Trigger::Announcement => {
                let body =
                    json!({"title": "mfe ws probe", "message": format!("mfe ws probe {marker}"), "level": "info"});
                let url = format!("{api_url}/api/admin/announcements");
                post_json(http, tls, &url, Some(token), &body, "publishing an announcement").await.map(|_| ())
            }
        };
        match sent {
            Ok(()) => markers.push(i),
            Err(e) => trigger_errors.push(format!("{e:#}")),
        }
        if i + 1 < n_events {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Wait until every event reached every socket, or the timeout.
    let expected_each = connected;
    let deadline = Instant::now() + wait;
    loop {
        let done = markers.iter().all(|e| deliveries.count[*e].load(Ordering::Acquire) >= expected_each);
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if n > 1 {
        tokio::time::sleep_until(hold_until.max(Instant::now()).into()).await;
    }
    if let Some(hub) = hub {
        hub.close().await;
    }
    let closed_early = deliveries.closed.load(Ordering::Relaxed);
    for r in readers {
        r.abort();
    }

    let (hist, rates) = deliveries.summary();
    let expected = expected_each * markers.len();
    let total = deliveries.total();
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let deliveries_per_s = if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
    let name = match trigger {
        Trigger::Payment => "trigger-payment",
        Trigger::Event => "trigger-event",
        Trigger::Announcement => "trigger-announcement",
    };
    let ok = trigger_errors.is_empty() && total >= expected && expected > 0;
    let mut detail = format!(
        "{total}/{expected} {} deliveries ({} events × {expected_each} sockets)",
        trigger.message_type(),
        markers.len()
    );
    if let Some(e) = trigger_errors.first() {
        detail = format!("{} of {n_events} triggers failed: {e}", trigger_errors.len());
    }
    report.push(
        Check::new(if n > 1 { "fan-out" } else { name }, ok, detail)
            .metric("latency_p50_ms", pct(0.50))
            .metric("latency_p95_ms", pct(0.95))
            .metric("latency_p99_ms", pct(0.99))
            .metric("deliveries_per_s", deliveries_per_s.round()),
    );
    if n > 1 {
        report.push(Check::new(
            "held",
            closed_early == 0,
            format!("{} of {connected} sockets open after {} s", connected - closed_early, args.duration),
        ));
    }
    report.metric("latency_p50_ms", pct(0.50));
    report.metric("latency_p95_ms", pct(0.95));
    report.metric("latency_p99_ms", pct(0.99));
    report.metric("deliveries_per_s", deliveries_per_s.round());
    Ok(())
}

/// Reads socket number `reader` until it ends, recording when each probe event arrives.
async fn read_events(mut socket: Socket, reader: usize, deliveries: Arc<Deliveries>, message_type: &'static str) {
    while let Some(frame) = socket.next().await {
        // The receipt time comes first: whatever follows must not count as delivery latency.
        let now = Instant::now();
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if !text.as_str().contains(message_type) {
            continue;
        }
        if let Some(event) = deliveries.event_of(text.as_str()) {
            deliveries.record(reader, event, now);
        }
    }
    deliveries.closed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_matched_by_its_marker_and_counted_once_per_socket() {
        let d = Deliveries::new(2, 3);
        let text = format!(r#"{{"type":"payment:created","payload":{{"probeMarker":"{}"}}}}"#, d.marker(2));
        assert_eq!(d.event_of(&text), Some(2));
        assert_eq!(d.event_of(r#"{"payload":{"probeMarker":"probe-otherrun-1"}}"#), None);
        assert_eq!(d.event_of(&format!("{}7", d.prefix)), None, "no such event in this run");
        d.triggered(2);
        let at = Instant::now() + Duration::from_millis(5);
        d.record(0, 2, at);
        d.record(0, 2, at + Duration::from_secs(1));
        d.record(1, 2, at);
        assert_eq!(d.count[2].load(Ordering::Relaxed), 2);
        assert_eq!(d.total(), 2);
        let (hist, rates) = d.summary();
        assert_eq!(hist.len(), 2);
        assert!(hist.min() >= 5_000 && hist.max() < 1_000_000, "{} µs .. {} µs", hist.min(), hist.max());
        assert_eq!(rates.len(), 1);
    }

    #[test]
    fn a_delivery_without_the_marker_is_matched_by_a_registered_payment_id() {
        let d = Deliveries::new(1, 2);
        d.aliases.lock().unwrap().insert("pay-42".into(), 1);
        assert_eq!(d.event_of(r#"{"type":"payment:created","payload":{"id":"pay-42"}}"#), Some(1));
        assert_eq!(d.event_of(r#"{"type":"payment:created","payload":{"id":"pay-43"}}"#), None);
    }
}
