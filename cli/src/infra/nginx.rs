//! nginx configuration for both runtimes: the repository's `nginx/nginx.conf` plus
//! `nginx/templates/*.template` rendered with this run's ports and upstream address.
//!
//! In Docker the nginx image's entrypoint renders the templates with envsubst from the container
//! environment (docker-compose.yml sets the same variables); natively [`prepare_native`] does the
//! same substitution here, so both runtimes run one configuration. Values that are lists — the
//! gateways nginx balances, the CORS origins — are rendered into nginx syntax here for both
//! runtimes ([`EdgeSettings`]; [`docker_vars`] feeds the Docker runtime's compose variables), so
//! the image's plain envsubst never has to build a list.

use crate::config::Config;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use url::Url;

/// Whether nginx can start: its certificate and key exist. When they do not, nginx is an error if
/// the user named it (`explicit`), else skipped with a note saying how to make them.
pub fn certificate_ready(cfg: &Config, explicit: bool) -> anyhow::Result<bool> {
    if cfg.ssl_cert_path.is_file() && cfg.ssl_key_path.is_file() {
        return Ok(true);
    }
    if explicit {
        bail!("nginx needs a certificate at {} — run `mfe ssl generate` first", cfg.ssl_cert_path.display());
    }
    eprintln!("nginx: skipped (no certificate at {} — run `mfe ssl generate`)", cfg.ssl_cert_path.display());
    Ok(false)
}

/// How many times a gateway may fail within `fail_timeout` before nginx rests it for as long
/// (ignored by nginx when there is one gateway).
const GATEWAY_FAILURE_POLICY: &str = "max_fails=3 fail_timeout=10s";

/// What nginx fronts beyond the ports of [`Config`]: the gateways, the shell and the three
/// micro-frontends (each `host:port`), and the origins allowed to call `/api/` cross-origin —
/// read from the environment contract (`mfe env example`), set directly by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// GATEWAY_UPSTREAMS, or when that is empty the gateway of GATEWAY_URL and its replicas
    /// (`mfe up --replicas N`): one source.
    pub gateways: Vec<String>,
    pub shell: String,
    pub auth_mfe: String,
    pub payments_mfe: String,
    pub admin_mfe: String,
    /// Serialised origins (`https://app.example.com`, `http://localhost:4201`), as browsers send
    /// them in `Origin`.
    pub cors_allowed_origins: Vec<String>,
    /// The api zone's rate per client address (NGINX_API_RATE: `100r/m`, `50r/s`).
    pub api_rate: String,
}

impl EdgeSettings {
    /// From the environment contract (`.env`, then the SPEC defaults).
    pub fn from_env(cfg: &Config) -> anyhow::Result<Self> {
        Self::from_lookup(&cfg.gateway_url, cfg.app_replicas, mfe_core::env::get)
    }

    /// From `get(NAME)` (a value or the variable's default), the gateway URL and how many
    /// replicas of it run.
    pub fn from_lookup(gateway_url: &str, replicas: usize, get: impl Fn(&str) -> String) -> anyhow::Result<Self> {
        let listed = get("GATEWAY_UPSTREAMS");
        let gateways = if listed.trim().is_empty() {
            (0..replicas.max(1))
                .map(|k| host_port("GATEWAY_URL", &crate::config::replica_url("GATEWAY_URL", gateway_url, k)?))
                .collect::<anyhow::Result<_>>()?
        } else {
            listed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| host_port("GATEWAY_UPSTREAMS", s))
                .collect::<anyhow::Result<_>>()?
        };
        let mfe = |var: &str| host_port(var, &get(var));
        Ok(Self {
            gateways,
            shell: mfe("SHELL_APP_URL")?,
            auth_mfe: mfe("AUTH_MFE_URL")?,
            payments_mfe: mfe("PAYMENTS_MFE_URL")?,
            admin_mfe: mfe("ADMIN_MFE_URL")?,
            cors_allowed_origins: parse_origins(&get("CORS_ALLOWED_ORIGINS"))?,
            api_rate: parse_rate("NGINX_API_RATE", &get("NGINX_API_RATE"))?,
        })
    }

    /// The template variables that name upstreams and origins. `rewrite` maps each `host:port`
    /// (the Docker runtime reaches host processes through host.docker.internal).
    fn vars(&self, rewrite: impl Fn(&str) -> String) -> BTreeMap<&'static str, String> {
        let servers = self
            .gateways
            .iter()
            .map(|g| format!("    server {} {GATEWAY_FAILURE_POLICY};", rewrite(g)))
            .collect::<Vec<_>>()
            .join("\n");
        let origins =
            self.cors_allowed_origins.iter().map(|o| format!("    \"{o}\" \"{o}\";")).collect::<Vec<_>>().join("\n");
        BTreeMap::from([
            ("MFE_GATEWAY_SERVERS", servers),
            ("MFE_SHELL_UPSTREAM", rewrite(&self.shell)),
            ("MFE_AUTH_MFE_UPSTREAM", rewrite(&self.auth_mfe)),
            ("MFE_PAYMENTS_MFE_UPSTREAM", rewrite(&self.payments_mfe)),
            ("MFE_ADMIN_MFE_UPSTREAM", rewrite(&self.admin_mfe)),
            ("MFE_CORS_ORIGIN_MAP", origins),
            ("MFE_API_RATE", self.api_rate.clone()),
        ])
    }
}

