//! nginx configuration for both runtimes: the repository's `nginx/nginx.conf` plus
//! `nginx/templates/*.template` rendered with this run's ports and upstream address.
//!
//! In Docker the nginx image's entrypoint renders the templates with envsubst from the container
//! environment (docker-compose.yml sets the same variables); natively [`prepare_native`] does the
//! same substitution here, so both runtimes run one configuration.

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

/// The variables the templates use, with this run's values for the native runtime.
pub fn native_vars(cfg: &Config) -> anyhow::Result<BTreeMap<&'static str, String>> {
    let gateway = Url::parse(&cfg.gateway_url).context("GATEWAY_URL is not a valid URL")?;
    let host = gateway.host_str().context("GATEWAY_URL names no host")?;
    let port = gateway.port_or_known_default().context("GATEWAY_URL names no port")?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    let mut vars = BTreeMap::new();
    vars.insert("NGINX_LISTEN_HTTP", format!("127.0.0.1:{}", cfg.nginx_http_port));
    vars.insert("NGINX_LISTEN_HTTPS", format!("127.0.0.1:{}", cfg.nginx_https_port));
    vars.insert("NGINX_HTTPS_PORT", cfg.nginx_https_port.to_string());
    vars.insert("NGINX_HOST", cfg.nginx_host.clone());
    vars.insert("NGINX_SSL_CERTIFICATE", cfg.ssl_cert_path.display().to_string());
    vars.insert("NGINX_SSL_CERTIFICATE_KEY", cfg.ssl_key_path.display().to_string());
    vars.insert("MFE_GATEWAY_UPSTREAM", format!("{host}:{port}"));
    Ok(vars)
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
    let src = cfg.root.join("nginx");
    let conf = dir.join("conf");
    for sub in [conf.join("conf.d"), dir.join("log"), dir.join("run"), dir.join("temp")] {
        fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    let main = conf.join("nginx.conf");
    fs::copy(src.join("nginx.conf"), &main)
        .with_context(|| format!("cannot copy {} — is MFE_ROOT the repository?", src.join("nginx.conf").display()))?;
    fs::write(conf.join("mime.types"), mime_types())?;

    let vars = native_vars(cfg)?;
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

    #[test]
    fn an_unknown_upper_case_variable_is_an_error_naming_it() {
        let err = render("server ${MFE_NOPE};", &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("${MFE_NOPE}"), "{err}");
    }
}
