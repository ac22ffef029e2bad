//! `mfe events`: dead letters an operator can inspect and re-drive, and a live view of events.
//!
//! - `mfe events dlq list [--consumer C] [--type T] [--json]`: id, type, consumer, reason,
//!   attempts, first failure of each message in `events.dlq`; the queue is left as it was.
//! - `mfe events dlq show ID`: everything about one dead letter (each copy, when several
//!   consumers failed the same event).
//! - `mfe events dlq replay (--id ID | --consumer C | --type T | --all) [--yes]`: back to the
//!   failing consumer's queue only, acked in the DLQ once the broker confirmed the copy; more
//!   than one named event needs `--yes`.
//! - `mfe events dlq purge [--consumer C] [--type T] [--id ID] --yes`: deletes for good.
//! - `mfe events tail [--type PATTERN].. [--count N] [--timeout S] [--json]`.
//! - `mfe events upgrade-queues [--json]`: each service queue an older version declared with
//!   other arguments is recreated as this one declares it, messages kept
//!   (`mfe_events::upgrade`); `mfe up` runs it before it starts the services.
//!
//! The AMQP work is `mfe_events::dlq` and `mfe_events::tail` (named operations on the hub; only
//! `mfe-events` speaks AMQP); this module parses, confirms and prints. `--prefix` points every
//! command at a topology under a prefix (`<prefix>.events`, `<prefix>.events.dlq`), as test
//! suites name theirs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use mfe_events::{DeadLetter, DeadLetterFilter, Hub, HubConfig, QueueUpgrade};

use crate::report::{Check, Report};
use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Work on the topology under this prefix (`PREFIX.events`, `PREFIX.events.dlq`), as test
    /// suites name theirs; default: the live one.
    #[arg(long, global = true, value_name = "PREFIX")]
    pub prefix: Option<String>,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Dead letters: list, show, replay to the consumer that failed them, purge.
    Dlq(DlqArgs),
    /// A live view of the events as they pass (a temporary queue of its own), until Ctrl-C,
    /// `--count` or `--timeout`.
    Tail(TailArgs),
    /// Recreate each service queue an older version declared with other arguments (before the
    /// single active consumer), every message kept; its consumers must be stopped. `mfe up`
    /// runs it before starting the services.
    UpgradeQueues,
}

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Every dead letter: id, type, consumer, reason, attempts, first failure.
    List(ListArgs),
    /// Everything about one dead letter: headers, envelope, where a replay sends it.
    Show {
        /// The event id, as `dlq list` shows it.
        id: String,
    },
    /// Send dead letters back to the consumer that failed them, and to no other.
    Replay(ReplayArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Only dead letters of this consumer (e.g. `profile`).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only this event type or topic pattern (e.g. `payments.#`).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub select: Selection,
    /// Show at most this many (the rest are counted).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["consumer", "event_type", "id", "all"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub select: Selection,
    /// Only the dead letter(s) of this event id.
    #[arg(long)]
    pub id: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["consumer", "event_type", "id"])]
    pub all: bool,
    /// Replay without asking, when more than one named event matches.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub select: Selection,
    /// Only the dead letter(s) of this event id.
    #[arg(long)]
    pub id: Option<String>,
    /// Confirm: the messages are gone for good.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Event type or topic pattern to show; repeat for several (default `#`, everything).
    #[arg(long = "type", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
}

