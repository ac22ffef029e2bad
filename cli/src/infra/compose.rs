//! The typed subset of docker-compose.yml the docker runtime understands: image, container_name,
//! hostname, command, environment, ports, volumes, healthcheck, depends_on, networks,
//! extra_hosts, ulimits — with `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` and `$$`
//! interpolated as docker compose does, and YAML merge keys (`<<: *anchor`) applied.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed, interpolated compose file.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ComposeFile {
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub networks: BTreeMap<String, Option<serde_yaml::Value>>,
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<serde_yaml::Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Service {
    pub image: String,
    #[serde(default)]
    pub container_name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub command: Option<StringOrList>,
    #[serde(default)]
    pub environment: Environment,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub depends_on: DependsOn,
    #[serde(default)]
    pub networks: NetworkList,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// `nofile: { soft: N, hard: N }` or `nofile: N`. Left out of the serialisation when empty so
    /// the configuration hash of services without limits is what it was before this field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Compose profiles the service belongs to (none: always part of the stack). Left out of the
    /// serialisation when empty, like `ulimits`, so existing configuration hashes stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
}

/// One resource limit of `ulimits:`, as compose writes it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Ulimit {
    Both(i64),
    Pair { soft: i64, hard: i64 },
}

impl Ulimit {
    /// (soft, hard).
    pub fn limits(self) -> (i64, i64) {
        match self {
            Ulimit::Both(n) => (n, n),
            Ulimit::Pair { soft, hard } => (soft, hard),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

impl StringOrList {
    /// The argument vector; a string is split on white space (no shell quoting, as in compose's
    /// simple case).
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringOrList::String(s) => s.split_whitespace().map(str::to_string).collect(),
            StringOrList::List(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Environment {
    #[default]
    None,
    Map(BTreeMap<String, Option<serde_yaml::Value>>),
    List(Vec<String>),
}

impl Environment {
    /// `KEY=value` pairs, as the Docker API takes them.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Environment::None => Vec::new(),
            Environment::List(v) => v.clone(),
            Environment::Map(m) => m
                .iter()
                .map(|(k, v)| match v {
                    None | Some(serde_yaml::Value::Null) => k.clone(),
                    Some(serde_yaml::Value::String(s)) => format!("{k}={s}"),
                    Some(other) => format!("{k}={}", scalar(other)),
                })
                .collect(),
        }
    }
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Healthcheck {
    pub test: StringOrList,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<i64>,
    #[serde(default)]
    pub start_period: Option<String>,
}

impl Healthcheck {
    /// The test as the Docker API wants it: `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    pub fn test_vec(&self) -> Vec<String> {
        match &self.test {
            StringOrList::String(s) => vec!["CMD-SHELL".into(), s.clone()],
            StringOrList::List(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DependsOn {
    #[default]
    None,
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnCondition>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DependsOnCondition {
    #[serde(default)]
    pub condition: Option<String>,
}

impl DependsOn {
    /// `(service, must be healthy)` pairs.
    pub fn services(&self) -> Vec<(String, bool)> {
        match self {
            DependsOn::None => Vec::new(),
            DependsOn::List(v) => v.iter().map(|s| (s.clone(), false)).collect(),
            DependsOn::Map(m) => {
                m.iter().map(|(s, c)| (s.clone(), c.condition.as_deref() == Some("service_healthy"))).collect()
            }
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NetworkList {
    #[default]
    None,
    List(Vec<String>),
    Map(BTreeMap<String, Option<serde_yaml::Value>>),
}

impl NetworkList {
    pub fn names(&self) -> Vec<String> {
        match self {
            NetworkList::None => Vec::new(),
            NetworkList::List(v) => v.clone(),
            NetworkList::Map(m) => m.keys().cloned().collect(),
        }
    }
}

/// One published port: `[ip:]host:container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

impl PortMapping {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (spec, protocol) = match s.split_once('/') {
            Some((a, p)) => (a, p.to_string()),
            None => (s, "tcp".to_string()),
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let port = |p: &str| p.parse::<u16>().with_context(|| format!("`{s}` is not a valid port mapping"));
        Ok(match parts.as_slice() {
            [c] => Self { host_ip: None, host_port: None, container_port: port(c)?, protocol },
            [c, h] => Self { host_ip: None, host_port: Some(port(h)?), container_port: port(c)?, protocol },
            [c, h, ip] => Self {
                host_ip: Some(ip.trim_matches(|ch| ch == '[' || ch == ']').to_string()),
                host_port: Some(port(h)?),
                container_port: port(c)?,
                protocol,
            },
            _ => bail!("`{s}` is not a valid port mapping"),
        })
    }
}

/// One volume entry: a named volume or a bind mount of a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeMount {
    Named { name: String, target: String, read_only: bool },
    Bind { source: PathBuf, target: String, read_only: bool },
}

impl VolumeMount {
    /// Parses `source:target[:ro]`; relative host paths resolve against `base` (the compose
    /// file's directory).
    pub fn parse(s: &str, base: &Path) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, ""),
            [s, t, m] => (*s, *t, *m),
            _ => bail!("volume `{s}` is not `source:target[:ro]` (anonymous volumes are not supported)"),
        };
        let read_only = mode.split(',').any(|m| m == "ro");
        let is_path = source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
        Ok(if is_path {
            let path = Path::new(source);
            let source = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
            VolumeMount::Bind { source: normalize(&source), target: target.to_string(), read_only }
        } else {
            VolumeMount::Named { name: source.to_string(), target: target.to_string(), read_only }
        })
    }
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in p.components() {
        match comp {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Parses a compose duration (`2s`, `500ms`, `1m30s`, `1h`) into nanoseconds.
pub fn parse_duration_ns(s: &str) -> anyhow::Result<i64> {
    let mut total: f64 = 0.0;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let value: f64 = num.parse().with_context(|| format!("`{s}` is not a duration"))?;
        num.clear();
        let factor = match unit.as_str() {
            "ns" => 1.0,
            "us" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => bail!("`{s}` is not a duration (unit `{unit}`)"),
        };
        total += value * factor;
    }
    if !num.is_empty() {
        bail!("`{s}` is not a duration (a unit is missing, e.g. `{s}s`)");
    }
    Ok(total as i64)
}

/// Interpolates one string as docker compose does. `lookup` gives a variable's value.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, n)| n) {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                let rest = &s[i + 2..];
                let end = rest.find('}').with_context(|| format!("unclosed `${{` in `{s}`"))?;
                let expr = &rest[..end];
                out.push_str(&expand(expr, lookup, s)?);
                // Skip past the closing brace.
                let stop = i + 2 + end;
                while let Some(&(j, _)) = chars.peek() {
                    if j > stop {
                        break;
                    }
                    chars.next();
                }
            }
            Some(n) if n == '_' || n.is_ascii_alphabetic() => {
                let mut name = String::new();
                while let Some(&(_, n)) = chars.peek() {
                    if n == '_' || n.is_ascii_alphanumeric() {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(&lookup(&name).unwrap_or_default());
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn expand(expr: &str, lookup: &dyn Fn(&str) -> Option<String>, whole: &str) -> anyhow::Result<String> {
    let name_end = expr.find(|c: char| !(c == '_' || c.is_ascii_alphanumeric())).unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_end);
    if name.is_empty() {
        bail!("`${{{expr}}}` in `{whole}` names no variable");
    }
    let value = lookup(name);
    Ok(match op {
        "" => value.unwrap_or_default(),
        _ if op.starts_with(":-") => value.filter(|v| !v.is_empty()).unwrap_or_else(|| op[2..].to_string()),
        _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
        _ if op.starts_with(":?") => match value.filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => bail!("{name} must be set: {}", &op[2..]),
        },
        _ if op.starts_with('?') => match value {
            Some(v) => v,
            None => bail!("{name} must be set: {}", &op[1..]),
        },
        _ => bail!("unsupported interpolation `${{{expr}}}` in `{whole}`"),
    })
}

fn interpolate_value(v: &mut serde_yaml::Value, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match v {
        serde_yaml::Value::String(s) => *s = interpolate(s, lookup)?,
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                interpolate_value(item, lookup)?;
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (_, item) in map.iter_mut() {
                interpolate_value(item, lookup)?;
            }
        }
        serde_yaml::Value::Tagged(t) => interpolate_value(&mut t.value, lookup)?,
        _ => {}
    }
    Ok(())
}

impl ComposeFile {
    /// Parses compose YAML text, interpolating with `lookup`.
    pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).context("not valid YAML")?;
        value.apply_merge().context("a YAML merge key (<<) is invalid")?;
        interpolate_value(&mut value, lookup)?;
        let file: ComposeFile = serde_yaml::from_value(value).context("not a compose file this tool understands")?;
        for (name, svc) in &file.services {
            for (dep, _) in svc.depends_on.services() {
                if !file.services.contains_key(&dep) {
                    bail!("service {name} depends on {dep}, which the file does not define");
                }
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, lookup).with_context(|| format!("{} is invalid", path.display()))
    }

    /// `wanted` plus everything it depends on, dependencies first (ties in `wanted` order).
    pub fn start_order(&self, wanted: &[String]) -> anyhow::Result<Vec<String>> {
        fn visit(
            file: &ComposeFile,
            name: &str,
            seen: &mut Vec<String>,
            stack: &mut Vec<String>,
        ) -> anyhow::Result<()> {
            if seen.iter().any(|s| s == name) {
                return Ok(());
            }
            if stack.iter().any(|s| s == name) {
                bail!("depends_on forms a cycle through {name}");
            }
            let svc =
                file.services.get(name).with_context(|| format!("docker-compose.yml defines no service {name}"))?;
            stack.push(name.to_string());
            for (dep, _) in svc.depends_on.services() {
                visit(file, &dep, seen, stack)?;
            }
            stack.pop();
            seen.push(name.to_string());
            Ok(())
        }
        let mut seen = Vec::new();
        for w in wanted {
            visit(self, w, &mut seen, &mut Vec::new())?;
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn interpolation_follows_compose_rules_for_defaults_and_escapes() {
        let lookup = env(&[("SET", "x"), ("EMPTY", "")]);
        let i = |s: &str| interpolate(s, &lookup).unwrap();
        assert_eq!(i("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}/${UNSET-d}"), "x/d/d//d");
        assert_eq!(i("$$HOME and $SET and ${SET}"), "$HOME and x and x");
        assert_eq!(i("127.0.0.1:${PORT:-5432}:5432"), "127.0.0.1:5432:5432");
        let err = interpolate("${NEED:?set it please}", &lookup).unwrap_err().to_string();
        assert!(err.contains("NEED must be set: set it please"), "{err}");
    }

    #[test]
    fn port_mappings_parse_with_and_without_address_and_protocol() {
        let p = PortMapping::parse("127.0.0.1:25432:5432").unwrap();
        assert_eq!((p.host_ip.as_deref(), p.host_port, p.container_port), (Some("127.0.0.1"), Some(25432), 5432));
        let p = PortMapping::parse("8080:80/udp").unwrap();
        assert_eq!((p.host_ip, p.host_port, p.container_port, p.protocol.as_str()), (None, Some(8080), 80, "udp"));
        assert!(PortMapping::parse("80:http").is_err());
    }

    #[test]
    fn durations_parse_in_compose_units() {
        assert_eq!(parse_duration_ns("2s").unwrap(), 2_000_000_000);
        assert_eq!(parse_duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration_ns("250ms").unwrap(), 250_000_000);
        assert!(parse_duration_ns("5").is_err());
    }

    #[test]
    fn the_repository_compose_file_defines_every_component_with_health_checks_in_dependency_order() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let file = ComposeFile::load(&path, &env(&[("AUTH_DB_PORT", "35432")])).unwrap();
        for c in crate::config::Component::ALL {
            let svc = file.services.get(c.name()).unwrap_or_else(|| panic!("{c} missing"));
            assert!(svc.healthcheck.is_some(), "{c} has no healthcheck");
            assert_eq!(svc.networks.names(), vec!["mfe-network".to_string()], "{c}");
        }
        assert_eq!(file.services["auth_db"].ports, vec!["127.0.0.1:35432:5432".to_string()]);
        assert_eq!(file.services["auth_db"].image, "postgres:15");
        let legacy = file.services["legacy_db"].environment.to_vec();
        assert!(legacy.contains(&"POSTGRES_DB=mfe_poc2".to_string()), "{legacy:?}");
        let order = file.start_order(&["nginx".to_string()]).unwrap();
        assert_eq!(order.last().map(String::as_str), Some("nginx"));
        assert!(order.contains(&"rabbitmq".to_string()) && order.contains(&"redis".to_string()));
        let pg_test = file.services["auth_db"].healthcheck.as_ref().unwrap().test_vec();
        assert!(pg_test[1].contains("${POSTGRES_USER}"), "$$ escapes survive for the container shell: {pg_test:?}");
    }

    #[test]
    fn the_ha_profile_defines_three_clustered_nodes_sharing_one_cookie_and_an_import_once_they_are_healthy() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let file =
            ComposeFile::load(&path, &env(&[("RABBITMQ_ERLANG_COOKIE", "c00kie"), ("RABBITMQ_HA_PORT_2", "35673")]))
                .unwrap();
        let nodes = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"];
        for (k, name) in nodes.iter().enumerate() {
            let svc = &file.services[*name];
            assert_eq!(svc.profiles, vec!["ha".to_string()], "{name}");
            assert_eq!(svc.hostname.as_deref(), Some(*name), "the node name rabbit@{name} needs a fixed host name");
            let env = svc.environment.to_vec();
            assert!(
                env.iter()
                    .any(|e| e.starts_with("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=") && e.ends_with("-setcookie c00kie")),
                "{name}: {env:?}"
            );
            assert!(env.contains(&"RABBITMQ_CTL_ERL_ARGS=-setcookie c00kie".to_string()), "{name}: {env:?}");
            assert!(svc.healthcheck.is_some(), "{name}");
            let mounts: Vec<VolumeMount> =
                svc.volumes.iter().map(|v| VolumeMount::parse(v, Path::new("/r")).unwrap()).collect();
            assert!(
                mounts.iter().any(|m| matches!(m, VolumeMount::Bind { source, target, .. }
                    if source.ends_with("docker/rabbitmq-ha.conf") && target == "/etc/rabbitmq/conf.d/20-mfe.conf")),
                "{name}: {mounts:?}"
            );
            assert!(
                mounts.iter().any(
                    |m| matches!(m, VolumeMount::Named { name: v, .. } if *v == format!("rabbitmq_ha_{}_data", k + 1))
                ),
                "{name} keeps its own data: {mounts:?}"
            );
            assert!(
                !mounts
                    .iter()
                    .any(|m| matches!(m, VolumeMount::Bind { source, .. } if source.ends_with("definitions.json"))),
                "{name}"
            );
        }
        assert_eq!(file.services["rabbitmq-2"].ports[0], "127.0.0.1:35673:5672");
        // Nodes 2 and 3 join node 1 once it answers; the queues come once all three do.
        assert_eq!(file.start_order(&["rabbitmq-2".into()]).unwrap(), vec!["rabbitmq-1", "rabbitmq-2"]);
        let init = &file.services["rabbitmq-ha-init"];
        let deps: Vec<(String, bool)> = init.depends_on.services();
        assert_eq!(deps, nodes.iter().map(|n| (n.to_string(), true)).collect::<Vec<_>>());
        let cmd = init.command.as_ref().unwrap().to_vec();
        assert_eq!(cmd.last().map(String::as_str), Some("/etc/rabbitmq/definitions-ha.json"), "{cmd:?}");
        assert!(init.volumes.iter().any(|v| v.starts_with("./rabbitmq/definitions-ha.json:")), "{:?}", init.volumes);
        // The single-node stack is untouched: its broker is in no profile and loads the classic topology.
        assert!(file.services["rabbitmq"].profiles.is_empty());
        let conf =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/rabbitmq-ha.conf")).unwrap();
        for n in nodes {
            assert!(conf.contains(&format!("= rabbit@{n}\n")), "docker/rabbitmq-ha.conf lists {n}");
        }
        assert!(conf.contains("cluster_partition_handling = pause_minority"));
    }

    #[test]
    fn every_postgres_container_runs_with_the_logical_replication_settings_of_the_native_runtime() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let file = ComposeFile::load(&path, &env(&[])).unwrap();
        for c in crate::config::Component::ALL.into_iter().filter(|c| c.db_service().is_some()) {
            let cmd = file.services[c.name()].command.as_ref().map(|c| c.to_vec()).unwrap_or_default();
            assert_eq!(cmd.first().map(String::as_str), Some("postgres"), "{c}: {cmd:?}");
            let settings: Vec<&str> = cmd.iter().skip(1).filter(|a| *a != "-c").map(String::as_str).collect();
            assert_eq!(settings, crate::infra::native::LOGICAL_REPLICATION_SETTINGS, "{c}");
        }
    }
}
