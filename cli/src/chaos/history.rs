//! The history checker of `mfe test chaos`: reads what every client saw and every database
//! holds after a run and says, per fault window, what the platform got wrong.
//!
//! In the spirit of Jepsen's RabbitMQ checker, the suite records a [`History`] and this module
//! judges it; the two are apart so the judging can be tested with histories built by hand (a lost
//! event, a duplicated effect, an out-of-order pair) without any fault being injected.
//!
//! What is owed:
//! - every committed event (a row of a service's outbox) is applied **exactly once** by every
//!   consumer whose bindings match its type: none is *lost*, two are a *duplicated effect*;
//! - nothing is applied or received that was never committed (*unexpected*);
//! - the events of one subject (a payment) are applied and received in the order they were
//!   committed (*order violation*: a later one observed before an earlier one);
//! - every WebSocket client in an event's audience that was connected from the commit until the
//!   delivery deadline receives it (*missed*); a client that was disconnected in between is
//!   excused and counted apart, since a socket carries no replay;
//! - API requests fail only inside a fault window (plus its grace), and there at most the
//!   window's budget.
//!
//! Every finding is attributed to the window that contains the event's commit (or the failed
//! request), `steady` when none does.

use mfe_events::dlq::topic_matches;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// Milliseconds since the start of the run.
pub type Ms = u64;

/// The name findings outside every fault window are filed under.
pub const STEADY: &str = "steady";

/// One fault of the schedule: from its injection to the end of its repair.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub name: String,
    pub start: Ms,
    pub end: Ms,
    /// Failed API requests tolerated inside this window (and its grace).
    pub max_failed_requests: u64,
}

/// A consumer and the topic patterns its queue is bound with (`payments.#`, `auth.user.*`).
#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: String,
    pub patterns: Vec<String>,
    /// Event types it receives but by design does not apply (admin's audit consumer skips the
    /// audit trail's own announcements).
    pub except: Vec<String>,
}

/// An event the platform committed (an outbox row).
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: Uuid,
    pub event_type: String,
    pub at: Ms,
    /// The subject whose events must keep their order (a payment id) and this event's position
    /// in it; `None` for events with no order to keep.
    pub order: Option<(String, u64)>,
    /// The WebSocket clients that must receive it.
    pub audience: Vec<String>,
}

/// One applied effect: a consumer's row for an event (duplicates are several rows).
#[derive(Debug, Clone)]
pub struct Effect {
    pub consumer: String,
    pub event_id: Uuid,
    pub at: Ms,
}

/// What one WebSocket client saw.
#[derive(Debug, Clone, Default)]
pub struct SocketClient {
    pub name: String,
    /// Intervals during which the client had an open, authenticated socket.
    pub connected: Vec<(Ms, Ms)>,
    /// Event ids in the order the frames arrived, with their arrival time.
    pub received: Vec<(Uuid, Ms)>,
}

/// One API request of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub at: Ms,
    pub ok: bool,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub faults: Vec<FaultWindow>,
    pub consumers: Vec<Consumer>,
    pub committed: Vec<Committed>,
    pub effects: Vec<Effect>,
    pub sockets: Vec<SocketClient>,
    pub requests: Vec<Request>,
    /// How long after its commit an event must have reached every socket.
    pub delivery_deadline: Ms,
    /// How long after a fault's end its effects (failed requests) are still its own.
    pub grace: Ms,
}

/// The findings of one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub window: String,
    pub events_lost: u64,
    pub effects_duplicated: u64,
    pub unexpected_events: u64,
    pub order_violations: u64,
    pub ws_missed: u64,
    /// Deliveries owed to a client that was disconnected meanwhile: not a violation.
    pub ws_excused: u64,
    pub requests_failed: u64,
    pub requests_total: u64,
    /// The failed requests this window tolerates (0 for `steady`).
    pub requests_budget: u64,
}

