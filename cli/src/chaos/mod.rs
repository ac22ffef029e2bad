//! `mfe test chaos`: a bounded, steady workload through the front door while a fault schedule
//! runs, then the [`history`] checker judges what every client saw and every database holds.
//!
//! - [`workload`]: sign-ups, payments moved through their states, profile and config changes
//!   through nginx, and one recording WebSocket client per actor;
//! - [`faults`]: the schedule (broker leader killed, a node paused, the partition where the
//!   machine allows one, the payments database restarted, replicas killed, a consumer crashed
//!   between commit and ack), each with its window;
//! - [`collect`]: the committed events and the consumers' effects, read from the databases;
//! - [`history`]: the judgement, per window.
//!
//! The suite runs against the running native stack started with `mfe up --ha`; it refuses any
//! other with one line that says what to start.

pub mod collect;
pub mod faults;
pub mod history;
pub mod partition;
pub mod workload;

use anyhow::Context as _;
use std::time::Duration;
use tokio::sync::watch;

use crate::report::{Check, Report};
use crate::Ctx;
use faults::{Fault, Injector, Outcome, Timing};
use workload::{Clock, Front};

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The shortened schedule (a few minutes): every fault, shorter holds.
    #[arg(long)]
    pub quick: bool,
    /// Signed-up customers at least (each with a WebSocket client); more when the rate needs
    /// them to stay under nginx's per-address limit.
    #[arg(long, default_value_t = 4)]
    pub users: usize,
    /// Operations per second of the workload.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

pub async fn run(ctx: &Ctx, args: ChaosArgs) -> anyhow::Result<()> {
    chaos(ctx, &args).await?.emit(ctx.json)
}

/// Runs the whole suite and returns its report.
pub async fn chaos(ctx: &Ctx, args: &ChaosArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.users > 0 && args.rate > 0, "--users and --rate must be positive");
    let cfg = &ctx.config;
    let clock = Clock::new();
    let injector = Injector::new(cfg, clock, args.rate)?;
    let timing = if args.quick { Timing::quick() } else { Timing::full() };
    let tls = args.tls.for_stack(cfg)?;
    let front =
        Front { api: format!("https://{}:{}", cfg.nginx_host, cfg.nginx_https_port), ws: cfg.ws_url.clone(), tls };
    let dbs = collect::Databases::connect(cfg).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let say = |line: String| {
        if !ctx.json {
            eprintln!("chaos: {line}");
        }
    };

    // Actors and their sockets.
    let (n_customers, n_operators) = workload::actors_for(args.rate, args.users);
    let mut customers = Vec::new();
    for n in 0..n_customers {
        customers.push(front.sign_up(&run_id, n).await.context("signing up the workload's users through nginx")?);
    }
    let operators = (n_customers..n_customers + n_operators)
        .map(|n| front.operator(&cfg.jwt_secret, &run_id, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let actors: Vec<_> = customers.iter().chain(&operators).cloned().collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sockets = Vec::new();
    for a in &actors {
        let (tx, rx) = tokio::sync::oneshot::channel();
        sockets.push(tokio::spawn(workload::watch_socket(front.clone(), a.clone(), clock, stop_rx.clone(), Some(tx))));
        tokio::time::timeout(Duration::from_secs(15), rx)
            .await
            .map_err(|_| anyhow::anyhow!("{}'s WebSocket did not connect through {} within 15 s", a.name, front.ws))?
            .ok();
    }
    say(format!(
        "{n_customers} customers and {n_operators} operators (one loopback address each), {} sockets open; workload at {} ops/s",
        actors.len(),
        args.rate
    ));
    let ops = tokio::spawn(workload::operate(front.clone(), customers, operators, args.rate, clock, stop_rx.clone()));

    // The schedule.
    let mut report = Report::new("test chaos");
    let mut windows = Vec::new();
    for fault in Fault::SCHEDULE {
        tokio::time::sleep(timing.calm).await;
        say(format!("{}: injecting", fault.name()));
        match injector.run(fault, &timing).await {
            Ok(Outcome::Ran(window, line)) => {
                say(format!("{}: {line}", fault.name()));
                report.push(
                    Check::new(format!("fault {}", fault.name()), true, line)
                        .metric("start_ms", window.start)
                        .metric("end_ms", window.end),
                );
                windows.push(window);
            }
            Ok(Outcome::NotRun(why)) => {
                say(format!("{}: not run: {why}", fault.name()));
                report.push(Check::new(format!("fault {}", fault.name()), true, format!("not run: {why}")));
            }
            Err(e) => {
                report.push(Check::new(format!("fault {}", fault.name()), false, format!("{e:#}")));
                break;
            }
        }
    }
    tokio::time::sleep(timing.calm).await;
    let _ = stop_tx.send(true);
    let recorded = ops.await.context("the workload task")?;
    let settled = dbs.settle(&clock, Duration::from_secs(3), Duration::from_secs(90)).await;
    let mut clients = Vec::new();
    for s in sockets {
        clients.push(s.await.context("a socket task")?);
    }

    // The judgement.
    let history = history::History {
        faults: windows,
        consumers: collect::consumers(),
        committed: dbs.committed(&clock, &actors).await?,
        effects: dbs.effects(&clock).await?,
        sockets: clients,
        requests: recorded.requests.clone(),
        delivery_deadline: 5_000,
        grace: 5_000,
    };
    let judgement = history::check(&history);
    let failed = recorded.requests.iter().filter(|r| !r.ok).count();
    report.push(
        Check::new(
            "workload",
            recorded.payments_created > 0 && !history.committed.is_empty(),
            format!(
                "{} requests ({failed} failed, {} ticks skipped), {} payments, {} status changes, {} events committed{}",
                recorded.requests.len(),
                recorded.skipped_ticks,
                recorded.payments_created,
                recorded.status_changes,
                history.committed.len(),
                recorded.failures.first().map(|f| format!("; first failure: {f}")).unwrap_or_default()
            ),
        )
        .metric("requests", recorded.requests.len())
        .metric("requests_failed", failed)
        .metric("events_committed", history.committed.len())
        .metric("effects", history.effects.len()),
    );
    report.push(match &settled {
        Ok(took) => Check::new(
            "settled",
            true,
            format!("outboxes drained and effects quiet {:.1} s after the workload", took.as_secs_f64()),
        ),
        Err(e) => Check::new("settled", false, format!("{e:#}")),
    });
    for v in &judgement.verdicts {
        let detail = format!(
            "lost {}, duplicated {}, unexpected {}, out of order {}, socket misses {} ({} excused), requests failed {}/{} (budget {})",
            v.events_lost, v.effects_duplicated, v.unexpected_events, v.order_violations, v.ws_missed, v.ws_excused,
            v.requests_failed, v.requests_total, v.requests_budget
        );
        let mut check = Check::new(format!("history {}", v.window), v.passed(), detail);
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(v) {
            check.metrics = m;
        }
        report.push(check);
    }
    if !judgement.findings.is_empty() {
        report.push(Check::new(
            "findings",
            false,
            format!("{} findings; first: {}", judgement.findings_total, judgement.findings.join(" | ")),
        ));
    }
    Ok(report)
}
