//! `mfe infra`: the infrastructure of SPEC §2 on one of two runtimes.
//!
//! - [`native`]: local processes from installed binaries, data under the state dir.
//! - [`docker`]: containers through the Docker API (bollard), defined by docker-compose.yml.
//!
//! Both publish the same ports on localhost, so [`health`] probes them the same way and the
//! rest of `mfe` never needs to know which runtime runs the stack. Which runtime `auto` picks,
//! and which image a docker service runs, is decided in [`choice`].

pub mod choice;
pub mod cluster;
pub mod compose;
pub mod docker;
pub mod health;
pub mod native;
pub mod nginx;
pub mod ports;
pub mod prometheus;

use crate::config::{Component, RuntimeKind};
use crate::report::{Check, Report};
use crate::Ctx;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct InfraArgs {
    #[command(subcommand)]
    pub command: InfraCommand,
}

/// Runtime selection shared by every `infra` subcommand.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArg {
    /// Which runtime runs the infrastructure (default: MFE_RUNTIME, else auto).
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
}

#[derive(Debug, Subcommand)]
pub enum InfraCommand {
    /// Start components (all when none given), wait until healthy, print the status table.
    Start {
        /// Components: auth_db payments_db admin_db profile_db legacy_db rabbitmq redis nginx.
        services: Vec<String>,
        #[command(flatten)]
        runtime: RuntimeArg,
        #[command(flatten)]
        observability: ObservabilityArg,
        #[command(flatten)]
        ha: HaArg,
    },
    /// Stop components (all when none given, Prometheus too); data is kept.
    Stop {
        services: Vec<String>,
        #[command(flatten)]
        runtime: RuntimeArg,
    },
    /// Stop then start components, keeping their data.
    Restart {
        services: Vec<String>,
        #[command(flatten)]
        runtime: RuntimeArg,
    },
    /// One row per component: state, health, ports.
    Status {
        #[command(flatten)]
        runtime: RuntimeArg,
    },
    /// Print a component's log (all components when none given).
    Logs {
        service: Option<String>,
        /// Keep following the log.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end to show first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[command(flatten)]
        runtime: RuntimeArg,
    },
    /// Stop everything and delete its data (containers, volumes, network or the state dir).
    Clean {
        /// Confirm deleting all data.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        runtime: RuntimeArg,
    },
    /// Print the RabbitMQ management URL (and open it where possible).
    Ui,
    /// Build the local images (debootstrap) that stand in for the official ones offline.
    BuildImages(docker::BuildImagesArgs),
}

/// `--observability`, shared by `mfe up` and `mfe infra start`.
#[derive(Debug, Clone, Args)]
pub struct ObservabilityArg {
    /// Also start Prometheus (127.0.0.1:PROMETHEUS_PORT, 9090) scraping /metrics of the gateway
    /// and every service; `mfe status` then shows it and its targets' health.
    #[arg(long)]
    pub observability: bool,
}

/// `--ha`, shared by `infra start` and `up`.
#[derive(Debug, Clone, Args)]
pub struct HaArg {
    /// RabbitMQ as a three-node cluster with quorum queues (native runtime; see
    /// cli/src/infra/cluster.rs for its ports). Later commands find the cluster by its data.
    #[arg(long)]
    pub ha: bool,
}

/// The observed state of one component, from either runtime.
#[derive(Debug, Clone)]
pub struct ComponentStatus {
    pub component: Component,
    /// `running`, `stopped`, `exited`, `not created`, `skipped`...
    pub state: String,
    pub healthy: bool,
    /// Health detail or the reason it is unhealthy.
    pub detail: String,
    pub ports: Vec<u16>,
    /// Figures added to the component's check.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Checks of its parts, reported after it (the HA broker's nodes and quorum queues).
    pub extra: Vec<Check>,
}

impl ComponentStatus {
    pub fn new(component: Component, state: String, healthy: bool, detail: String, ports: Vec<u16>) -> Self {
        Self { component, state, healthy, detail, ports, metrics: Default::default(), extra: Vec::new() }
    }

