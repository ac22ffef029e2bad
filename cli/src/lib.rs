//! `mfe`: one CLI for the mfe platform, replacing every package.json script of the old JS stack.
//!
//! # Layout
//! - `main.rs` parses arguments and maps errors to exit codes; everything else is a library so
//!   tests can call it.
//! - [`config`]: the resolved configuration (SPEC §2) and the component/service names.
//! - [`report`]: the one JSON report shape and status table every report command prints.
//! - one module per command group, each with its clap arguments beside its `run`:
//!   [`infra`], [`ssl`], [`db`], [`fixtures`], [`migrate`], [`hub_test`] (`mfe test`), [`ws`],
//!   [`events`] (`mfe events dlq|tail`),
//!   [`stack`] (`mfe up|down|status`), [`doctor`], [`dashboard`] (`mfe dashboard`).
//! - [`tls`]: what every HTTP and WebSocket client of the CLI trusts (system store + the
//!   stack's own dev CA + `--ca`), and the line a certificate failure prints.

pub mod chaos;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod doctor;
pub mod events;
pub mod fixtures;
pub mod hub_test;
pub mod infra;
pub mod limits;
pub mod migrate;
pub mod pg;
pub mod proxy_test;
pub mod report;
pub mod security;
pub mod ssl;
pub mod stack;
pub mod tls;
pub mod ws;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The mfe platform's operations tool.
#[derive(Debug, Parser)]
#[command(name = "mfe", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Print the machine-readable result on stdout (human text goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read environment variables from this file instead of `./.env`.
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// More log output: -v the libraries' warnings and info, -vv debug, -vvv trace (RUST_LOG wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Infrastructure: databases, RabbitMQ, Redis, nginx (docker or native processes).
    Infra(infra::InfraArgs),
    /// TLS certificates for nginx.
    Ssl(ssl::SslArgs),
    /// Per-service schema migrations and backups.
    Db(db::DbArgs),
    /// Fill the legacy database with sample or generated POC-2 data.
    Fixtures(fixtures::FixturesArgs),
    /// Move data from the legacy shared database into the per-service databases.
    Migrate(migrate::MigrateArgs),
    /// Reliability and end-to-end test suites.
    Test(hub_test::TestArgs),
    /// WebSocket end-to-end probes.
    Ws(ws::WsArgs),
    /// Dead letters (list, show, replay, purge) and a live tail of events.
    Events(events::EventsArgs),
    /// Bring the whole stack up: infrastructure, schemas, services, gateway.
    Up(stack::UpArgs),
    /// Stop the whole stack in reverse order.
    Down(stack::DownArgs),
    /// One table of infrastructure, services and gateway.
    Status(stack::StatusArgs),
    /// Check docker/binaries, ports, certificates, environment and connectivity.
    Doctor(doctor::DoctorArgs),
    /// The running stack in one local web page: resources, events, metrics, migration.
    Dashboard(dashboard::DashboardArgs),
    /// Environment helpers.
    Env(EnvArgs),
    /// Run and supervise the services and gateway (started by `mfe up`).
    #[command(hide = true)]
    Supervise(stack::SuperviseArgs),
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: EnvCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Print `.env.example` (every variable with its default and meaning).
    Example,
    /// Print the resolved configuration (secrets masked).
    Show,
}

/// Everything a command needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub json: bool,
    pub verbose: u8,
    pub config: config::Config,
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    mfe_core::env::load_dotenv(cli.global.env_file.as_deref()).map_err(anyhow::Error::msg)?;
    let ctx = Ctx { json: cli.global.json, verbose: cli.global.verbose, config: config::Config::from_env()? };
    match cli.command {
        Command::Infra(a) => infra::run(&ctx, a).await,
        Command::Ssl(a) => ssl::run(&ctx, a).await,
        Command::Db(a) => db::run(&ctx, a).await,
        Command::Fixtures(a) => fixtures::run(&ctx, a).await,
        Command::Migrate(a) => migrate::run(&ctx, a).await,
        Command::Test(a) => hub_test::run(&ctx, a).await,
        Command::Ws(a) => ws::run(&ctx, a).await,
        Command::Events(a) => events::run(&ctx, a).await,
        Command::Up(a) => stack::up(&ctx, a).await,
        Command::Down(a) => stack::down(&ctx, a).await,
        Command::Status(a) => stack::status(&ctx, a).await,
        Command::Doctor(a) => doctor::run(&ctx, a).await,
        Command::Dashboard(a) => dashboard::run(&ctx, a).await,
        Command::Supervise(a) => stack::supervise(&ctx, a).await,
        Command::Env(a) => match a.command {
            EnvCommand::Example => {
                print!("{}", mfe_core::env::render_env_example());
                Ok(())
            }
            EnvCommand::Show => {
                ctx.config.print_resolved();
                Ok(())
            }
        },
    }
}

