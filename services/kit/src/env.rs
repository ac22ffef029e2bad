//! The platform's environment contract (SPEC §2): every variable, its default, and how a
//! value is looked up. This is the one place that knows the default ports and URLs; the CLI,
//! the services and the gateway all read configuration through it.

/// One documented environment variable with the default of SPEC §2.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every variable of the contract, in the order `.env.example` lists them.
pub const VARS: &[Var] = &[
    Var {
        name: "AUTH_DATABASE_URL",
        default: "postgres://postgres:postgres@127.0.0.1:5432/auth_db",
        doc: "auth service database (auth_db server)",
    },
    Var {
        name: "PAYMENTS_DATABASE_URL",
        default: "postgres://postgres:postgres@127.0.0.1:5433/payments_db",
        doc: "payments service database (payments_db server)",
    },
    Var {
        name: "ADMIN_DATABASE_URL",
        default: "postgres://postgres:postgres@127.0.0.1:5434/admin_db",
        doc: "admin service database (admin_db server)",
    },
    Var {
        name: "PROFILE_DATABASE_URL",
        default: "postgres://postgres:postgres@127.0.0.1:5435/profile_db",
        doc: "profile service database (profile_db server)",
    },
    Var {
        name: "LEGACY_DATABASE_URL",
        default: "postgres://postgres:postgres@127.0.0.1:5436/mfe_poc2",
        doc: "legacy POC-2 shared database, read by `mfe migrate`",
    },
    Var {
        name: "RABBITMQ_URL",
        default: "amqp://admin:admin@127.0.0.1:5672/%2f",
        doc: "RabbitMQ broker; a comma-separated list gives failover candidates",
    },
    Var { name: "RABBITMQ_MANAGEMENT_PORT", default: "15672", doc: "RabbitMQ management UI/API port" },
    Var { name: "REDIS_URL", default: "redis://127.0.0.1:6379", doc: "Redis, used for caching only" },
    Var {
        name: "JWT_SECRET",
        default: "dev-only-change-me-this-secret-is-not-for-production",
        doc: "HS256 signing secret for access tokens (at least 32 bytes in production)",
    },
    Var { name: "GATEWAY_URL", default: "http://127.0.0.1:3000", doc: "API gateway (proxy, /ws, /health, /metrics)" },
    Var { name: "AUTH_SERVICE_URL", default: "http://127.0.0.1:3001", doc: "auth service base URL" },
    Var { name: "PAYMENTS_SERVICE_URL", default: "http://127.0.0.1:3002", doc: "payments service base URL" },
    Var { name: "ADMIN_SERVICE_URL", default: "http://127.0.0.1:3003", doc: "admin service base URL" },
    Var { name: "PROFILE_SERVICE_URL", default: "http://127.0.0.1:3004", doc: "profile service base URL" },
    Var { name: "SSL_CERT_PATH", default: "nginx/ssl/self-signed.crt", doc: "TLS certificate served by nginx" },
    Var {
        name: "SSL_KEY_PATH",
        default: "nginx/ssl/self-signed.key",
        doc: "TLS private key served by nginx (mode 0600)",
    },
    Var { name: "NGINX_HOST", default: "localhost", doc: "host name nginx answers to" },
    Var { name: "NGINX_HTTP_PORT", default: "80", doc: "nginx plain HTTP port (redirects to HTTPS)" },
    Var { name: "NGINX_HTTPS_PORT", default: "443", doc: "nginx HTTPS port" },
    Var {
        name: "GATEWAY_UPSTREAMS",
        default: "",
        doc: "gateway instances nginx balances (least_conn), comma-separated host:port; empty: the one of GATEWAY_URL",
    },
    Var {
        name: "SHELL_APP_URL",
        default: "http://127.0.0.1:4200",
        doc: "shell app nginx serves at / (optional: nginx answers 503 while it is not running)",
    },
    Var {
        name: "AUTH_MFE_URL",
        default: "http://127.0.0.1:4201",
        doc: "auth micro-frontend nginx serves at /auth-mfe/ (optional)",
    },
    Var {
        name: "PAYMENTS_MFE_URL",
        default: "http://127.0.0.1:4202",
        doc: "payments micro-frontend nginx serves at /payments-mfe/ (optional)",
    },
    Var {
        name: "ADMIN_MFE_URL",
        default: "http://127.0.0.1:4203",
        doc: "admin micro-frontend nginx serves at /admin-mfe/ (optional)",
    },
    Var {
        name: "CORS_ALLOWED_ORIGINS",
        default: "http://localhost:4200,http://localhost:4201,http://localhost:4202,http://localhost:4203",
        doc: "origins nginx lets call /api/ cross-origin with credentials, comma-separated; `none` allows none",
    },
    Var { name: "WS_URL", default: "wss://localhost/ws", doc: "public WebSocket URL (through nginx)" },
    Var {
        name: "PROMETHEUS_PORT",
        default: "9090",
        doc: "Prometheus of `mfe up --observability` / `mfe infra start --observability` (127.0.0.1)",
    },
    Var {
        name: "MFE_STATE_DIR",
        default: ".mfe",
        doc: "where the native runtime keeps data, logs and pid files (gitignored)",
    },
    Var { name: "MFE_RUNTIME", default: "auto", doc: "infrastructure runtime: auto, docker or native" },
    Var {
        name: "COMPOSE_PROJECT_NAME",
        default: "mfe",
        doc: "docker compose project name used for labels and resource names",
    },
    Var { name: "SENTRY_DSN", default: "", doc: "Sentry DSN; error reporting is off when empty" },
    Var { name: "SENTRY_ENVIRONMENT", default: "development", doc: "Sentry environment tag" },
    Var {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "",
        doc: "OTLP endpoint for traces; tracing export is off when empty",
    },
    Var { name: "RUST_LOG", default: "info", doc: "log filter (tracing-subscriber syntax)" },
];