pub async fn run(ctx: &Ctx, args: EventsArgs) -> anyhow::Result<()> {
    let mut cfg = HubConfig::from_env()?.with_connection_name("mfe events");
    if let Some(p) = args.prefix.as_deref().filter(|p| !p.is_empty()) {
        cfg = cfg.isolated(p);
    }
    if let EventsCommand::Tail(t) = &args.command {
        // Checked before connecting: a usage mistake needs no broker.
        if let Some(s) = t.timeout {
            anyhow::ensure!(s.is_finite() && s > 0.0, "--timeout must be a positive number of seconds, got {s}");
        }
    }
    let hub = Hub::connect(cfg).await?;
    let result = match args.command {
        EventsCommand::Dlq(d) => match d.command {
            DlqCommand::List(a) => list(ctx, &hub, a).await,
            DlqCommand::Show { id } => show(ctx, &hub, &id).await,
            DlqCommand::Replay(a) => replay(ctx, &hub, a).await,
            DlqCommand::Purge(a) => purge(ctx, &hub, a).await,
        },
        EventsCommand::Tail(a) => tail(ctx, &hub, a).await,
        EventsCommand::UpgradeQueues => upgrade_queues(&hub, args.prefix.as_deref()).await?.emit(ctx.json),
    };
    hub.close().await;
    result
}

/// Brings every service queue (under `prefix`, when given) to the arguments this version
/// declares ([`Hub::upgrade_queue`]): one check per queue, failed when its upgrade could not run.
pub async fn upgrade_queues(hub: &Hub, prefix: Option<&str>) -> anyhow::Result<Report> {
    let mut report = Report::new("events upgrade-queues");
    for sub in mfe_events::topology::service_queues() {
        let sub = match prefix.filter(|p| !p.is_empty()) {
            Some(p) => sub.isolated(p),
            None => sub,
        };
        let check = match hub.upgrade_queue(&sub).await {
            Ok(outcome) => {
                let detail = match outcome {
                    QueueUpgrade::Current { moved: 0 } => "current".to_string(),
                    QueueUpgrade::Current { moved } => {
                        format!("current; an unfinished upgrade finished, {moved} message(s) moved back")
                    }
                    QueueUpgrade::Created { .. } => "created".to_string(),
                    QueueUpgrade::Recreated { moved } => {
                        format!("recreated with a single active consumer, {moved} message(s) kept")
                    }
                };
                Check::new(&sub.queue, true, detail).metric("moved", outcome.moved())
            }
            Err(e) => Check::new(&sub.queue, false, e.to_string()),
        };
        report.push(check);
    }
    Ok(report)
}

fn filter(select: &Selection, id: Option<&str>) -> DeadLetterFilter {
    DeadLetterFilter {
        consumer: select.consumer.clone().filter(|s| !s.is_empty()),
        event_type: select.event_type.clone().filter(|s| !s.is_empty()),
        id: id.map(str::trim).filter(|s| !s.is_empty()).map(String::from),
    }
}

/// `consumer profile, type payments.#` — what a filter asks for, for messages.
pub(crate) fn describe_filter(f: &DeadLetterFilter) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &f.id {
        parts.push(format!("id {id}"));
    }
    if let Some(c) = &f.consumer {
        parts.push(format!("consumer {c}"));
    }
    if let Some(t) = &f.event_type {
        parts.push(format!("type {t}"));
    }
    parts.join(", ")
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_else(|| "unknown".into())
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// `profile 2, admin 1`.
fn per_consumer<'a>(consumers: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in consumers {
        *counts.entry(c).or_default() += 1;
    }
    counts.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
}