impl Verdict {
    /// True when the window kept every promise.
    pub fn passed(&self) -> bool {
        self.events_lost == 0
            && self.effects_duplicated == 0
            && self.unexpected_events == 0
            && self.order_violations == 0
            && self.ws_missed == 0
            && self.requests_failed <= self.requests_budget
    }
}

/// The whole judgement: one verdict per window (`steady` first, then the schedule's order) and a
/// bounded sample of the findings, each a line that names the event and the observer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Judgement {
    pub verdicts: Vec<Verdict>,
    pub findings: Vec<String>,
    pub findings_total: u64,
}

impl Judgement {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(Verdict::passed)
    }
}

/// How many finding lines a judgement keeps.
const FINDINGS_KEPT: usize = 50;

/// Judges a history.
pub fn check(h: &History) -> Judgement {
    let mut j = Judge::new(h);
    let committed: HashMap<Uuid, &Committed> = h.committed.iter().map(|c| (c.id, c)).collect();

    // Effects: exactly once per (consumer, owed event).
    let mut applied: HashMap<(&str, Uuid), Vec<Ms>> = HashMap::new();
    for e in &h.effects {
        applied.entry((e.consumer.as_str(), e.event_id)).or_default().push(e.at);
    }
    for c in &h.committed {
        for consumer in h.consumers.iter().filter(|k| k.binds(&c.event_type)) {
            match applied.get(&(consumer.name.as_str(), c.id)).map_or(0, Vec::len) {
                0 => j.file(
                    c.at,
                    |v| v.events_lost += 1,
                    || format!("lost: {} {} never applied by {}", c.event_type, c.id, consumer.name),
                ),
                1 => {}
                n => j.file(
                    c.at,
                    |v| v.effects_duplicated += 1,
                    || format!("duplicated: {} {} applied {n} times by {}", c.event_type, c.id, consumer.name),
                ),
            }
        }
    }
    for ((consumer, id), times) in &applied {
        let owed = committed
            .get(id)
            .is_some_and(|c| h.consumers.iter().any(|k| k.name == *consumer && k.binds(&c.event_type)));
        if !owed {
            j.file(
                times[0],
                |v| v.unexpected_events += 1,
                || format!("unexpected: {consumer} applied {id}, which it was never owed"),
            );
        }
    }

    // Order per subject, for every consumer and every socket.
    let mut by_consumer: BTreeMap<&str, Vec<(Uuid, Ms)>> = BTreeMap::new();
    for e in &h.effects {
        by_consumer.entry(e.consumer.as_str()).or_default().push((e.event_id, e.at));
    }
    for (consumer, seen) in &by_consumer {
        order_findings(&mut j, &committed, consumer, seen);
    }
    for s in &h.sockets {
        order_findings(&mut j, &committed, &s.name, &s.received);
    }

    // Sockets: every owed delivery while connected; nothing foreign.
    for s in &h.sockets {
        let got: HashSet<Uuid> = s.received.iter().map(|(id, _)| *id).collect();
        for c in h.committed.iter().filter(|c| c.audience.contains(&s.name)) {
            if got.contains(&c.id) {
                continue;
            }
            let due = c.at + h.delivery_deadline;
            if s.connected.iter().any(|&(from, to)| from <= c.at && due <= to) {
                j.file(
                    c.at,
                    |v| v.ws_missed += 1,
                    || format!("missed: {} never received {} {}", s.name, c.event_type, c.id),
                );
            } else {
                j.file(c.at, |v| v.ws_excused += 1, String::new);
            }
        }
        for &(id, at) in &s.received {
            let owed = committed.get(&id).is_some_and(|c| c.audience.contains(&s.name));
            if !owed {
                j.file(
                    at,
                    |v| v.unexpected_events += 1,
                    || format!("unexpected: {} received {id}, which it was never owed", s.name),
                );
            }
        }
    }

    // Requests.
    for r in &h.requests {
        j.file(r.at, |v| v.requests_total += 1, String::new);
        if !r.ok {
            j.file(r.at, |v| v.requests_failed += 1, String::new);
        }
    }
    if let Some(steady) = j.verdicts.get(STEADY) {
        if steady.requests_failed > 0 {
            let outside: Vec<String> = h
                .requests
                .iter()
                .filter(|r| !r.ok && j.window(r.at) == STEADY)
                .take(5)
                .map(|r| {
                    let at = r.at;
                    let before = h.faults.iter().filter(|w| w.end <= at).max_by_key(|w| w.end);
                    let after =
                        before.map(|w| format!(", {} ms after {} ended", at - w.end, w.name)).unwrap_or_default();
                    format!("{:.1} s{after}", at as f64 / 1000.0)
                })
                .collect();
            j.note(format!(
                "failed requests outside every fault window: {} (at {})",
                steady.requests_failed,
                outside.join("; ")
            ));
        }
    }
    j.finish()
}