/// `host:port` of a URL (or of a bare `host:port`), IPv6 hosts in brackets; `var` names the
/// variable in the error.
fn host_port(var: &str, value: &str) -> anyhow::Result<String> {
    let with_scheme = if value.contains("://") { value.to_string() } else { format!("http://{value}") };
    let url = Url::parse(&with_scheme).map_err(|e| {
        anyhow::anyhow!("{var}: `{value}` is not a URL or host:port ({e}) — e.g. http://127.0.0.1:3000")
    })?;
    let host = url.host_str().filter(|h| !h.is_empty()).with_context(|| format!("{var}: `{value}` names no host"))?;
    let port = url.port_or_known_default().with_context(|| format!("{var}: `{value}` names no port"))?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    Ok(format!("{host}:{port}"))
}

/// A `limit_req_zone` rate as nginx takes it: a positive count per second or minute (`100r/m`).
fn parse_rate(var: &str, value: &str) -> anyhow::Result<String> {
    let value = value.trim();
    let count = value.strip_suffix("r/m").or_else(|| value.strip_suffix("r/s"));
    match count.and_then(|n| n.parse::<u64>().ok()) {
        Some(n) if n > 0 => Ok(value.to_string()),
        _ => bail!("{var}: `{value}` is not a rate — write requests per second or minute, e.g. 100r/m or 50r/s"),
    }
}

/// CORS_ALLOWED_ORIGINS: comma-separated origins, `none` for none. Each is normalised as a
/// browser serialises it (lower-case host, no default port, no trailing slash), since nginx
/// compares the `Origin` header as an exact string.
pub fn parse_origins(list: &str) -> anyhow::Result<Vec<String>> {
    if list.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut origins = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "*" {
            bail!(
                "CORS_ALLOWED_ORIGINS: `*` cannot be combined with credentials — list the origins (e.g. https://app.example.com)"
            );
        }
        let bad = || {
            anyhow::anyhow!(
                "CORS_ALLOWED_ORIGINS: `{item}` is not an origin — write scheme://host[:port], e.g. https://app.example.com"
            )
        };
        let url = Url::parse(item).map_err(|_| bad())?;
        let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !bare || !url.username().is_empty()
        {
            return Err(bad());
        }
        let origin = url.origin().ascii_serialization();
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// The variables the templates use, with this run's values for the native runtime.
pub fn native_vars(cfg: &Config, edge: &EdgeSettings) -> BTreeMap<&'static str, String> {
    let mut vars = edge.vars(str::to_string);
    vars.insert("NGINX_LISTEN_HTTP", format!("127.0.0.1:{}", cfg.nginx_http_port));
    vars.insert("NGINX_LISTEN_HTTPS", format!("127.0.0.1:{}", cfg.nginx_https_port));
    vars.insert("NGINX_HTTPS_PORT", cfg.nginx_https_port.to_string());
    vars.insert("NGINX_HOST", cfg.nginx_host.clone());
    vars.insert("NGINX_SSL_CERTIFICATE", cfg.ssl_cert_path.display().to_string());
    vars.insert("NGINX_SSL_CERTIFICATE_KEY", cfg.ssl_key_path.display().to_string());
    vars
}

/// The upstream and origin variables for the Docker runtime, which docker-compose.yml passes to
/// the container for the image's envsubst: the same rendering as natively, with loopback hosts
/// (this machine's processes) reached through host.docker.internal.
pub fn docker_vars(cfg: &Config) -> anyhow::Result<BTreeMap<&'static str, String>> {
    Ok(docker_vars_of(&EdgeSettings::from_env(cfg)?))
}

fn docker_vars_of(edge: &EdgeSettings) -> BTreeMap<&'static str, String> {
    edge.vars(|hp| {
        let (host, port) = hp.rsplit_once(':').unwrap_or((hp, ""));
        match host {
            "127.0.0.1" | "localhost" | "[::1]" | "0.0.0.0" => format!("host.docker.internal:{port}"),
            _ => hp.to_string(),
        }
    })
}

