//! The docker runtime: containers through the Docker API (bollard), defined by docker-compose.yml.
//!
//! `mfe` reads the compose file itself ([`super::compose`]) and creates the network, volumes and
//! containers in dependency order with docker compose's labels, so `docker compose ps` and
//! `docker compose down` see the same project. Published ports come from this run's
//! configuration (the port of AUTH_DATABASE_URL becomes AUTH_DB_PORT …), so the stack always
//! listens where the rest of `mfe` and the services connect. Nothing is created before every
//! image is present and every port is free.
//!
//! [`build_images`] makes local stand-ins for the official images from Debian packages
//! (scripts/build-images.sh) and loads them through the API, for machines without a registry.
//! `start` runs them by itself when an official image is absent and cannot be pulled (rules in
//! [`super::choice`]), and says so in one line: the stand-ins exist only for that case, so
//! asking for four MFE_*_IMAGE variables on top of `make images` was a step to forget.

mod images;

pub use images::build_images;
use images::local_image_for;

use crate::config::{Component, Config};
use crate::infra::choice::{self, ImageChoice, ImageFacts};
use crate::infra::compose::{parse_duration_ns, ComposeFile, PortMapping, Service, VolumeMount};
use crate::infra::{health, ports, ComponentStatus};
use anyhow::{bail, Context};
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::image::CreateImageOptions;
use bollard::models::{EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, PortBinding, ResourcesUlimits};
use bollard::network::CreateNetworkOptions;
use bollard::volume::{CreateVolumeOptions, ListVolumesOptions, RemoveVolumeOptions};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LABEL_PROJECT: &str = "com.docker.compose.project";
const LABEL_SERVICE: &str = "com.docker.compose.service";
const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";

/// A connected Docker daemon and the project of this run.
pub struct Docker {
    cfg: Config,
    api: bollard::Docker,
    project: String,
    compose: ComposeFile,
    compose_path: PathBuf,
}

/// `mfe infra build-images`.
#[derive(Debug, clap::Args)]
pub struct BuildImagesArgs {
    /// Rebuild the root filesystem and reload the images even when they exist.
    #[arg(long)]
    pub force: bool,
}

/// What a service's container looks like right now.
struct Observed {
    id: String,
    running: bool,
    state: String,
    health: Option<HealthStatusEnum>,
    exit_code: i64,
    config_hash: String,
    /// The image name the container was created from.
    image: Option<String>,
}

