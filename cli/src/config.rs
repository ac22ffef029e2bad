//! The resolved configuration of one `mfe` run (SPEC §2) and the names of things it manages.
//!
//! Values come from the environment (after `.env`) through [`mfe_core::env`] (the contract, its
//! defaults and its one parser); the services are the rows of [`mfe_core::SERVICES`]. Ports are
//! not separate settings: a database server listens on the port of its `*_DATABASE_URL`, RabbitMQ
//! on the port of `RABBITMQ_URL`, and so on, so one variable moves both the server and its clients.

use anyhow::{bail, Context};
use mfe_core::env;
use mfe_core::{redact_url_password, Service};
use std::fmt;
use std::path::{Path, PathBuf};
use url::Url;

/// One piece of infrastructure `mfe infra` manages, named as in docker-compose.yml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    AuthDb,
    PaymentsDb,
    AdminDb,
    ProfileDb,
    LegacyDb,
    Rabbitmq,
    Redis,
    Nginx,
}

impl Component {
    /// Start order: dependencies first (nginx last, it fronts the rest).
    pub const ALL: [Component; 8] = [
        Component::AuthDb,
        Component::PaymentsDb,
        Component::AdminDb,
        Component::ProfileDb,
        Component::LegacyDb,
        Component::Rabbitmq,
        Component::Redis,
        Component::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::AuthDb | Component::PaymentsDb | Component::AdminDb | Component::ProfileDb => {
                self.db_service().and_then(DbService::service).expect("a service database").spec().database
            }
            Component::LegacyDb => "legacy_db",
            Component::Rabbitmq => "rabbitmq",
            Component::Redis => "redis",
            Component::Nginx => "nginx",
        }
    }

    /// The database service a PostgreSQL component hosts, if it is one.
    pub fn db_service(self) -> Option<DbService> {
        match self {
            Component::AuthDb => Some(DbService::Auth),
            Component::PaymentsDb => Some(DbService::Payments),
            Component::AdminDb => Some(DbService::Admin),
            Component::ProfileDb => Some(DbService::Profile),
            Component::LegacyDb => Some(DbService::Legacy),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        let alias = match wanted.as_str() {
            "postgres" | "legacy" | "mfe_poc2" => "legacy_db",
            "auth" => "auth_db",
            "payments" => "payments_db",
            "admin" => "admin_db",
            "profile" => "profile_db",
            other => other,
        };
        Component::ALL.iter().copied().find(|c| c.name() == alias).ok_or_else(|| {
            anyhow::anyhow!("unknown service `{s}` — expected one of: {}", Component::ALL.map(|c| c.name()).join(", "))
        })
    }

    /// Parses a list of names; an empty list means every component.
    pub fn parse_list(names: &[String]) -> anyhow::Result<Vec<Self>> {
        if names.is_empty() {
            return Ok(Component::ALL.to_vec());
        }
        let mut out = Vec::new();
        for n in names {
            let c = Component::parse(n)?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out.sort();
        Ok(out)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A database with its own sqlx migrations under `migrations/<name>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DbService {
    Auth,
    Payments,
    Admin,
    Profile,
    Legacy,
}

impl DbService {
    /// The four split services, in migration order.
    pub const SPLIT: [DbService; 4] = [DbService::Auth, DbService::Payments, DbService::Admin, DbService::Profile];

    /// The row of the service table behind a split database; `None` for the legacy one.
    pub fn service(self) -> Option<Service> {
        match self {
            DbService::Auth => Some(Service::Auth),
            DbService::Payments => Some(Service::Payments),
            DbService::Admin => Some(Service::Admin),
            DbService::Profile => Some(Service::Profile),
            DbService::Legacy => None,
        }
    }

    pub fn name(self) -> &'static str {
        self.service().map_or("legacy", Service::name)
    }

    pub fn component(self) -> Component {
        match self {
            DbService::Auth => Component::AuthDb,
            DbService::Payments => Component::PaymentsDb,
            DbService::Admin => Component::AdminDb,
            DbService::Profile => Component::ProfileDb,
            DbService::Legacy => Component::LegacyDb,
        }
    }

    pub fn url_var(self) -> &'static str {
        self.service().map_or("LEGACY_DATABASE_URL", Service::database_var)
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        let wanted = wanted.trim_end_matches("_db");
        [DbService::Auth, DbService::Payments, DbService::Admin, DbService::Profile, DbService::Legacy]
            .into_iter()
            .find(|d| d.name() == wanted)
            .ok_or_else(|| {
                anyhow::anyhow!("unknown service `{s}` — expected one of: auth, payments, admin, profile, legacy")
            })
    }
}

impl fmt::Display for DbService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which infrastructure runtime to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// The runtime that runs, else the one holding data, else docker when every image can be had
    /// (official, pulled or `make images`), else native.
    Auto,
    /// Containers through the Docker API (bollard).
    Docker,
    /// Local processes from installed binaries.
    Native,
}

/// Connection details of one PostgreSQL server, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl PgTarget {
    pub fn parse(var: &str, url: &str) -> anyhow::Result<Self> {
        let u = Url::parse(url).with_context(|| format!("{var} is not a valid URL"))?;
        if u.scheme() != "postgres" && u.scheme() != "postgresql" {
            bail!("{var} must start with postgres:// (got {}://)", u.scheme());
        }
        let database = u.path().trim_start_matches('/').to_string();
        if database.is_empty() {
            bail!("{var} names no database (expected postgres://user:pass@host:port/dbname)");
        }
        Ok(Self {
            url: url.to_string(),
            host: u.host_str().unwrap_or("127.0.0.1").to_string(),
            port: u.port().unwrap_or(5432),
            user: if u.username().is_empty() { "postgres".into() } else { u.username().to_string() },
            password: u.password().unwrap_or("").to_string(),
            database,
        })
    }

    /// `host:port`, for error lines.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Everything an `mfe` run needs to know about the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Repository root: where migrations/, nginx/, rabbitmq/ and docker-compose.yml live.
    pub root: PathBuf,
    /// Native runtime data, logs and pid files; also the stack's service logs.
    pub state_dir: PathBuf,
    pub runtime: RuntimeKind,
    pub project: String,
    /// The first broker of `RABBITMQ_URL` (the one node of a single-node stack).
    pub rabbitmq_url: String,
    /// Every broker of the comma-separated `RABBITMQ_URL`, in order (one entry on one node).
    pub rabbitmq_urls: Vec<String>,
    /// `--ha`: RabbitMQ runs as the three-node cluster of [`crate::infra::cluster`].
    pub rabbitmq_ha: bool,
    pub rabbitmq_port: u16,
    pub rabbitmq_user: String,
    pub rabbitmq_password: String,
    pub rabbitmq_vhost: String,
    pub rabbitmq_management_port: u16,
    /// `RABBITMQ_DIST_PORT`: the Erlang distribution port of the (first) broker node; `None`
    /// derives it from the AMQP port ([`crate::infra::native::rabbitmq_dist_port`]).
    pub rabbitmq_dist_port: Option<u16>,
    pub redis_url: String,
    pub redis_port: u16,
    pub nginx_http_port: u16,
    pub nginx_https_port: u16,
    pub nginx_host: String,
    pub ssl_cert_path: PathBuf,
    pub ssl_key_path: PathBuf,
    pub jwt_secret: String,
    pub gateway_url: String,
    pub ws_url: String,
    /// Processes of every service and of the gateway (`mfe up --replicas N`; 1 by default).
    /// `mfe up` records it in `<state dir>/stack/replicas`, so the commands that follow (an
    /// nginx restart, `mfe status`, `mfe down`) see the stack that runs.
    pub app_replicas: usize,
}

/// How far apart the ports of two replicas of one process are: replica *k* (0 the first) of a
/// process on port *p* listens on *p* + 100 *k* (`mfe up --replicas 3`: auth on 3001, 3101,
/// 3201), clear of the neighbouring services' ports.
pub const REPLICA_PORT_STEP: u16 = 100;

/// The most replicas `mfe up --replicas` runs (ports stay within one thousand of the first).
pub const MAX_REPLICAS: usize = 9;

/// The base URL of replica `k` of the process at `url` (its port moved by
/// [`REPLICA_PORT_STEP`] × `k`); `var` names the variable in errors.
pub fn replica_url(var: &str, url: &str, k: usize) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    if k == 0 {
        return Ok(url.to_string());
    }
    let mut parsed = Url::parse(url).with_context(|| format!("{var} (`{url}`) is not a valid URL"))?;
    let port = parsed.port_or_known_default().with_context(|| format!("{var} (`{url}`) has no port"))?;
    let moved = u16::try_from(k)
        .ok()
        .and_then(|k| k.checked_mul(REPLICA_PORT_STEP))
        .and_then(|d| port.checked_add(d))
        .with_context(|| format!("{var}: replica {} of `{url}` would listen beyond port 65535", k + 1))?;
    parsed.set_port(Some(moved)).map_err(|()| anyhow::anyhow!("{var} (`{url}`) cannot take a port"))?;
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Where `mfe up` records the stack's replicas ([`Config::app_replicas`]).
pub fn replicas_file(state_dir: &Path) -> PathBuf {
    state_dir.join("stack/replicas")
}

/// The replicas recorded by the last `mfe up` under `state_dir`, 1 when none is.
fn recorded_replicas(state_dir: &Path) -> usize {
    std::fs::read_to_string(replicas_file(state_dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .unwrap_or(1)
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let root = find_root();
        let state_dir = absolutize(&root, Path::new(&env::get("MFE_STATE_DIR")));
        let runtime = match env::get("MFE_RUNTIME").to_ascii_lowercase().as_str() {
            "auto" => RuntimeKind::Auto,
            "docker" => RuntimeKind::Docker,
            "native" => RuntimeKind::Native,
            other => bail!(env::EnvError::new("MFE_RUNTIME", other, "auto, docker or native")),
        };
        let rabbitmq_url = env::get("RABBITMQ_URL");
        let rabbitmq_urls = mfe_events::config::parse_urls(&rabbitmq_url);
        let first_broker = rabbitmq_urls.first().cloned().unwrap_or_default();
        let amqp = Url::parse(&first_broker).context("RABBITMQ_URL is not a valid amqp:// URL")?;
        let vhost_raw = amqp.path().trim_start_matches('/');
        let rabbitmq_vhost = if vhost_raw.is_empty() || vhost_raw == "%2f" || vhost_raw == "%2F" {
            "/".to_string()
        } else {
            vhost_raw.to_string()
        };
        let redis_url = env::get("REDIS_URL");
        let redis = Url::parse(&redis_url).context("REDIS_URL is not a valid redis:// URL")?;
        Ok(Self {
            app_replicas: recorded_replicas(&state_dir),
            state_dir,
            runtime,
            project: env::get("COMPOSE_PROJECT_NAME"),
            rabbitmq_port: amqp.port().unwrap_or(5672),
            rabbitmq_user: if amqp.username().is_empty() { "guest".into() } else { amqp.username().to_string() },
            rabbitmq_password: amqp.password().unwrap_or("guest").to_string(),
            rabbitmq_vhost,
            rabbitmq_url: first_broker,
            rabbitmq_urls,
            rabbitmq_ha: false,
            rabbitmq_management_port: port_var("RABBITMQ_MANAGEMENT_PORT")?,
            rabbitmq_dist_port: env::parse_env_opt("RABBITMQ_DIST_PORT")?,
            redis_port: redis.port().unwrap_or(6379),
            redis_url,
            nginx_http_port: port_var("NGINX_HTTP_PORT")?,
            nginx_https_port: port_var("NGINX_HTTPS_PORT")?,
            nginx_host: env::get("NGINX_HOST"),
            ssl_cert_path: absolutize(&root, Path::new(&env::get("SSL_CERT_PATH"))),
            ssl_key_path: absolutize(&root, Path::new(&env::get("SSL_KEY_PATH"))),
            jwt_secret: env::get("JWT_SECRET"),
            gateway_url: env::get("GATEWAY_URL"),
            ws_url: env::get("WS_URL"),
            root,
        })
    }

    /// The PostgreSQL server behind a database service.
    pub fn pg(&self, db: DbService) -> anyhow::Result<PgTarget> {
        PgTarget::parse(db.url_var(), &env::get(db.url_var()))
    }

    /// The directory of a service's sqlx migrations.
    pub fn migrations_dir(&self, db: DbService) -> PathBuf {
        self.root.join("migrations").join(db.name())
    }

    /// The TCP ports a component listens on (first one is the health-checked one).
    pub fn ports(&self, c: Component) -> anyhow::Result<Vec<u16>> {
        Ok(match c {
            Component::Rabbitmq => vec![self.rabbitmq_port, self.rabbitmq_management_port],
            Component::Redis => vec![self.redis_port],
            Component::Nginx => vec![self.nginx_https_port, self.nginx_http_port],
            db => vec![self.pg(db.db_service().expect("every other component is a database"))?.port],
        })
    }

    /// Prints every variable with its resolved value, secrets masked.
    pub fn print_resolved(&self) {
        for v in env::VARS.iter().filter(|v| v.scope == env::Scope::Platform) {
            let value = env::get(v.name);
            let shown = if is_secret(v.name) { mask(&value) } else { redact_url_password(&value) };
            println!("{}={}", v.name, shown);
        }
    }
}

fn is_secret(name: &str) -> bool {
    name.contains("SECRET") || name.contains("DSN") || name.contains("PASSWORD")
}

fn mask(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        "********".into()
    }
}

/// A port variable whose default is in the contract table.
pub fn port_var(name: &str) -> anyhow::Result<u16> {
    let default = env::var(name).default.parse().with_context(|| format!("{name}'s default is not a port"))?;
    Ok(env::parse_env(name, default)?)
}

fn absolutize(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// The repository root: `MFE_ROOT`, else the nearest ancestor of the working directory holding
/// `docker-compose.yml` and `migrations/`, else the directory this binary was built from.
fn find_root() -> PathBuf {
    if let Some(root) = env::lookup("MFE_ROOT") {
        return PathBuf::from(root);
    }
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("docker-compose.yml").is_file() && dir.join("migrations").is_dir() {
                return dir.to_path_buf();
            }
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_listens_a_hundred_ports_further_per_replica() {
        let url = |k| replica_url("AUTH_SERVICE_URL", "http://127.0.0.1:3001/", k).unwrap();
        assert_eq!(url(0), "http://127.0.0.1:3001");
        assert_eq!(url(1), "http://127.0.0.1:3101");
        assert_eq!(url(2), "http://127.0.0.1:3201");
        let err = replica_url("GATEWAY_URL", "http://127.0.0.1:65500", 1).unwrap_err().to_string();
        assert_eq!(err, "GATEWAY_URL: replica 2 of `http://127.0.0.1:65500` would listen beyond port 65535");
    }

    #[test]
    fn the_recorded_replicas_are_read_back_and_nonsense_is_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_replicas(dir.path()), 1);
        std::fs::create_dir_all(dir.path().join("stack")).unwrap();
        for (text, n) in [("3\n", 3), ("0", 1), ("99", 1), ("x", 1)] {
            std::fs::write(dir.path().join("stack/replicas"), text).unwrap();
            assert_eq!(recorded_replicas(dir.path()), n, "{text:?}");
        }
    }

    #[test]
    fn component_names_parse_with_aliases_and_unknown_names_are_refused() {
        assert_eq!(Component::parse("auth_db").unwrap(), Component::AuthDb);
        assert_eq!(Component::parse("postgres").unwrap(), Component::LegacyDb);
        assert_eq!(Component::parse("payments-db").unwrap(), Component::PaymentsDb);
        let err = Component::parse("mongo").unwrap_err().to_string();
        assert!(err.starts_with("unknown service `mongo` — expected one of: auth_db"), "{err}");
    }

    #[test]
    fn a_postgres_url_without_database_is_refused_with_the_variable_name() {
        let err = PgTarget::parse("AUTH_DATABASE_URL", "postgres://u:p@h:1/").unwrap_err().to_string();
        assert!(err.contains("AUTH_DATABASE_URL names no database"), "{err}");
        let t = PgTarget::parse("X", "postgres://u:p@127.0.0.1:5433/payments_db").unwrap();
        assert_eq!((t.port, t.database.as_str(), t.user.as_str()), (5433, "payments_db", "u"));
    }

    #[test]
    fn url_passwords_are_redacted_for_printing() {
        assert_eq!(redact_url_password("amqp://admin:admin@h:5672/%2f"), "amqp://admin:***@h:5672/%2f");
        assert_eq!(redact_url_password("redis://h:6379"), "redis://h:6379");
    }
}