/// Replaces `${NAME}` for every NAME in `vars`, as envsubst does; `$nginx_vars` stay. A `${NAME}`
/// left over is an error naming it (the template and this run disagree).
pub fn render(template: &str, vars: &BTreeMap<&'static str, String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None if name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') => {
                bail!("the nginx template uses ${{{name}}}, which mfe does not set — add it to nginx::native_vars")
            }
            None => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes a runnable nginx prefix under `dir` (conf/, log/, run/, temp/) and returns the path of
/// its main config file, for `nginx -p DIR -c PATH`.
pub fn prepare_native(cfg: &Config, dir: &Path) -> anyhow::Result<PathBuf> {
    prepare_native_with(cfg, &EdgeSettings::from_env(cfg)?, dir)
}

/// [`prepare_native`] with the upstreams and origins given.
pub fn prepare_native_with(cfg: &Config, edge: &EdgeSettings, dir: &Path) -> anyhow::Result<PathBuf> {
    let src = cfg.root.join("nginx");
    let conf = dir.join("conf");
    for sub in [conf.join("conf.d"), dir.join("log"), dir.join("run"), dir.join("temp")] {
        fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    let main = conf.join("nginx.conf");
    let text = fs::read_to_string(src.join("nginx.conf"))
        .with_context(|| format!("cannot read {} — is MFE_ROOT the repository?", src.join("nginx.conf").display()))?;
    let text =
        if crate::limits::can_exceed_hard_limit() { text } else { fit_rlimit_nofile(&text, crate::limits::nofile().1) };
    fs::write(&main, text)?;
    fs::write(conf.join("mime.types"), mime_types())?;

    let vars = native_vars(cfg, edge);
    // Rendered files replace the previous run's, so a removed template leaves nothing behind.
    for old in fs::read_dir(conf.join("conf.d"))?.flatten() {
        let _ = fs::remove_file(old.path());
    }
    let templates = src.join("templates");
    let entries = fs::read_dir(&templates).with_context(|| format!("cannot read {}", templates.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".template")) else {
            continue;
        };
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let rendered = render(&text, &vars).with_context(|| format!("cannot render {}", path.display()))?;
        fs::write(conf.join("conf.d").join(name), rendered)?;
    }
    Ok(main)
}