/// The log filter of a run without RUST_LOG, by the number of `-v`.
///
/// A normal run prints `mfe`'s own lines and tables and nothing from the libraries below it
/// except their errors: the event hub's reconnect warnings during the broker restart of
/// `mfe test event-hub`, its dead-lettering warning in the retry check, sqlx's slow-statement
/// warnings — each is an expected step the suite or command reports itself, in its own words.
/// `-v` shows the libraries' warnings and information, `-vv` debug, `-vvv` trace.
///
/// EnvFilter matches targets by string prefix, so `mfe=info` would also match the workspace
/// libraries `mfe_events`, `mfe_kit` and `mfe_gateway` (which `mfe test` and `mfe ws` run in
/// process): they are named again at the library level. lapin logs every connection drop at
/// ERROR and pinky_swear every dropped promise, both also reported by the hub: off unless asked.
pub fn default_log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "error,mfe=info,mfe_events=error,mfe_kit=error,mfe_gateway=error,lapin=off,pinky_swear=off",
        1 => "info,lapin=warn,pinky_swear=off,sqlx=warn",
        2 => "debug",
        _ => "trace",
    }
}

/// The filter of this run: `rust_log` (the RUST_LOG variable) when it is set and valid, else
/// [`default_log_filter`].
pub fn log_filter(verbose: u8, rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default_log_filter(verbose)))
}

/// Sets up `tracing` on stderr; `RUST_LOG` wins over `-v`.
pub fn init_logging(verbose: u8) {
    let filter = log_filter(verbose, mfe_core::env::lookup("RUST_LOG").as_deref());
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// The one line printed for a failed command: the error and its causes, joined by `: `,
/// unless the top message already says everything (then the causes are noise).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if parts.iter().any(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer collecting what the subscriber prints.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The messages that get through the filter of `-v`×`verbose` (and RUST_LOG) among one
    /// event from each kind of source `mfe` runs in process.
    fn shown(verbose: u8, rust_log: Option<&str>) -> Vec<&'static str> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(super::log_filter(verbose, rust_log))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "mfe::hub_test", "mfe-info");
            tracing::warn!(target: "mfe_events::hub", "hub-reconnect-warn");
            tracing::info!(target: "mfe_events::hub", "hub-info");
            tracing::error!(target: "mfe_events::service_link", "hub-error");
            tracing::error!(target: "lapin::io_loop", "lapin-error");
            tracing::warn!(target: "sqlx::query", "sqlx-slow-warn");
            tracing::error!(target: "sqlx::pool", "sqlx-error");
            tracing::debug!(target: "mfe_kit::cache", "kit-debug");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        [
            "mfe-info",
            "hub-reconnect-warn",
            "hub-info",
            "hub-error",
            "lapin-error",
            "sqlx-slow-warn",
            "sqlx-error",
            "kit-debug",
        ]
        .into_iter()
        .filter(|m| text.contains(m))
        .collect()
    }

    #[test]
    fn a_normal_run_shows_mfe_and_library_errors_but_no_library_warnings() {
        assert_eq!(shown(0, None), ["mfe-info", "hub-error", "sqlx-error"]);
    }

    #[test]
    fn one_v_shows_library_warnings_and_information_and_two_show_debug() {
        assert_eq!(
            shown(1, None),
            ["mfe-info", "hub-reconnect-warn", "hub-info", "hub-error", "lapin-error", "sqlx-slow-warn", "sqlx-error"]
        );
        assert!(shown(2, None).contains(&"kit-debug"));
    }

    #[test]
    fn rust_log_overrides_the_verbosity_and_an_empty_one_does_not() {
        assert_eq!(shown(0, Some("mfe_events=warn")), ["hub-reconnect-warn", "hub-error"]);
        assert_eq!(shown(2, Some("off")), Vec::<&str>::new());
        assert_eq!(shown(0, Some(" ")), shown(0, None));
    }
}