    pub fn check(&self) -> Check {
        let ports = self.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        let mut check = Check::new(
            self.component.name(),
            self.healthy,
            format!("{} ({}) ports {}", self.state, self.detail, ports),
        )
        .metric("ports", ports);
        check.metrics.extend(self.metrics.clone());
        check
    }

    /// The component's check followed by those of its parts.
    pub fn checks(&self) -> Vec<Check> {
        std::iter::once(self.check()).chain(self.extra.iter().cloned()).collect()
    }
}

/// A runtime chosen for this run.
pub enum Runtime {
    Native(native::Native),
    Docker(docker::Docker),
}

impl Runtime {
    /// Resolves `--runtime` / MFE_RUNTIME; `auto` picks the runtime that runs, holds the data or
    /// can start the stack ([`choice::choose_runtime`]) and says which and why in one line.
    pub async fn select(ctx: &Ctx, wanted: Option<RuntimeKind>) -> anyhow::Result<Runtime> {
        let kind = wanted.unwrap_or(ctx.config.runtime);
        match kind {
            RuntimeKind::Native => Ok(Runtime::Native(native::Native::new(&ctx.config))),
            RuntimeKind::Docker => Ok(Runtime::Docker(docker::Docker::connect(&ctx.config).await?)),
            RuntimeKind::Auto => {
                let (facts, docker) = observe_runtimes(ctx, false).await?;
                let (kind, why) = choice::choose_runtime(&facts);
                eprintln!("runtime: {} ({why})", kind_name(kind));
                Ok(match (kind, docker) {
                    (RuntimeKind::Docker, Some(d)) => Runtime::Docker(d),
                    _ => Runtime::Native(native::Native::new(&ctx.config)),
                })
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Native(_) => "native",
            Runtime::Docker(_) => "docker",
        }
    }

    pub async fn start(&self, comps: &[Component], explicit: bool) -> anyhow::Result<()> {
        match self {
            Runtime::Native(n) => n.start(comps, explicit).await,
            Runtime::Docker(d) => d.start(comps, explicit).await,
        }
    }

    pub async fn stop(&self, comps: &[Component]) -> anyhow::Result<()> {
        match self {
            Runtime::Native(n) => n.stop(comps).await,
            Runtime::Docker(d) => d.stop(comps).await,
        }
    }

    pub async fn restart(&self, comps: &[Component]) -> anyhow::Result<()> {
        self.stop(comps).await?;
        self.start(comps, true).await
    }

    pub async fn status(&self, comps: &[Component]) -> anyhow::Result<Vec<ComponentStatus>> {
        match self {
            Runtime::Native(n) => Ok(n.status(comps).await),
            Runtime::Docker(d) => d.status(comps).await,
        }
    }

    pub async fn logs(&self, comp: Option<Component>, follow: bool, tail: usize) -> anyhow::Result<()> {
        match self {
            Runtime::Native(n) => n.logs(comp, follow, tail).await,
            Runtime::Docker(d) => d.logs(comp, follow, tail).await,
        }
    }

    pub async fn clean(&self) -> anyhow::Result<()> {
        match self {
            Runtime::Native(n) => n.clean().await,
            Runtime::Docker(d) => d.clean().await,
        }
    }

    /// The variables services need to use the broker when it is the HA cluster
    /// (`RABBITMQ_URL` listing every node, `RABBITMQ_QUEUE_TYPE=quorum`); empty on one node.
    pub fn broker_env(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        match self {
            Runtime::Native(n) => Ok(n.ha_topology()?.map(|t| t.service_env()).unwrap_or_default()),
            Runtime::Docker(_) => Ok(Vec::new()),
        }
    }

    /// `base` pointed at the stack's broker as `mfe` itself uses it: unchanged on one node, the
    /// cluster's nodes and quorum queues on the HA broker (what [`Runtime::broker_env`] gives
    /// the services).
    pub fn broker_hub_config(&self, base: mfe_events::HubConfig) -> anyhow::Result<mfe_events::HubConfig> {
        match self {
            Runtime::Native(n) => Ok(match n.ha_topology()? {
                Some(t) => t.hub_config(base),
                None => base,
            }),
            Runtime::Docker(_) => Ok(base),
        }
    }
}

/// `--ha` on the docker runtime: not driven by mfe yet; one line saying what works instead.
pub fn refuse_docker_ha(rt: &Runtime) -> anyhow::Result<()> {
    if matches!(rt, Runtime::Docker(_)) {
        anyhow::bail!(
            "--ha runs on the native runtime only for now — use --runtime native, or start the cluster with `docker compose --profile ha up -d rabbitmq-1 rabbitmq-2 rabbitmq-3`"
        );
    }
    Ok(())
}

fn kind_name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Docker => "docker",
        RuntimeKind::Native => "native",
        RuntimeKind::Auto => "auto",
    }
}

