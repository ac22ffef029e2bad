//! `mfe`: one CLI for the mfe platform, replacing every package.json script of the old JS stack.
//!
//! # Layout
//! - `main.rs` parses arguments and maps errors to exit codes; everything else is a library so
//!   tests can call it.
//! - [`config`]: the resolved configuration (SPEC §2) and the component/service names.
//! - [`report`]: the one JSON report shape and status table every report command prints.
//! - one module per command group, each with its clap arguments beside its `run`:
//!   [`infra`], [`ssl`], [`db`], [`fixtures`], [`migrate`], [`hub_test`] (`mfe test`), [`ws`],
//!   [`stack`] (`mfe up|down|status`), [`doctor`].

pub mod config;
pub mod db;
pub mod doctor;
pub mod fixtures;
pub mod hub_test;
pub mod infra;
pub mod limits;
pub mod migrate;
pub mod pg;
pub mod proxy_test;
pub mod report;
pub mod ssl;
pub mod stack;
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
    /// More log output (-v info, -vv debug, -vvv trace).
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
    /// Bring the whole stack up: infrastructure, schemas, services, gateway.
    Up(stack::UpArgs),
    /// Stop the whole stack in reverse order.
    Down(stack::DownArgs),
    /// One table of infrastructure, services and gateway.
    Status(stack::StatusArgs),
    /// Check docker/binaries, ports, certificates, environment and connectivity.
    Doctor(doctor::DoctorArgs),
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
    mfe_kit::env::load_dotenv(cli.global.env_file.as_deref()).map_err(anyhow::Error::msg)?;
    let ctx = Ctx { json: cli.global.json, verbose: cli.global.verbose, config: config::Config::from_env()? };
    match cli.command {
        Command::Infra(a) => infra::run(&ctx, a).await,
        Command::Ssl(a) => ssl::run(&ctx, a).await,
        Command::Db(a) => db::run(&ctx, a).await,
        Command::Fixtures(a) => fixtures::run(&ctx, a).await,
        Command::Migrate(a) => migrate::run(&ctx, a).await,
        Command::Test(a) => hub_test::run(&ctx, a).await,
        Command::Ws(a) => ws::run(&ctx, a).await,
        Command::Up(a) => stack::up(&ctx, a).await,
        Command::Down(a) => stack::down(&ctx, a).await,
        Command::Status(a) => stack::status(&ctx, a).await,
        Command::Doctor(a) => doctor::run(&ctx, a).await,
        Command::Supervise(a) => stack::supervise(&ctx, a).await,
        Command::Env(a) => match a.command {
            EnvCommand::Example => {
                print!("{}", mfe_kit::env::render_env_example());
                Ok(())
            }
            EnvCommand::Show => {
                ctx.config.print_resolved();
                Ok(())
            }
        },
    }
}

/// Sets up `tracing` on stderr; `RUST_LOG` wins over `-v`.
pub fn init_logging(verbose: u8) {
    // lapin logs every connection drop at ERROR; the hub reports them once, in our own words.
    let default = match verbose {
        0 => "warn,lapin=off,pinky_swear=off,sqlx=error",
        1 => "info,lapin=warn,pinky_swear=off,sqlx=warn",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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

/// The error a command returns for a group that a later issue builds; one line, exit 1.
pub fn not_built(what: &str) -> anyhow::Error {
    anyhow::anyhow!("`mfe {what}` is not built yet in this version of mfe")
}