/// The contract entry for `name`.
///
/// # Panics
/// When `name` is not part of the contract: that is a programming error, caught by tests.
pub fn var(name: &str) -> &'static Var {
    VARS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} is not part of the environment contract (mfe_kit::env::VARS)"))
}

/// The value of `name` from the process environment, or its SPEC default.
pub fn get(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => var(name).default.to_string(),
    }
}

/// Loads `.env` (or `path`) into the process environment without overriding variables that are
/// already set, the way docker compose and dotenv tools behave. A missing default `.env` is fine;
/// a missing explicit path is an error.
pub fn load_dotenv(path: Option<&std::path::Path>) -> Result<(), String> {
    match path {
        Some(p) => dotenvy::from_path(p).map_err(|e| format!("cannot read env file {}: {e}", p.display())),
        None => match dotenvy::dotenv() {
            Ok(_) => Ok(()),
            Err(e) if e.not_found() => Ok(()),
            Err(e) => Err(format!("cannot read .env: {e}")),
        },
    }
}

/// A value fit for printing: a URL's password becomes `***`, a string that looks like a URL but
/// does not parse becomes `<invalid url>` (it may hold a password), anything else is unchanged.
pub fn redact_url_password(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => s.to_string(),
        Err(_) if s.contains("://") => "<invalid url>".to_string(),
        Err(_) => s.to_string(),
    }
}

/// Renders `.env.example` from [`VARS`], so the documented file never drifts from the code.
pub fn render_env_example() -> String {
    let mut out = String::from(
        "# mfe platform environment (SPEC §2). Every value shown is the default used when unset.\n\
         # Copy to .env and adjust; variables already set in the environment win over .env.\n",
    );
    for v in VARS {
        out.push_str(&format!("\n# {}\n{}={}\n", v.doc, v.name, v.default));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_variable_is_in_the_contract() {
        for name in [
            "AUTH_DATABASE_URL",
            "PAYMENTS_DATABASE_URL",
            "ADMIN_DATABASE_URL",
            "PROFILE_DATABASE_URL",
            "LEGACY_DATABASE_URL",
            "RABBITMQ_URL",
            "REDIS_URL",
            "JWT_SECRET",
            "GATEWAY_URL",
            "AUTH_SERVICE_URL",
            "PAYMENTS_SERVICE_URL",
            "ADMIN_SERVICE_URL",
            "PROFILE_SERVICE_URL",
            "SSL_CERT_PATH",
            "SSL_KEY_PATH",
            "NGINX_HOST",
            "WS_URL",
            "SENTRY_DSN",
            "SENTRY_ENVIRONMENT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "RUST_LOG",
        ] {
            assert_eq!(var(name).name, name);
        }
    }

    #[test]
    fn url_passwords_are_redacted_and_other_values_kept() {
        assert_eq!(redact_url_password("amqp://admin:admin@h:5672/%2f"), "amqp://admin:***@h:5672/%2f");
        assert_eq!(redact_url_password("postgres://u:p@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact_url_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url_password("postgres://u:p@h:notaport/db"), "<invalid url>");
        assert_eq!(redact_url_password("nginx/ssl/self-signed.crt"), "nginx/ssl/self-signed.crt");
    }

    #[test]
    fn env_example_in_the_repository_matches_the_contract() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.env.example");
        let on_disk = std::fs::read_to_string(path).expect(".env.example exists at the repository root");
        assert_eq!(
            on_disk,
            render_env_example(),
            ".env.example is stale: regenerate it with `mfe env example > .env.example`"
        );
    }
}