/// What runtime `auto` needs to know of both runtimes, and the connected daemon if one answers.
///
/// To start (`for_clean` false) the search stops at a running native component, and asks for
/// the images only when the choice depends on them (nothing runs or holds data), which saves
/// the registry probe. To clean, both sides are always looked at.
async fn observe_runtimes(
    ctx: &Ctx,
    for_clean: bool,
) -> anyhow::Result<(choice::RuntimeFacts, Option<docker::Docker>)> {
    let native = native::Native::new(&ctx.config);
    let mut facts = choice::RuntimeFacts {
        state_dir: ctx.config.state_dir.display().to_string(),
        native_running: native.any_running().map(str::to_string),
        native_data: native.has_data(),
        docker: Err(String::new()),
    };
    if facts.native_running.is_some() && !for_clean {
        return Ok((facts, None));
    }
    let d = match docker::Docker::connect(&ctx.config).await {
        Ok(d) => d,
        Err(e) => {
            facts.docker = Err(crate::error_line(&e));
            return Ok((facts, None));
        }
    };
    let (running, has_data) = d.project_state().await?;
    let images =
        if !for_clean && !running && !has_data && !facts.native_data { d.stack_images().await? } else { Ok(()) };
    facts.docker = Ok(choice::DockerFacts { project: d.project().to_string(), running, has_data, images });
    Ok((facts, Some(d)))
}

/// `infra clean --yes`: with an explicit runtime, that one; under `auto`, every runtime that
/// runs something or holds data for this configuration ([`choice::clean_targets`]).
async fn clean(ctx: &Ctx, wanted: Option<RuntimeKind>) -> anyhow::Result<()> {
    let kind = wanted.unwrap_or(ctx.config.runtime);
    if kind != RuntimeKind::Auto {
        let rt = Runtime::select(ctx, Some(kind)).await?;
        rt.clean().await?;
        eprintln!("cleaned: every component stopped and its data removed ({} runtime)", rt.name());
        return Ok(());
    }
    let (facts, docker) = observe_runtimes(ctx, true).await?;
    clean_these(ctx, &facts, docker).await
}

async fn clean_these(ctx: &Ctx, facts: &choice::RuntimeFacts, docker: Option<docker::Docker>) -> anyhow::Result<()> {
    let targets = choice::clean_targets(facts);
    let project = facts.docker.as_ref().map(|d| d.project.clone()).unwrap_or_else(|_| ctx.config.project.clone());
    if targets.is_empty() {
        eprintln!("cleaned: nothing to remove (no native data in {}, no docker project {project})", facts.state_dir);
        return Ok(());
    }
    if targets.len() == 2 {
        eprintln!(
            "runtime: native and docker (both hold data: {} and docker project {project}; cleaning both)",
            facts.state_dir
        );
    } else {
        let (what, where_) = match targets[0] {
            RuntimeKind::Docker => ("docker", format!("docker project {project}")),
            _ => ("native", facts.state_dir.clone()),
        };
        eprintln!("runtime: {what} (the only one holding data: {where_})");
    }
    let mut docker = docker;
    for kind in targets {
        let rt = match kind {
            RuntimeKind::Docker => match docker.take() {
                Some(d) => Runtime::Docker(d),
                None => Runtime::Docker(docker::Docker::connect(&ctx.config).await?),
            },
            _ => Runtime::Native(native::Native::new(&ctx.config)),
        };
        rt.clean().await?;
        eprintln!("cleaned: every component stopped and its data removed ({} runtime)", rt.name());
    }
    Ok(())
}