/// Files an order violation for every observation of a subject's event that comes after a later
/// event of the same subject was already observed by the same observer.
fn order_findings(j: &mut Judge<'_>, committed: &HashMap<Uuid, &Committed>, observer: &str, seen: &[(Uuid, Ms)]) {
    let mut seen: Vec<(Uuid, Ms)> = seen.to_vec();
    seen.sort_by_key(|&(_, at)| at);
    let mut first: HashSet<Uuid> = HashSet::new();
    let mut highest: HashMap<&str, (u64, Uuid)> = HashMap::new();
    for (id, _) in seen {
        // A redelivered duplicate is the duplicate check's business, not an order violation.
        if !first.insert(id) {
            continue;
        }
        let Some(c) = committed.get(&id) else { continue };
        let Some((subject, seq)) = &c.order else { continue };
        match highest.get(subject.as_str()) {
            Some(&(top, later)) if *seq < top => j.file(
                c.at,
                |v| v.order_violations += 1,
                || format!("order: {observer} saw {later} (position {top}) of {subject} before {id} (position {seq})"),
            ),
            _ => {
                highest.insert(subject, (*seq, id));
            }
        }
    }
}

impl Consumer {
    /// Whether the consumer applies an event of this type.
    pub fn binds(&self, event_type: &str) -> bool {
        !self.except.iter().any(|e| e == event_type) && self.patterns.iter().any(|p| topic_matches(p, event_type))
    }
}

/// Collects the verdicts and the finding lines while the checks run.
struct Judge<'h> {
    history: &'h History,
    verdicts: HashMap<&'h str, Verdict>,
    findings: Vec<String>,
    findings_total: u64,
}

impl<'h> Judge<'h> {
    fn new(history: &'h History) -> Self {
        let mut verdicts = HashMap::new();
        verdicts.insert(STEADY, Verdict { window: STEADY.into(), ..Verdict::default() });
        for f in &history.faults {
            verdicts.insert(
                f.name.as_str(),
                Verdict { window: f.name.clone(), requests_budget: f.max_failed_requests, ..Verdict::default() },
            );
        }
        Self { history, verdicts, findings: Vec::new(), findings_total: 0 }
    }