async fn list(ctx: &Ctx, hub: &Hub, a: ListArgs) -> anyhow::Result<()> {
    let f = filter(&a.select, None);
    let list = hub.dead_letters(&f, a.limit).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.dead_letters.is_empty() {
        if list.total == 0 {
            println!("no dead letters: {} is empty", list.queue);
        } else {
            println!("no dead letter in {} matches {} (it holds {})", list.queue, describe_filter(&f), list.total);
        }
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(vec!["id", "type", "consumer", "reason", "attempts", "first failure"]);
    for d in &list.dead_letters {
        table.add_row(vec![
            d.id.clone(),
            d.event_type.clone(),
            d.consumer.clone(),
            short(&d.reason, 80),
            d.attempts.to_string(),
            time(d.first_failure),
        ]);
    }
    println!("{table}");
    let shown = if list.truncated {
        format!(", {} shown (--limit {})", list.dead_letters.len(), a.limit)
    } else {
        String::new()
    };
    let what = if f.is_empty() { String::new() } else { format!(" matching {}", describe_filter(&f)) };
    println!("{} dead letters{what} in {} (holds {}){shown}", list.matched, list.queue, list.total);
    Ok(())
}

/// The dead letters of `id`, or the one line an unknown id gets.
async fn find(hub: &Hub, id: &str, select: Option<&Selection>) -> anyhow::Result<Vec<DeadLetter>> {
    let id = id.trim();
    anyhow::ensure!(!id.is_empty(), "give the id of a dead letter, as `mfe events dlq list` shows it");
    let f = match select {
        Some(s) => filter(s, Some(id)),
        None => DeadLetterFilter { id: Some(id.to_string()), ..Default::default() },
    };
    let list = hub.dead_letters(&f, usize::MAX).await?;
    if list.dead_letters.is_empty() {
        anyhow::bail!(
            "no dead letter matches {} in {} (it holds {}) — `mfe events dlq list` shows their ids",
            describe_filter(&f),
            list.queue,
            list.total
        );
    }
    Ok(list.dead_letters)
}

async fn show(ctx: &Ctx, hub: &Hub, id: &str) -> anyhow::Result<()> {
    let letters = find(hub, id, None).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    let mut out = String::new();
    for (i, d) in letters.iter().enumerate() {
        use std::fmt::Write as _;
        if letters.len() > 1 {
            let _ = writeln!(out, "— copy {} of {} (one per consumer that failed it)", i + 1, letters.len());
        }
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(out, "{k:<15} {v}");
        };
        line("id", &d.id);
        line("type", &d.event_type);
        line("consumer", &d.consumer);
        line("replays go to", &d.queue);
        line("reason", &d.reason);
        line("attempts", &d.attempts.to_string());
        line("first failure", &time(d.first_failure));
        line("dead-lettered", &time(d.dead_lettered_at));
        line("replayed before", &d.replays.to_string());
        line("source", d.source.as_deref().unwrap_or("-"));
        line("correlation id", d.correlation_id.as_deref().unwrap_or("-"));
        line("position", &format!("{} in {}", d.position, hub.config().dlq));
        line("headers", &serde_json::to_string(&d.headers)?);
        let _ = writeln!(out, "envelope\n{}", serde_json::to_string_pretty(&d.envelope)?);
    }
    print!("{out}");
    Ok(())
}