/// After starting the HA broker: the line saying what services need to use it (passwords hidden).
fn print_broker_env(rt: &Runtime) -> anyhow::Result<()> {
    let env = rt.broker_env()?;
    if !env.is_empty() {
        let shown: Vec<String> = env
            .iter()
            .map(|(k, v)| {
                let v = v.split(',').map(mfe_core::redact_url_password).collect::<Vec<_>>().join(",");
                format!("{k}={v}")
            })
            .collect();
        eprintln!("rabbitmq: services use the cluster with {} (`mfe up --ha` sets them)", shown.join(" "));
    }
    Ok(())
}

/// Builds the status report of `comps` on `rt`.
/// Prometheus's row is added when it was started with `--observability` ([`prometheus`]).
pub async fn status_report(ctx: &Ctx, rt: &Runtime, comps: &[Component]) -> anyhow::Result<Report> {
    let mut report = Report::new("infra status");
    for s in rt.status(comps).await? {
        for check in s.checks() {
            report.push(check);
        }
    }
    if let Some(check) = prometheus::Prometheus::new(&ctx.config)?.check().await {
        report.push(check);
    }
    report.metric("runtime", rt.name());
    Ok(report)
}

pub async fn run(ctx: &Ctx, args: InfraArgs) -> anyhow::Result<()> {
    match args.command {
        InfraCommand::Start { services, runtime, observability, ha } => {
            let comps = Component::parse_list(&services)?;
            let mut ctx = ctx.clone();
            ctx.config.rabbitmq_ha |= ha.ha;
            let rt = Runtime::select(&ctx, runtime.runtime).await?;
            if ha.ha {
                refuse_docker_ha(&rt)?;
            }
            rt.start(&comps, !services.is_empty()).await?;
            if observability.observability {
                prometheus::Prometheus::new(&ctx.config)?.start().await?;
            }
            if comps.contains(&Component::Rabbitmq) {
                print_broker_env(&rt)?;
            }
            status_report(&ctx, &rt, &comps).await?.emit(ctx.json)
        }
        InfraCommand::Stop { services, runtime } => {
            let comps = Component::parse_list(&services)?;
            let rt = Runtime::select(ctx, runtime.runtime).await?;
            if services.is_empty() {
                prometheus::Prometheus::new(&ctx.config)?.stop();
            }
            rt.stop(&comps).await?;
            eprintln!("stopped: {}", comps.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "));
            Ok(())
        }
        InfraCommand::Restart { services, runtime } => {
            let comps = Component::parse_list(&services)?;
            let rt = Runtime::select(ctx, runtime.runtime).await?;
            rt.restart(&comps).await?;
            status_report(ctx, &rt, &comps).await?.emit(ctx.json)
        }
        InfraCommand::Status { runtime } => {
            let rt = Runtime::select(ctx, runtime.runtime).await?;
            status_report(ctx, &rt, &Component::ALL).await?.emit(ctx.json)
        }
        InfraCommand::Logs { service, follow, tail, runtime } => {
            let comp = service.as_deref().map(Component::parse).transpose()?;
            let rt = Runtime::select(ctx, runtime.runtime).await?;
            rt.logs(comp, follow, tail).await
        }
        InfraCommand::Clean { yes, runtime } => {
            anyhow::ensure!(
                yes,
                "`mfe infra clean` deletes all infrastructure data — run it again with --yes to confirm"
            );
            // Its data lives in the native state dir, which a native clean removes.
            prometheus::Prometheus::new(&ctx.config)?.stop();
            clean(ctx, runtime.runtime).await
        }
        InfraCommand::Ui => {
            let url = format!("http://127.0.0.1:{}/", ctx.config.rabbitmq_management_port);
            println!("{url}");
            eprintln!("RabbitMQ management UI: {url} (user {})", ctx.config.rabbitmq_user);
            let _ = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            Ok(())
        }
        InfraCommand::BuildImages(a) => docker::build_images(ctx, a).await,
    }
}