    /// The window a moment belongs to: the first fault whose window (with grace) holds it.
    fn window(&self, at: Ms) -> &'h str {
        self.history
            .faults
            .iter()
            .find(|f| f.start <= at && at <= f.end + self.history.grace)
            .map_or(STEADY, |f| f.name.as_str())
    }

    /// Counts a finding in its window; `line` is empty for counts that are not violations.
    fn file(&mut self, at: Ms, count: impl FnOnce(&mut Verdict), line: impl FnOnce() -> String) {
        let window = self.window(at);
        count(self.verdicts.get_mut(window).expect("every window has a verdict"));
        let line = line();
        if !line.is_empty() {
            self.note(format!("{line} [{window}]"));
        }
    }

    fn note(&mut self, line: String) {
        self.findings_total += 1;
        if self.findings.len() < FINDINGS_KEPT {
            self.findings.push(line);
        }
    }

    fn finish(mut self) -> Judgement {
        let mut verdicts = vec![self.verdicts.remove(STEADY).expect("steady verdict")];
        for f in &self.history.faults {
            if let Some(v) = self.verdicts.remove(f.name.as_str()) {
                verdicts.push(v);
            }
        }
        Judgement { verdicts, findings: self.findings, findings_total: self.findings_total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Two consumers, one socket client, a kill window from 1 000 to 2 000 ms, and a payment
    /// with three events (created, processing, completed) delivered everywhere exactly once.
    fn clean() -> History {
        let audience = vec!["ws-1".to_string()];
        let payment = |n: u128, ty: &str, at: Ms, seq: u64| Committed {
            id: id(n),
            event_type: ty.into(),
            at,
            order: Some(("p1".into(), seq)),
            audience: audience.clone(),
        };
        let committed = vec![
            payment(1, "payments.payment.created", 100, 0),
            payment(2, "payments.payment.updated", 1_200, 1),
            payment(3, "payments.payment.completed", 2_600, 2),
            Committed { id: id(4), event_type: "auth.user.registered".into(), at: 300, order: None, audience: vec![] },
        ];
        let mut effects = Vec::new();
        for c in &committed {
            effects.push(Effect { consumer: "audit".into(), event_id: c.id, at: c.at + 10 });
            if c.event_type.starts_with("auth.") {
                effects.push(Effect { consumer: "profile".into(), event_id: c.id, at: c.at + 20 });
            }
        }
        let received = committed.iter().filter(|c| !c.audience.is_empty()).map(|c| (c.id, c.at + 30)).collect();
        History {
            faults: vec![FaultWindow { name: "kill-leader".into(), start: 1_000, end: 2_000, max_failed_requests: 5 }],
            consumers: vec![
                Consumer {
                    name: "audit".into(),
                    patterns: vec!["#".into()],
                    except: vec!["admin.audit.created".into()],
                },
                Consumer { name: "profile".into(), patterns: vec!["auth.user.*".into()], except: vec![] },
            ],
            committed,
            effects,
            sockets: vec![SocketClient { name: "ws-1".into(), connected: vec![(0, 10_000)], received }],
            requests: vec![Request { at: 50, ok: true }, Request { at: 1_500, ok: false }],
            delivery_deadline: 1_000,
            grace: 500,
        }
    }

    fn verdict<'a>(j: &'a Judgement, window: &str) -> &'a Verdict {
        j.verdicts.iter().find(|v| v.window == window).unwrap()
    }

    #[test]
    fn a_clean_history_passes_with_the_failed_request_inside_its_window() {
        let j = check(&clean());
        assert!(j.passed(), "{:#?}", j);
        assert_eq!(j.findings, Vec::<String>::new());
        assert_eq!(verdict(&j, "kill-leader").requests_failed, 1);
        assert_eq!(verdict(&j, STEADY).requests_total, 1);
        assert_eq!(j.verdicts.iter().map(|v| v.window.as_str()).collect::<Vec<_>>(), [STEADY, "kill-leader"]);
    }

    #[test]
    fn a_lost_event_is_reported_in_the_window_of_its_commit() {
        let mut h = clean();
        h.effects.retain(|e| !(e.consumer == "audit" && e.event_id == id(2)));
        let j = check(&h);
        assert!(!j.passed());
        assert_eq!(verdict(&j, "kill-leader").events_lost, 1);
        assert_eq!(verdict(&j, STEADY).events_lost, 0);
        assert!(j.findings[0].starts_with("lost: payments.payment.updated"), "{:?}", j.findings);
        assert!(j.findings[0].ends_with("[kill-leader]"), "{:?}", j.findings);
    }

    #[test]
    fn a_duplicated_effect_is_reported_once_per_event_and_consumer() {
        let mut h = clean();
        h.effects.push(Effect { consumer: "profile".into(), event_id: id(4), at: 900 });
        h.effects.push(Effect { consumer: "profile".into(), event_id: id(4), at: 950 });
        let j = check(&h);
        assert_eq!(verdict(&j, STEADY).effects_duplicated, 1);
        assert!(j.findings.iter().any(|f| f.contains("applied 3 times by profile")), "{:?}", j.findings);
        assert!(!j.passed());
    }

    #[test]
    fn an_out_of_order_pair_is_reported_for_the_observer_that_saw_it() {
        let mut h = clean();
        // The socket sees "completed" before "processing".
        h.sockets[0].received = vec![(id(1), 130), (id(3), 1_230), (id(2), 2_630)];
        let j = check(&h);
        assert_eq!(verdict(&j, "kill-leader").order_violations, 1);
        assert!(
            j.findings.iter().any(|f| f.starts_with("order: ws-1 saw") && f.contains("before")),
            "{:?}",
            j.findings
        );
        // The consumers saw them in order.
        assert!(!j.findings.iter().any(|f| f.starts_with("order: audit")));
        assert!(!j.passed());
    }

    #[test]
    fn a_redelivered_duplicate_is_not_an_order_violation() {
        let mut h = clean();
        h.sockets[0].received.push((id(1), 3_000));
        let j = check(&h);
        assert_eq!(j.verdicts.iter().map(|v| v.order_violations).sum::<u64>(), 0);
        assert!(j.passed(), "{:#?}", j);
    }

    #[test]
    fn a_missed_socket_delivery_counts_only_while_the_client_was_connected() {
        let mut h = clean();
        h.sockets[0].received.retain(|(e, _)| *e != id(3));
        assert_eq!(verdict(&check(&h), STEADY).ws_missed, 1);

        // Disconnected from 3 000 to 3 200: the delivery of the event committed at 2 600 is excused.
        h.sockets[0].connected = vec![(0, 3_000), (3_200, 10_000)];
        let j = check(&h);
        assert_eq!(verdict(&j, STEADY).ws_missed, 0);
        assert_eq!(verdict(&j, STEADY).ws_excused, 1);
        assert!(j.passed(), "{:#?}", j);
    }

    #[test]
    fn an_event_nobody_committed_or_owed_is_unexpected() {
        let mut h = clean();
        h.effects.push(Effect { consumer: "audit".into(), event_id: id(99), at: 10 });
        // profile is not bound to payments.*
        h.effects.push(Effect { consumer: "profile".into(), event_id: id(1), at: 120 });
        h.sockets[0].received.push((id(4), 400));
        let j = check(&h);
        assert_eq!(verdict(&j, STEADY).unexpected_events, 3, "{:?}", j.findings);
    }

    #[test]
    fn failed_requests_outside_a_window_or_over_its_budget_fail_the_run() {
        let mut h = clean();
        h.requests.push(Request { at: 5_000, ok: false });
        let j = check(&h);
        assert_eq!(verdict(&j, STEADY).requests_failed, 1);
        assert!(!j.passed());
        // The finding says when, and how long after the last window.
        assert!(
            j.findings
                .iter()
                .any(|f| f
                    == "failed requests outside every fault window: 1 (at 5.0 s, 3000 ms after kill-leader ended)"),
            "{:?}",
            j.findings
        );

        let mut h = clean();
        h.requests.extend((0..5).map(|i| Request { at: 1_100 + i, ok: false }));
        let j = check(&h);
        assert_eq!(verdict(&j, "kill-leader").requests_failed, 6);
        assert!(!j.passed());
        // Inside the grace after the window's end, still the window's.
        let mut h = clean();
        h.requests.push(Request { at: 2_400, ok: false });
        assert_eq!(verdict(&check(&h), "kill-leader").requests_failed, 2);
    }

    #[test]
    fn the_findings_kept_are_bounded_but_all_are_counted() {
        let mut h = clean();
        h.effects.clear();
        for n in 0..200u128 {
            h.committed.push(Committed {
                id: id(1_000 + n),
                event_type: "x.y".into(),
                at: 10,
                order: None,
                audience: vec![],
            });
        }
        let j = check(&h);
        assert_eq!(j.findings.len(), FINDINGS_KEPT);
        assert_eq!(j.verdicts.iter().map(|v| v.events_lost).sum::<u64>(), 200 + 5);
        assert!(j.findings_total >= 200);
    }
}