/// The variables docker-compose.yml leaves open, set from this run's configuration so the
/// containers publish exactly the ports the configuration's URLs name.
pub fn compose_overrides(cfg: &Config) -> anyhow::Result<HashMap<String, String>> {
    let mut vars = HashMap::new();
    for c in Component::ALL {
        if let Some(db) = c.db_service() {
            let pg = cfg.pg(db)?;
            let prefix = c.name().to_ascii_uppercase();
            vars.insert(format!("{prefix}_PORT"), pg.port.to_string());
            vars.insert(format!("{prefix}_USER"), pg.user.clone());
            vars.insert(format!("{prefix}_PASSWORD"), pg.password.clone());
        }
    }
    vars.insert("RABBITMQ_PORT".into(), cfg.rabbitmq_port.to_string());
    vars.insert("RABBITMQ_MANAGEMENT_PORT".into(), cfg.rabbitmq_management_port.to_string());
    vars.insert("RABBITMQ_USER".into(), cfg.rabbitmq_user.clone());
    vars.insert("RABBITMQ_PASSWORD".into(), cfg.rabbitmq_password.clone());
    vars.insert("REDIS_PORT".into(), cfg.redis_port.to_string());
    vars.insert("NGINX_HTTP_PORT".into(), cfg.nginx_http_port.to_string());
    vars.insert("NGINX_HTTPS_PORT".into(), cfg.nginx_https_port.to_string());
    vars.insert("NGINX_HOST".into(), cfg.nginx_host.clone());
    let ssl_dir = cfg.ssl_cert_path.parent().map(Path::to_path_buf).unwrap_or_default();
    vars.insert("MFE_SSL_DIR".into(), ssl_dir.display().to_string());
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    vars.insert("MFE_SSL_CERT_FILE".into(), file_name(&cfg.ssl_cert_path));
    vars.insert("MFE_SSL_KEY_FILE".into(), file_name(&cfg.ssl_key_path));
    vars.extend(super::nginx::docker_vars(cfg)?.into_iter().map(|(k, v)| (k.to_string(), v)));
    Ok(vars)
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// The daemon's message without bollard's wrapping.
fn docker_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

impl Docker {
    /// Connects to the daemon (DOCKER_HOST or the local socket) and reads docker-compose.yml.
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let where_ = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let hint = "start it (`sudo systemctl start docker`, or `sudo dockerd &`) or use --runtime native";
        let api = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| anyhow::anyhow!("cannot reach the Docker daemon at {where_}: {e} — {hint}"))?;
        let api = tokio::time::timeout(Duration::from_secs(5), api.negotiate_version())
            .await
            .map_err(|_| anyhow::anyhow!("the Docker daemon at {where_} did not answer within 5 s — {hint}"))?
            .map_err(|e| anyhow::anyhow!("cannot reach the Docker daemon at {where_}: {e} — {hint}"))?;
        api.ping()
            .await
            .map_err(|e| anyhow::anyhow!("the Docker daemon at {where_} did not answer a ping: {e} — {hint}"))?;
        let compose_path = cfg.root.join("docker-compose.yml");
        let overrides = compose_overrides(cfg)?;
        let lookup = move |k: &str| overrides.get(k).cloned().or_else(|| std::env::var(k).ok());
        let compose = ComposeFile::load(&compose_path, &lookup)?;
        Ok(Self { cfg: cfg.clone(), api, project: cfg.project.clone(), compose, compose_path })
    }

    fn container_name(&self, service: &str) -> String {
        match self.compose.services.get(service).and_then(|s| s.container_name.clone()) {
            Some(name) => name,
            None => format!("{}-{service}-1", self.project),
        }
    }

    fn network_name(&self, network: &str) -> String {
        format!("{}_{network}", self.project)
    }

    fn volume_name(&self, volume: &str) -> String {
        format!("{}_{volume}", self.project)
    }

    fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.compose
            .services
            .get(name)
            .with_context(|| format!("{} defines no service {name}", self.compose_path.display()))
    }

    fn config_hash(svc: &Service) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(svc).expect("a service serialises")))
    }

    async fn observe(&self, service: &str) -> anyhow::Result<Option<Observed>> {
        let name = self.container_name(service);
        let info = match self.api.inspect_container(&name, None).await {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("cannot inspect container {name}: {}", docker_message(&e))),
        };
        let state = info.state.unwrap_or_default();
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        Ok(Some(Observed {
            image: config.image,
            id: info.id.unwrap_or(name),
            running: state.running.unwrap_or(false),
            state: state.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
            health: state.health.and_then(|h| h.status),
            exit_code: state.exit_code.unwrap_or(0),
            config_hash: labels.get(LABEL_CONFIG_HASH).cloned().unwrap_or_default(),
        }))
    }

    /// True when `service`'s container exists and runs.
    pub async fn is_running(&self, service: &str) -> anyhow::Result<bool> {
        Ok(self.observe(service).await?.is_some_and(|o| o.running))
    }

    /// Runs `cmd` inside `service`'s running container (with `env` added) and streams its stdout
    /// into `out`; `Err` carries the first line the command wrote to stderr when it fails.
    pub async fn exec_to_writer(
        &self,
        service: &str,
        cmd: &[&str],
        env: &[String],
        out: &mut (dyn Write + Send),
    ) -> anyhow::Result<()> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let cname = self.container_name(service);
        let exec = self
            .api
            .create_exec(
                &cname,
                CreateExecOptions {
                    cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
                    env: Some(env.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {} in {cname}: {}", cmd[0], docker_message(&e)))?;
        let StartExecResults::Attached { mut output, .. } = self
            .api
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {} in {cname}: {}", cmd[0], docker_message(&e)))?
        else {
            bail!("cannot run {} in {cname}: the daemon did not attach its output", cmd[0]);
        };
        let mut stderr = Vec::new();
        while let Some(item) = output.next().await {
            match item.map_err(|e| anyhow::anyhow!("{} in {cname}: {}", cmd[0], docker_message(&e)))? {
                bollard::container::LogOutput::StdOut { message } => {
                    out.write_all(&message).with_context(|| format!("cannot write the output of {}", cmd[0]))?
                }
                bollard::container::LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                _ => {}
            }
        }
        let code = self
            .api
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the exit code of {} in {cname}: {}", cmd[0], docker_message(&e)))?
            .exit_code
            .unwrap_or(-1);
        if code != 0 {
            let text = String::from_utf8_lossy(&stderr);
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("no error output");
            bail!("{} in {cname} exited with code {code}: {first}", cmd[0]);
        }
        Ok(())
    }

    /// Starts `comps` and what they depend on, creating whatever is missing; waits for health.
    pub async fn start(&self, comps: &[Component], explicit: bool) -> anyhow::Result<()> {
        let mut wanted = Vec::new();
        for &c in comps {
            if !self.compose.services.contains_key(c.name()) {
                bail!("{} defines no service {c}", self.compose_path.display());
            }
            if c == Component::Nginx && !super::nginx::certificate_ready(&self.cfg, explicit)? {
                continue;
            }
            wanted.push(c.name().to_string());
        }
        let order = self.compose.start_order(&wanted)?;

        // Preflight: every image present (pulled if possible) and every port free, before
        // anything is created.
        let mut observed_all = Vec::new();
        for name in &order {
            observed_all.push(self.observe(name).await?);
        }
        let containers: Vec<Option<String>> =
            observed_all.iter().map(|o| o.as_ref().and_then(|o| o.image.clone())).collect();
        let choices = self.image_choices(&order, &containers).await?;
        let mut plan = Vec::new();
        let mut created_with = Vec::new();
        for ((name, observed), chosen) in order.iter().zip(observed_all).zip(choices) {
            // The service as it will run: with the image chosen, which the config hash covers,
            // so a container made from the local stand-in is kept while that choice holds.
            let mut svc = self.service(name)?.clone();
            if let Some(image) = chosen.image() {
                svc.image = image.to_string();
            }
            let svc = &svc;
            let hash = Self::config_hash(svc);
            let action = match &observed {
                Some(o) if o.config_hash == hash && o.running => Action::Keep,
                Some(o) if o.config_hash == hash => Action::Start,
                Some(_) => Action::Recreate,
                None => Action::Create,
            };
            if action != Action::Keep {
                for p in &svc.ports {
                    let mapping = PortMapping::parse(p)?;
                    if let Some(port) = mapping.host_port {
                        let ours = matches!(&observed, Some(o) if o.running);
                        if !ours && ports::in_use(port) {
                            bail!(
                                "{name} cannot start: {} — stop it or move {name} to another port (see .env.example)",
                                ports::describe_taken(port)
                            );
                        }
                    }
                }
                for v in &svc.volumes {
                    if let VolumeMount::Bind { source, .. } = VolumeMount::parse(v, self.root())? {
                        anyhow::ensure!(
                            source.exists(),
                            "{name} mounts {}, which does not exist — is MFE_ROOT the repository?",
                            source.display()
                        );
                    }
                }
            }
            if matches!(action, Action::Create | Action::Recreate) {
                if let Some(missing) = choice::missing_images(std::slice::from_ref(&chosen)) {
                    bail!("{name} cannot start: {missing}");
                }
                created_with.push(chosen);
            }
            plan.push((name.clone(), action, hash, svc.clone()));
        }
        if !created_with.is_empty() {
            eprintln!("{}", choice::describe_images(&created_with));
        }
        for (name, action, _, svc) in &plan {
            if matches!(action, Action::Create | Action::Recreate) {
                self.ensure_image(name, &svc.image).await?;
            }
        }

        self.ensure_network_and_volumes().await?;
        let mut started: Vec<String> = Vec::new();
        let result = async {
            for (name, action, hash, svc) in &plan {
                for (dep, healthy) in svc.depends_on.services() {
                    if healthy {
                        self.wait_healthy(&dep, Duration::from_secs(180)).await?;
                    }
                }
                match action {
                    Action::Keep => continue,
                    Action::Start => eprintln!("{name}: starting"),
                    Action::Create => eprintln!("{name}: creating"),
                    Action::Recreate => {
                        eprintln!("{name}: configuration changed, recreating (volumes are kept)");
                        self.remove_container(name).await?;
                    }
                }
                if matches!(action, Action::Create | Action::Recreate) {
                    self.create_container(name, svc, hash).await?;
                }
                let cname = self.container_name(name);
                self.api
                    .start_container(&cname, None::<StartContainerOptions<String>>)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot start container {cname}: {}", docker_message(&e)))?;
                started.push(name.clone());
            }
            for (name, _, _, _) in &plan {
                let t0 = Instant::now();
                self.wait_healthy(name, Duration::from_secs(180)).await?;
                if let Ok(c) = Component::parse(name) {
                    let detail =
                        health::wait_healthy(&self.cfg, c, Duration::from_secs(60)).await.with_context(|| {
                            format!("{name} is healthy inside its container but not on its published port")
                        })?;
                    eprintln!("{name}: healthy in {:.1} s ({detail})", t0.elapsed().as_secs_f64());
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            // Leave nothing half-started: stop what this call started (data stays in volumes).
            for name in started.iter().rev() {
                let _ = self.api.stop_container(&self.container_name(name), Some(StopContainerOptions { t: 10 })).await;
            }
            return Err(e);
        }
        Ok(())
    }

    fn root(&self) -> &Path {
        self.compose_path.parent().unwrap_or(Path::new("."))
    }

    /// Whether `image` is present locally, asked once per image.
    async fn image_present(&self, image: &str, known: &mut HashMap<String, bool>) -> anyhow::Result<bool> {
        if let Some(&p) = known.get(image) {
            return Ok(p);
        }
        let present = match self.api.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => bail!("cannot inspect image {image}: {}", docker_message(&e)),
        };
        known.insert(image.to_string(), present);
        Ok(present)
    }

    /// Whether the registry answers for `image` (its manifest, nothing downloaded). 5 s at most:
    /// a registry behind a dropping firewall would otherwise hang every start; here, offline,
    /// the daemon's DNS lookup fails in 30 ms.
    async fn registry_answers(&self, image: &str) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(5), self.api.inspect_registry_image(image, None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(docker_message(&e)),
            Err(_) => Err("the registry did not answer within 5 s".into()),
        }
    }

    /// The image each of `services` runs ([`choice::choose_image`]), in order; `containers`
    /// holds the image of each one's existing container.
    async fn image_choices(
        &self,
        services: &[String],
        containers: &[Option<String>],
    ) -> anyhow::Result<Vec<ImageChoice>> {
        let mut present = HashMap::new();
        let mut facts = Vec::new();
        for (name, container_image) in services.iter().zip(containers) {
            let svc = self.service(name)?;
            let local = local_image_for(name);
            let explicit = local.is_some_and(|l| std::env::var(l.env_var).is_ok_and(|v| !v.trim().is_empty()));
            let named_present = self.image_present(&svc.image, &mut present).await?;
            let local_present = match local {
                Some(l) => self.image_present(l.tag, &mut present).await?,
                None => false,
            };
            facts.push(ImageFacts {
                named: svc.image.clone(),
                explicit,
                named_present,
                local: local.map(|l| l.tag.to_string()),
                local_present,
                container_image: container_image.clone(),
                pullable: None,
            });
        }
        let mut ask: Vec<String> = Vec::new();
        for f in &facts {
            if choice::choose_image(f) == ImageChoice::AskRegistry && !ask.contains(&f.named) {
                ask.push(f.named.clone());
            }
        }
        let answers = futures::future::join_all(ask.iter().map(|image| self.registry_answers(image))).await;
        let answers: HashMap<String, Result<(), String>> = ask.into_iter().zip(answers).collect();
        Ok(facts
            .into_iter()
            .map(|mut f| {
                f.pullable = answers.get(&f.named).cloned();
                choice::choose_image(&f)
            })
            .collect())
    }

    /// For runtime `auto`: `Err` saying which images are missing when some component of the
    /// stack could not get one.
    pub async fn stack_images(&self) -> anyhow::Result<Result<(), String>> {
        let names: Vec<String> = Component::ALL
            .iter()
            .map(|c| c.name().to_string())
            .filter(|n| self.compose.services.contains_key(n))
            .collect();
        let mut containers = Vec::new();
        for n in &names {
            containers.push(self.observe(n).await?.and_then(|o| o.image));
        }
        let choices = self.image_choices(&names, &containers).await?;
        Ok(match choice::missing_images(&choices) {
            Some(missing) => Err(missing),
            None => Ok(()),
        })
    }

    /// The label filter that selects this compose project's objects.
    fn project_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([("label".to_string(), vec![format!("{LABEL_PROJECT}={}", self.project)])])
    }

    /// Every container of the project, running or not.
    async fn project_containers(&self) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
        self.api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: self.project_filter(),
                ..Default::default()
            }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list containers: {}", docker_message(&e)))
    }

    /// `(a container of the project runs, the project has containers or volumes)`.
    pub async fn project_state(&self) -> anyhow::Result<(bool, bool)> {
        let filter = self.project_filter();
        let containers = self.project_containers().await?;
        let running = containers.iter().any(|c| c.state.as_deref() == Some("running"));
        let volumes = self
            .api
            .list_volumes(Some(ListVolumesOptions { filters: filter }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list volumes: {}", docker_message(&e)))?;
        let has_data = !containers.is_empty() || !volumes.volumes.unwrap_or_default().is_empty();
        Ok((running, has_data))
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Makes sure `image` exists locally, pulling it with per-layer progress when it does not.
    async fn ensure_image(&self, service: &str, image: &str) -> anyhow::Result<()> {
        match self.api.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => bail!("cannot inspect image {image}: {}", docker_message(&e)),
        }
        eprintln!("{service}: pulling {image}");
        let bars = indicatif::MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let style = indicatif::ProgressStyle::with_template("{prefix:>14} {msg:<12} {bar:30} {bytes}/{total_bytes}")
            .expect("a valid template");
        let mut layers: HashMap<String, indicatif::ProgressBar> = HashMap::new();
        let mut stream =
            self.api.create_image(Some(CreateImageOptions { from_image: image, ..Default::default() }), None, None);
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(e) => {
                    bars.clear().ok();
                    bail!(
                        "image {image} for {service} is not available locally and cannot be pulled ({}) — build the \
                         local images with `make images` (used when the official ones cannot be pulled) or set \
                         MFE_*_IMAGE to an image that is present",
                        docker_message(&e)
                    );
                }
            };
            let (Some(id), Some(status)) = (info.id, info.status) else { continue };
            let bar = layers.entry(id.clone()).or_insert_with(|| {
                let b = bars.add(indicatif::ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(id.clone());
                b
            });
            bar.set_message(status.clone());
            if let Some(d) = info.progress_detail {
                if let (Some(cur), Some(total)) = (d.current, d.total) {
                    bar.set_length(total.max(0) as u64);
                    bar.set_position(cur.max(0) as u64);
                }
            }
            if status == "Pull complete" || status == "Already exists" {
                bar.finish();
                if bars.is_hidden() {
                    eprintln!("{service}: layer {id} {}", status.to_lowercase());
                }
            }
        }
        bars.clear().ok();
        eprintln!("{service}: pulled {image}");
        Ok(())
    }

    async fn ensure_network_and_volumes(&self) -> anyhow::Result<()> {
        for net in self.compose.networks.keys() {
            let name = self.network_name(net);
            match self.api.inspect_network::<String>(&name, None).await {
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => {}
                Err(e) => bail!("cannot inspect network {name}: {}", docker_message(&e)),
            }
            let labels = HashMap::from([
                (LABEL_PROJECT.to_string(), self.project.clone()),
                ("com.docker.compose.network".to_string(), net.clone()),
            ]);
            self.api
                .create_network(CreateNetworkOptions {
                    name: name.clone(),
                    driver: "bridge".to_string(),
                    check_duplicate: true,
                    labels,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create network {name}: {}", docker_message(&e)))?;
        }
        for vol in self.compose.volumes.keys() {
            let name = self.volume_name(vol);
            if self.api.inspect_volume(&name).await.is_ok() {
                continue;
            }
            let labels = HashMap::from([
                (LABEL_PROJECT.to_string(), self.project.clone()),
                ("com.docker.compose.volume".to_string(), vol.clone()),
            ]);
            self.api
                .create_volume(CreateVolumeOptions {
                    name: name.clone(),
                    driver: "local".into(),
                    labels,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create volume {name}: {}", docker_message(&e)))?;
        }
        Ok(())
    }

    async fn create_container(&self, name: &str, svc: &Service, hash: &str) -> anyhow::Result<()> {
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed: HashMap<String, HashMap<(), ()>> = HashMap::new();
        for p in &svc.ports {
            let m = PortMapping::parse(p)?;
            let key = format!("{}/{}", m.container_port, m.protocol);
            exposed.insert(key.clone(), HashMap::new());
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding { host_ip: m.host_ip.clone(), host_port: m.host_port.map(|p| p.to_string()) });
        }
        let mut binds = Vec::new();
        for v in &svc.volumes {
            let (source, target, ro) = match VolumeMount::parse(v, self.root())? {
                VolumeMount::Named { name: vol, target, read_only } => {
                    anyhow::ensure!(
                        self.compose.volumes.contains_key(&vol),
                        "{name} mounts volume {vol}, which the top-level `volumes:` does not declare"
                    );
                    (self.volume_name(&vol), target, read_only)
                }
                VolumeMount::Bind { source, target, read_only } => (source.display().to_string(), target, read_only),
            };
            binds.push(format!("{source}:{target}{}", if ro { ":ro" } else { "" }));
        }
        let networks: Vec<String> = match svc.networks.names() {
            n if n.is_empty() => vec!["default".to_string()],
            n => n,
        };
        let primary = self.network_name(&networks[0]);
        let healthcheck = match &svc.healthcheck {
            None => None,
            Some(h) => Some(HealthConfig {
                test: Some(h.test_vec()),
                interval: h.interval.as_deref().map(parse_duration_ns).transpose()?,
                timeout: h.timeout.as_deref().map(parse_duration_ns).transpose()?,
                retries: h.retries,
                start_period: h.start_period.as_deref().map(parse_duration_ns).transpose()?,
                start_interval: None,
            }),
        };
        let labels = HashMap::from([
            (LABEL_PROJECT.to_string(), self.project.clone()),
            (LABEL_SERVICE.to_string(), name.to_string()),
            ("com.docker.compose.oneoff".to_string(), "False".to_string()),
            ("com.docker.compose.container-number".to_string(), "1".to_string()),
            (LABEL_CONFIG_HASH.to_string(), hash.to_string()),
            ("com.docker.compose.project.working_dir".to_string(), self.root().display().to_string()),
            ("com.docker.compose.project.config_files".to_string(), self.compose_path.display().to_string()),
            (
                "com.docker.compose.depends_on".to_string(),
                svc.depends_on
                    .services()
                    .iter()
                    .map(|(d, h)| format!("{d}:{}:false", if *h { "service_healthy" } else { "service_started" }))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        let endpoints = HashMap::from([(
            primary.clone(),
            EndpointSettings { aliases: Some(vec![name.to_string()]), ..Default::default() },
        )]);
        let config = ContainerConfig {
            image: Some(svc.image.clone()),
            hostname: svc.hostname.clone(),
            cmd: svc.command.as_ref().map(|c| c.to_vec()),
            env: Some(svc.environment.to_vec()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            healthcheck,
            host_config: Some(HostConfig {
                port_bindings: Some(port_bindings),
                binds: Some(binds),
                network_mode: Some(primary.clone()),
                extra_hosts: Some(svc.extra_hosts.clone()),
                ulimits: Some(
                    svc.ulimits
                        .iter()
                        .map(|(name, limit)| {
                            let (soft, hard) = fit_ulimit(name, limit.limits());
                            ResourcesUlimits { name: Some(name.clone()), soft: Some(soft), hard: Some(hard) }
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            networking_config: Some(bollard::container::NetworkingConfig { endpoints_config: endpoints }),
            ..Default::default()
        };
        let cname = self.container_name(name);
        self.api
            .create_container(Some(CreateContainerOptions { name: cname.clone(), platform: None }), config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create container {cname}: {}", docker_message(&e)))?;
        for extra in networks.iter().skip(1) {
            let net = self.network_name(extra);
            self.api
                .connect_network(
                    &net,
                    bollard::network::ConnectNetworkOptions {
                        container: cname.clone(),
                        endpoint_config: EndpointSettings {
                            aliases: Some(vec![name.to_string()]),
                            ..Default::default()
                        },
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect {cname} to {net}: {}", docker_message(&e)))?;
        }
        Ok(())
    }

    async fn remove_container(&self, service: &str) -> anyhow::Result<()> {
        let cname = self.container_name(service);
        match self
            .api
            .remove_container(&cname, Some(RemoveContainerOptions { force: true, ..Default::default() }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => bail!("cannot remove container {cname}: {}", docker_message(&e)),
        }
    }

    /// Waits until the container reports healthy (or, without a health check, runs).
    async fn wait_healthy(&self, service: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(o) = self.observe(service).await? else {
                bail!("{service} has no container — run `mfe infra start {service}`");
            };
            if !o.running && (o.state == "exited" || o.state == "dead") {
                bail!(
                    "{service} exited with code {} — see `mfe infra logs {service}`: {}",
                    o.exit_code,
                    self.last_log_line(service).await
                );
            }
            match o.health {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                None | Some(HealthStatusEnum::NONE) | Some(HealthStatusEnum::EMPTY) if o.running => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    bail!(
                        "{service} is unhealthy — see `mfe infra logs {service}`: {}",
                        self.last_log_line(service).await
                    )
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{service} did not become healthy within {} s — see `mfe infra logs {service}`",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn last_log_line(&self, service: &str) -> String {
        let opts = LogsOptions::<String> { stdout: true, stderr: true, tail: "5".into(), ..Default::default() };
        let mut stream = self.api.logs(&self.container_name(service), Some(opts));
        let mut last = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            for line in chunk.to_string().lines() {
                if !line.trim().is_empty() {
                    last = line.trim().to_string();
                }
            }
        }
        last
    }

    /// Stops `comps` in reverse dependency order; containers and volumes are kept.
    pub async fn stop(&self, comps: &[Component]) -> anyhow::Result<()> {
        let mut names: Vec<String> = comps.iter().map(|c| c.name().to_string()).collect();
        names.sort_by_key(|n| std::cmp::Reverse(Component::parse(n).ok()));
        for name in names {
            let Some(o) = self.observe(&name).await? else { continue };
            if !o.running {
                continue;
            }
            eprintln!("{name}: stopping");
            self.api
                .stop_container(&o.id, Some(StopContainerOptions { t: 30 }))
                .await
                .map_err(|e| anyhow::anyhow!("cannot stop {name}: {}", docker_message(&e)))?;
        }
        Ok(())
    }

    pub async fn status(&self, comps: &[Component]) -> anyhow::Result<Vec<ComponentStatus>> {
        let mut out = Vec::new();
        for &c in comps {
            let ports = self.cfg.ports(c).unwrap_or_default();
            let (state, healthy, detail) = match self.observe(c.name()).await? {
                None if c == Component::Nginx && !self.cfg.ssl_cert_path.is_file() => {
                    ("skipped".to_string(), true, "no certificate yet: run `mfe ssl generate`".to_string())
                }
                None => ("not created".to_string(), false, "no container".to_string()),
                Some(o) => {
                    let health = o.health.map(|h| h.to_string()).filter(|h| !h.is_empty() && h != "none");
                    let healthy = o.running && health.as_deref().map(|h| h == "healthy").unwrap_or(true);
                    let state =
                        if o.running { "running".to_string() } else { format!("{} ({})", o.state, o.exit_code) };
                    (state, healthy, health.unwrap_or_else(|| "no health check".into()))
                }
            };
            out.push(ComponentStatus::new(c, state, healthy, detail, ports));
        }
        Ok(out)
    }

    /// Prints (and with `follow` keeps printing) container output, prefixed by service name when
    /// several are shown.
    pub async fn logs(&self, comp: Option<Component>, follow: bool, tail: usize) -> anyhow::Result<()> {
        let comps = match comp {
            Some(c) => vec![c],
            None => Component::ALL.to_vec(),
        };
        let mut streams = Vec::new();
        for c in &comps {
            if self.observe(c.name()).await?.is_none() {
                if comp.is_some() {
                    bail!("{c} has no container — run `mfe infra start {c}`");
                }
                continue;
            }
            let opts = LogsOptions::<String> {
                follow,
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            };
            let prefix = if comp.is_some() { String::new() } else { format!("{:<12}| ", c.name()) };
            let s = self.api.logs(&self.container_name(c.name()), Some(opts)).map(move |item| (prefix.clone(), item));
            streams.push(Box::pin(s));
        }
        let mut merged = futures::stream::select_all(streams);
        let mut stdout = std::io::stdout();
        while let Some((prefix, item)) = merged.next().await {
            let chunk = item.map_err(|e| anyhow::anyhow!("log stream broke: {}", docker_message(&e)))?;
            let text = chunk.to_string();
            for line in text.split_inclusive('\n') {
                let _ = write!(stdout, "{prefix}{line}");
            }
            let _ = stdout.flush();
        }
        Ok(())
    }

    /// Removes the project's containers, volumes and networks.
    pub async fn clean(&self) -> anyhow::Result<()> {
        let filter = self.project_filter();
        let containers = self.project_containers().await?;
        for c in containers {
            let id = c.id.unwrap_or_default();
            let name = c.names.and_then(|n| n.first().cloned()).unwrap_or_else(|| id.clone());
            eprintln!("removing container {}", name.trim_start_matches('/'));
            self.api
                .remove_container(&id, Some(RemoveContainerOptions { force: true, v: true, ..Default::default() }))
                .await
                .map_err(|e| anyhow::anyhow!("cannot remove container {name}: {}", docker_message(&e)))?;
        }
        let mut volumes: Vec<String> = self.compose.volumes.keys().map(|v| self.volume_name(v)).collect();
        let listed = self
            .api
            .list_volumes(Some(ListVolumesOptions { filters: filter.clone() }))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list volumes: {}", docker_message(&e)))?;
        for v in listed.volumes.unwrap_or_default() {
            if !volumes.contains(&v.name) {
                volumes.push(v.name);
            }
        }
        for name in volumes {
            match self.api.remove_volume(&name, Some(RemoveVolumeOptions { force: true })).await {
                Ok(()) => eprintln!("removed volume {name}"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => bail!("cannot remove volume {name}: {}", docker_message(&e)),
            }
        }
        for net in self.compose.networks.keys() {
            let name = self.network_name(net);
            match self.api.remove_network(&name).await {
                Ok(()) => eprintln!("removed network {name}"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => bail!("cannot remove network {name}: {}", docker_message(&e)),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Keep,
    Start,
    Create,
    Recreate,
}

/// A container's `nofile` limit as the daemon can grant it. Without CAP_SYS_RESOURCE (root in
/// many containers lacks it, this machine's included) no process here — dockerd and runc neither
/// — can set a hard limit above its own, and runc then refuses to start the container
/// (`error setting rlimit type 7: operation not permitted`). The daemon is local and started
/// like us, so our own hard limit is the ceiling; nginx inside works with what it gets.
fn fit_ulimit(name: &str, (soft, hard): (i64, i64)) -> (i64, i64) {
    if name != "nofile" || crate::limits::can_exceed_hard_limit() {
        return (soft, hard);
    }
    let ceiling = i64::try_from(crate::limits::nofile().1).unwrap_or(i64::MAX);
    (soft.min(ceiling), hard.min(ceiling))
}