/// nginx.conf with `worker_rlimit_nofile` and `worker_connections` lowered to `hard` when that is
/// below them. Natively the workers inherit mfe's limits (soft raised to hard at start-up);
/// raising them beyond the hard limit needs CAP_SYS_RESOURCE (kept when mfe has it), which even
/// root lacks in many containers (this one's: `setrlimit(RLIMIT_NOFILE, 65536) failed`, an alert
/// per worker). More connections than descriptors cannot be used either (nginx warns at every
/// start), so both ask for what the workers can have; at that point nginx logs
/// "worker_connections are not enough" instead of failing accept() with EMFILE, and `mfe doctor`
/// warns when the hard limit is too low for the socket target.
fn fit_rlimit_nofile(conf: &str, hard: u64) -> String {
    conf.lines()
        .map(|line| {
            for directive in ["worker_rlimit_nofile", "worker_connections"] {
                let wanted = line
                    .trim()
                    .strip_prefix(directive)
                    .and_then(|rest| rest.trim().trim_end_matches(';').parse::<u64>().ok());
                if let Some(n) = wanted.filter(|n| hard < *n) {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    return format!("{indent}{directive} {hard}; # {n} in nginx/nginx.conf, above the hard limit");
                }
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The system's mime.types when installed with nginx, else the few types this stack serves.
fn mime_types() -> String {
    fs::read_to_string("/etc/nginx/mime.types").unwrap_or_else(|_| {
        "types {\n    text/html html;\n    text/css css;\n    application/javascript js;\n    \
         application/json json;\n    image/svg+xml svg;\n    text/plain txt;\n}\n"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_replaces_known_variables_and_leaves_nginx_variables_alone() {
        let mut vars = BTreeMap::new();
        vars.insert("NGINX_HTTPS_PORT", "20443".to_string());
        let out = render("return 301 https://$host:${NGINX_HTTPS_PORT}$request_uri; ${host}", &vars).unwrap();
        assert_eq!(out, "return 301 https://$host:20443$request_uri; ${host}");
    }

    fn defaults() -> EdgeSettings {
        EdgeSettings::from_lookup(mfe_core::env::var("GATEWAY_URL").default, 1, |n| {
            mfe_core::env::var(n).default.to_string()
        })
        .unwrap()
    }

    #[test]
    fn the_defaults_front_one_gateway_the_shell_and_three_micro_frontends() {
        let edge = defaults();
        assert_eq!(edge.gateways, ["127.0.0.1:3000"]);
        assert_eq!(
            [&edge.shell, &edge.auth_mfe, &edge.payments_mfe, &edge.admin_mfe],
            ["127.0.0.1:4200", "127.0.0.1:4201", "127.0.0.1:4202", "127.0.0.1:4203"]
        );
        assert_eq!(edge.cors_allowed_origins.len(), 4);
    }

    #[test]
    fn the_api_rate_is_an_nginx_rate_or_one_line_naming_the_variable() {
        assert_eq!(parse_rate("NGINX_API_RATE", "100r/m").unwrap(), "100r/m");
        assert_eq!(parse_rate("NGINX_API_RATE", " 50r/s ").unwrap(), "50r/s");
        for bad in ["100", "0r/s", "fast", "10r/h"] {
            let err = parse_rate("NGINX_API_RATE", bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("NGINX_API_RATE: `{}` is not a rate", bad.trim())), "{err}");
        }
        assert_eq!(defaults().vars(str::to_string)["MFE_API_RATE"], "100r/m");
    }

    #[test]
    fn replicas_of_the_gateway_are_every_one_an_upstream_unless_listed() {
        let defaults = |n: &str| mfe_core::env::var(n).default.to_string();
        let edge = EdgeSettings::from_lookup("http://127.0.0.1:3000", 3, defaults).unwrap();
        assert_eq!(edge.gateways, ["127.0.0.1:3000", "127.0.0.1:3100", "127.0.0.1:3200"]);
        let listed = EdgeSettings::from_lookup("http://127.0.0.1:3000", 3, |n| match n {
            "GATEWAY_UPSTREAMS" => "10.0.0.7:3000".to_string(),
            other => defaults(other),
        })
        .unwrap();
        assert_eq!(listed.gateways, ["10.0.0.7:3000"], "an explicit list wins");
    }

    #[test]
    fn gateway_upstreams_list_every_gateway_with_the_failure_policy() {
        let edge = EdgeSettings::from_lookup("http://127.0.0.1:3000", 1, |n| match n {
            "GATEWAY_UPSTREAMS" => "127.0.0.1:3000, http://10.0.0.7:3100,[::1]:3200".to_string(),
            other => mfe_core::env::var(other).default.to_string(),
        })
        .unwrap();
        let servers = &edge.vars(str::to_string)["MFE_GATEWAY_SERVERS"];
        assert_eq!(
            servers,
            "    server 127.0.0.1:3000 max_fails=3 fail_timeout=10s;\n    server 10.0.0.7:3100 max_fails=3 fail_timeout=10s;\n    server [::1]:3200 max_fails=3 fail_timeout=10s;"
        );
        let err = EdgeSettings::from_lookup("http://127.0.0.1:3000", 1, |n| match n {
            "GATEWAY_UPSTREAMS" => "127.0.0.1:3000,not a host".to_string(),
            other => mfe_core::env::var(other).default.to_string(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("GATEWAY_UPSTREAMS: `not a host`"), "{err}");
    }

    #[test]
    fn origins_are_normalised_as_browsers_send_them_and_a_wildcard_is_refused() {
        assert_eq!(
            parse_origins("https://App.Example.com/, http://localhost:4201,https://x.example:443").unwrap(),
            ["https://app.example.com", "http://localhost:4201", "https://x.example"]
        );
        assert!(parse_origins("none").unwrap().is_empty());
        assert!(parse_origins("*").unwrap_err().to_string().contains("cannot be combined with credentials"));
        let err = parse_origins("https://a.example/app").unwrap_err().to_string();
        assert!(err.contains("`https://a.example/app` is not an origin"), "{err}");
        assert!(parse_origins("ftp://a.example").is_err());
    }

    #[test]
    fn docker_compose_defaults_are_what_the_renderer_gives_for_the_defaults() {
        let compose = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
        let file = crate::infra::compose::ComposeFile::load(&compose, &|_| None).unwrap();
        let env = file.services["nginx"].environment.to_vec();
        for (name, value) in docker_vars_of(&defaults()) {
            // Compose values are one line; nginx reads map entries and servers the same either way.
            let one_line = value.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            assert!(
                env.contains(&format!("{name}={one_line}")),
                "docker-compose.yml's default for {name} is not {one_line:?}: {env:?}"
            );
        }
    }

    #[test]
    fn natively_the_workers_ask_for_no_more_descriptors_than_the_hard_limit_allows() {
        let conf = "worker_processes auto;\nworker_rlimit_nofile 65536;\nevents {\n    worker_connections 32768;\n}";
        assert_eq!(
            fit_rlimit_nofile(conf, 20_000),
            "worker_processes auto;\nworker_rlimit_nofile 20000; # 65536 in nginx/nginx.conf, above the hard limit\n\
             events {\n    worker_connections 20000; # 32768 in nginx/nginx.conf, above the hard limit\n}\n"
        );
        assert_eq!(fit_rlimit_nofile(conf, 1_048_576), format!("{conf}\n"));
    }

    #[test]
    fn an_unknown_upper_case_variable_is_an_error_naming_it() {
        let err = render("server ${MFE_NOPE};", &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("${MFE_NOPE}"), "{err}");
    }
}