async fn replay(ctx: &Ctx, hub: &Hub, a: ReplayArgs) -> anyhow::Result<()> {
    let f = if a.all { DeadLetterFilter::default() } else { filter(&a.select, a.id.as_deref()) };
    // Only an id names the events: anything broader is confirmed, with what it would send.
    if a.id.is_none() && !a.yes {
        let list = hub.dead_letters(&f, usize::MAX).await?;
        let what = if f.is_empty() { String::new() } else { format!(" matching {}", describe_filter(&f)) };
        anyhow::ensure!(
            list.matched > 0,
            "no dead letter{what} in {} (it holds {}) — nothing to replay",
            list.queue,
            list.total
        );
        anyhow::bail!(
            "would replay {} dead letters{what} ({}) to the consumers that failed them; nothing sent — run it again with --yes",
            list.matched,
            per_consumer(list.dead_letters.iter().map(|d| d.consumer.as_str()))
        );
    }
    if let Some(id) = &a.id {
        // One clear line for an unknown id rather than a report of nothing.
        find(hub, id, Some(&a.select)).await?;
    }
    let r = hub.replay_dead_letters(&f).await?;
    let mut report = Report::new("events dlq replay");
    let mut consumers: BTreeMap<&str, (usize, Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for x in &r.replayed {
        let e = consumers.entry(x.consumer.as_str()).or_default();
        e.0 += 1;
        if !e.1.contains(&x.queue.as_str()) {
            e.1.push(x.queue.as_str());
        }
    }
    for x in &r.failed {
        consumers.entry(x.consumer.as_str()).or_default().2.push(x.error.as_str());
    }
    for (consumer, (ok, queues, errors)) in &consumers {
        let detail = if errors.is_empty() {
            format!("{ok} replayed to {}", queues.join(", "))
        } else {
            format!("{ok} replayed, {} left in {}: {}", errors.len(), r.queue, errors[0])
        };
        report.push(
            Check::new(format!("replay to {consumer}"), errors.is_empty(), detail)
                .metric("replayed", *ok as u64)
                .metric("failed", errors.len() as u64),
        );
    }
    if consumers.is_empty() {
        anyhow::bail!("no dead letter matches {} in {} (it holds {})", describe_filter(&f), r.queue, r.total);
    }
    report.metric("replayed", r.replayed.len() as u64);
    report.metric("failed", r.failed.len() as u64);
    report.metric("elapsed_ms", (r.elapsed_ms * 10.0).round() / 10.0);
    report.metric("replayed_ids", r.replayed.iter().map(|x| x.id.clone()).collect::<Vec<_>>());
    if !ctx.json {
        eprintln!(
            "replayed {} of {} matching dead letters in {:.0} ms; each went to its failing consumer's queue only",
            r.replayed.len(),
            r.replayed.len() + r.failed.len(),
            r.elapsed_ms
        );
    }
    report.emit(ctx.json)
}

async fn purge(ctx: &Ctx, hub: &Hub, a: PurgeArgs) -> anyhow::Result<()> {
    let f = filter(&a.select, a.id.as_deref());
    if !a.yes {
        let list = hub.dead_letters(&f, 0).await?;
        let what = if f.is_empty() { String::new() } else { format!(" matching {}", describe_filter(&f)) };
        if list.matched == 0 {
            println!("nothing to purge: no dead letter{what} in {} (it holds {})", list.queue, list.total);
            return Ok(());
        }
        anyhow::bail!(
            "`mfe events dlq purge` deletes {} dead letters{what} from {} for good — run it again with --yes to confirm",
            list.matched,
            list.queue
        );
    }
    let r = hub.purge_dead_letters(&f).await?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("purged {} dead letters from {} ({} left)", r.purged, r.queue, r.total.saturating_sub(r.purged));
    }
    Ok(())
}

async fn tail(ctx: &Ctx, hub: &Hub, a: TailArgs) -> anyhow::Result<()> {
    let mut tail = hub.tail(&a.patterns).await?;
    eprintln!(
        "tailing events matching {} on exchange {} (queue {}) — Ctrl-C to stop",
        tail.patterns().join(" "),
        hub.config().exchange,
        tail.queue()
    );
    let deadline = a.timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    let why = loop {
        if a.count.is_some_and(|n| seen >= n) {
            break "count reached";
        }
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break "interrupted",
            _ = timeout => break "timeout",
            e = tail.next() => e,
        };
        let Some(event) = event else { anyhow::bail!("the connection to RabbitMQ closed while tailing") };
        let event = event?;
        seen += 1;
        let line = if ctx.json {
            serde_json::to_string(&event)?
        } else {
            match &event.envelope {
                Some(env) => format!(
                    "{}  {:<28} {}  {}{}  {}",
                    env.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    env.event_type,
                    env.id,
                    env.source,
                    env.correlation_id.as_deref().map(|c| format!("  corr={c}")).unwrap_or_default(),
                    env.data
                ),
                None => format!(
                    "{:<28} (not an envelope) {}",
                    event.routing_key,
                    short(event.raw.as_deref().unwrap_or(""), 200)
                ),
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    };
    tail.close().await;
    eprintln!("{seen} events ({why})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_consumer_read_in_name_order() {
        assert_eq!(per_consumer(["profile", "admin", "profile"].into_iter()), "admin 1, profile 2");
    }

    #[test]
    fn long_reasons_are_cut_with_an_ellipsis() {
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("abc", 4), "abc");
    }
}
