//! The platform's environment contract: every variable any binary of the workspace reads, its
//! default and a line saying what it does ([`VARS`]), and the one way a value is read and parsed.
//!
//! # The rule of every read
//! A variable that is unset, empty or blank takes its default; anything else must parse, or the
//! read fails with an [`EnvError`] naming the variable and the bad value. [`parse_env`] is that
//! rule for every `FromStr` type, [`parse_env_ms`] / [`parse_env_secs`] for durations, [`get`]
//! for strings (whose default is the table's), [`lookup`] for an optional string.
//!
//! `.env.example` is rendered from [`VARS`] ([`render_env_example`], `mfe env example`), and a
//! test of this crate scans the workspace's sources for reads of variables the table lacks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What kind of variable an entry is; decides how `.env.example` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The contract of SPEC §2: set in `.env.example` with its default, listed by `mfe env show`.
    Platform,
    /// A knob of one binary with a sensible default: commented out in `.env.example`.
    Tuning,
    /// A tool path override or test hook: documented, commented out in `.env.example`.
    Hook,
    /// Owned by another tool (`PATH`, `DOCKER_HOST`): read, never set by us, not in `.env.example`.
    External,
}

/// One documented environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// The value an unset or empty variable takes; `""` when the default is "off" or depends on
    /// the binary (the doc says which).
    pub default: &'static str,
    pub doc: &'static str,
    pub scope: Scope,
}

const fn platform(name: &'static str, default: &'static str, doc: &'static str) -> Var {
    Var { name, default, doc, scope: Scope::Platform }
}

const fn tuning(name: &'static str, default: &'static str, doc: &'static str) -> Var {
    Var { name, default, doc, scope: Scope::Tuning }
}

const fn hook(name: &'static str, default: &'static str, doc: &'static str) -> Var {
    Var { name, default, doc, scope: Scope::Hook }
}

const fn external(name: &'static str, default: &'static str, doc: &'static str) -> Var {
    Var { name, default, doc, scope: Scope::External }
}

/// Every variable, in the order `.env.example` lists them.
#[rustfmt::skip]
pub const VARS: &[Var] = &[

    platform("AUTH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/auth_db", "auth service database (auth_db server)"),
    platform("PAYMENTS_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5433/payments_db", "payments service database (payments_db server)"),
    platform("ADMIN_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5434/admin_db", "admin service database (admin_db server)"),
    platform("PROFILE_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5435/profile_db", "profile service database (profile_db server)"),
    platform("LEGACY_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5436/mfe_poc2", "legacy POC-2 shared database, read by `mfe migrate`"),
    platform("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:5672/%2f", "RabbitMQ broker; a comma-separated list gives failover candidates"),
    platform("RABBITMQ_MANAGEMENT_PORT", "15672", "RabbitMQ management UI/API port"),
    platform("REDIS_URL", "redis://127.0.0.1:6379", "Redis, used for caching only"),
    platform("JWT_SECRET", "dev-only-change-me-this-secret-is-not-for-production", "HS256 signing secret for access tokens (at least 32 bytes in production)"),
    platform("GATEWAY_URL", "http://127.0.0.1:3000", "API gateway (proxy, /ws, /health, /metrics)"),
    platform("AUTH_SERVICE_URL", "http://127.0.0.1:3001", "auth service base URL (the gateway takes a comma-separated list: one per replica)"),
    platform("PAYMENTS_SERVICE_URL", "http://127.0.0.1:3002", "payments service base URL (the gateway takes a comma-separated list: one per replica)"),
    platform("ADMIN_SERVICE_URL", "http://127.0.0.1:3003", "admin service base URL (the gateway takes a comma-separated list: one per replica)"),
    platform("PROFILE_SERVICE_URL", "http://127.0.0.1:3004", "profile service base URL (the gateway takes a comma-separated list: one per replica)"),
    platform("SSL_CERT_PATH", "nginx/ssl/self-signed.crt", "TLS certificate served by nginx"),
    platform("SSL_KEY_PATH", "nginx/ssl/self-signed.key", "TLS private key served by nginx (mode 0600)"),
    platform("NGINX_HOST", "localhost", "host name nginx answers to"),
    platform("NGINX_API_RATE", "100r/m", "requests per client address nginx passes to /api/ (its limit_req rate, burst 20): NNNr/m or NNNr/s"),
    platform("NGINX_HTTP_PORT", "80", "nginx plain HTTP port (redirects to HTTPS)"),
    platform("NGINX_HTTPS_PORT", "443", "nginx HTTPS port"),
    platform("GATEWAY_UPSTREAMS", "", "gateway instances nginx balances (least_conn), comma-separated host:port; empty: the one of GATEWAY_URL"),
    platform("SHELL_APP_URL", "http://127.0.0.1:4200", "shell app nginx serves at / (optional: nginx answers 503 while it is not running)"),
    platform("AUTH_MFE_URL", "http://127.0.0.1:4201", "auth micro-frontend nginx serves at /auth-mfe/ (optional)"),
    platform("PAYMENTS_MFE_URL", "http://127.0.0.1:4202", "payments micro-frontend nginx serves at /payments-mfe/ (optional)"),
    platform("ADMIN_MFE_URL", "http://127.0.0.1:4203", "admin micro-frontend nginx serves at /admin-mfe/ (optional)"),
    platform("CORS_ALLOWED_ORIGINS", "http://localhost:4200,http://localhost:4201,http://localhost:4202,http://localhost:4203", "origins nginx lets call /api/ cross-origin with credentials, comma-separated; `none` allows none"),
    platform("WS_URL", "wss://localhost/ws", "public WebSocket URL (through nginx)"),
    platform("PROMETHEUS_PORT", "9090", "Prometheus of `mfe up --observability` / `mfe infra start --observability` (127.0.0.1)"),
    platform("DASHBOARD_PORT", "9400", "`mfe up --dashboard`: the dashboard (127.0.0.1), also the services' OTLP endpoint"),
    platform("MFE_STATE_DIR", ".mfe", "where the native runtime keeps data, logs and pid files (gitignored)"),
    platform("MFE_RUNTIME", "auto", "infrastructure runtime: auto, docker or native"),
    platform("COMPOSE_PROJECT_NAME", "mfe", "docker compose project name used for labels and resource names"),
    platform("SENTRY_DSN", "", "Sentry DSN; error reporting is off when empty"),
    platform("SENTRY_ENVIRONMENT", "development", "Sentry environment tag"),
    platform("OTEL_EXPORTER_OTLP_ENDPOINT", "", "OTLP endpoint for traces; tracing export is off when empty"),
    platform("RUST_LOG", "info", "log filter (tracing-subscriber syntax)"),

    // Services.
    tuning("PORT", "", "port a service or the gateway listens on; empty: its port of SPEC §2 (services 3001-3004, gateway 3000), 0 picks a free one"),
    tuning("BIND_ADDR", "127.0.0.1", "address a service binds"),
    tuning("LOG_FORMAT", "text", "log line format of the services and the gateway: text or json"),
    tuning("OTEL_SERVICE_NAME", "", "service name of exported spans; empty: the binary's own name"),
    tuning("RABBITMQ_QUEUE_TYPE", "classic", "queue type of every durable queue the event hub declares: classic or quorum (a cluster)"),
    tuning("EVENT_RETRY_DELAYS_MS", "1000,2000,4000", "delays before each retry of a failed event, in ms, comma-separated; their number is the number of retries"),
    tuning("AUTH_REFRESH_GRACE_SECONDS", "5", "auth: seconds a rotated refresh token still answers with its successor (two tabs); 0 turns it off, at most 300"),
    tuning("AUTH_SIGNIN_MAX_FAILURES", "10", "auth: failed sign-ins for one email within AUTH_SIGNIN_WINDOW_SECS before 429 + Retry-After; 0 turns it off"),
    tuning("AUTH_SIGNIN_MAX_FAILURES_PER_IP", "100", "auth: failed sign-ins from one client address within the window before 429; 0 turns it off"),
    tuning("AUTH_SIGNIN_WINDOW_SECS", "900", "auth: the sign-in throttling window, from the first failure (counters in Redis, per replica while Redis is down)"),
    tuning("PAYMENTS_LIST_CACHE_TTL_SECS", "60", "payments: lifetime of a cached list page in seconds (writes invalidate at once)"),
    tuning("PAYMENTS_DB_POOL_SIZE", "16", "payments: connections to payments_db (1-1000)"),
    tuning("PSP_AUTO_COMPLETE_MS", "", "payments: the simulated PSP completes a payment after this many ms; empty or 0: it never does"),
    tuning("ADMIN_EVENTS_QUEUE", "admin.events.queue", "admin: the queue its audit consumer reads"),
    tuning("ADMIN_EVENTS_QUEUE_EXCLUSIVE", "false", "admin: true declares the audit queue exclusive to the process (tests, throw-away replicas)"),
    tuning("ADMIN_HEALTH_TIMEOUT_MS", "2000", "admin: how long system health waits for each service, in ms"),
    tuning("ADMIN_DB_POOL_SIZE", "8", "admin: connections to admin_db (1-1000)"),
    tuning("PROFILE_EVENTS_QUEUE", "profile.events.queue", "profile: the queue its consumer reads (a private one for benchmarks and side-by-side instances)"),
    tuning("TRUSTED_PROXIES", "127.0.0.1,::1", "services and gateway: proxies whose X-Forwarded-For / X-Real-IP are believed (addresses or CIDR networks, comma-separated, or `none`); the client is the first untrusted hop from the right"),

    // Gateway.
    tuning("GATEWAY_HOST", "0.0.0.0", "address the gateway binds"),
    tuning("GATEWAY_WORKERS", "0", "gateway runtime threads: 0 one per core, 1 a single-threaded runtime, N that many workers"),
    tuning("GATEWAY_UPSTREAM_TIMEOUT_MS", "30000", "gateway: time an upstream has to answer with headers before the client gets 504, in ms"),
    tuning("GATEWAY_CONNECT_TIMEOUT_MS", "2000", "gateway: time to open a connection to an upstream before the client gets 502, in ms"),
    tuning("GATEWAY_HEALTH_INTERVAL_MS", "5000", "gateway: how often each upstream's /health is polled, in ms"),
    tuning("WS_PING_INTERVAL_MS", "30000", "gateway: WebSocket server ping period, in ms"),
    tuning("WS_PONG_TIMEOUT_MS", "10000", "gateway: how long a pong may take before the socket is closed, in ms"),
    tuning("WS_SEND_QUEUE", "256", "gateway: messages queued per socket before a slow client is dropped"),
    tuning("WS_MAX_CONNECTIONS_PER_USER", "16", "gateway: WebSockets one user may hold open; the next upgrade is refused with 429 until one closes; 0: no cap"),
    tuning("GATEWAY_HEADER_READ_TIMEOUT_MS", "10000", "gateway: time a client has to send a request's headers, idle keep-alive time included, before the connection is closed, in ms"),
    tuning("GATEWAY_MAX_HEADER_BYTES", "65536", "gateway: largest request line plus headers, in bytes; a larger head is answered 431"),

    // The mfe CLI.
    tuning("RABBITMQ_DIST_PORT", "", "Erlang distribution port of the broker `mfe infra` runs (the first of an --ha cluster); empty: AMQP port + 20000"),
    hook("MFE_ROOT", "", "repository root `mfe` works in; empty: the nearest ancestor holding docker-compose.yml and migrations/"),
    hook("MFE_MIGRATIONS_DIR", "", "directory holding <service>/ migrations instead of the repository's migrations/"),
    hook("MFE_PG_BIN", "", "PostgreSQL bin directory of the native runtime; empty: /usr/lib/postgresql/*/bin, then PATH"),
    hook("MFE_RABBITMQ_SERVER", "", "rabbitmq-server binary of the native runtime; empty: the Debian paths, then PATH"),
    hook("MFE_REDIS_SERVER", "", "redis-server binary of the native runtime; empty: /usr/bin/redis-server, then PATH"),
    hook("MFE_NGINX", "", "nginx binary of the native runtime; empty: /usr/sbin/nginx, then PATH"),
    hook("MFE_PROMETHEUS", "", "prometheus binary of the native runtime; empty: /usr/bin/prometheus, then PATH"),
    hook("MFE_POSTGRES_IMAGE", "", "docker runtime: image used instead of postgres:15 (`make images` prints the local ones)"),
    hook("MFE_RABBITMQ_IMAGE", "", "docker runtime: image used instead of rabbitmq:3-management"),
    hook("MFE_REDIS_IMAGE", "", "docker runtime: image used instead of redis:7"),
    hook("MFE_NGINX_IMAGE", "", "docker runtime: image used instead of nginx"),
    hook("MFE_PROMETHEUS_IMAGE", "", "docker runtime: image used instead of prom/prometheus"),
    hook("MFE_IMAGE_CACHE", "/var/cache/mfe-images", "where `mfe infra images` keeps the downloads it builds local images from"),
    hook("MFE_MIGRATE_FAIL_AFTER_TABLE", "", "test hook: `mfe migrate` fails right after importing this table"),
    hook("MFE_MIGRATE_PAUSE_IN_CHUNK", "", "test hook: `<table>:<k>` holds `mfe migrate` inside chunk k of the table, uncommitted"),
    hook("TEST_LOG", "", "tests: set (any value) to see the services' logs in the output of `cargo test` (mfe-testkit)"),
    hook("MFE_CUTOVER_PAUSE_IN_BLOCK", "", "test hook: 1 holds `mfe migrate cutover` inside its write block"),

    external("PATH", "", "searched for pg_dump, psql and the native runtime's binaries"),
    external("DOCKER_HOST", "unix:///var/run/docker.sock", "the Docker API of the docker runtime (bollard)"),
];

/// The contract entry for `name`.
///
/// # Panics
/// When `name` is not part of the contract: that is a programming error, caught by tests.
pub fn var(name: &str) -> &'static Var {
    VARS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} is not part of the environment contract (mfe_core::env::VARS)"))
}

/// A variable whose value cannot be used: names the variable, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?} is not {}", self.name, self.value, self.expected)
    }
}

impl std::error::Error for EnvError {}

impl EnvError {
    pub fn new(name: &str, value: &str, expected: impl Into<String>) -> Self {
        Self { name: name.to_string(), value: value.to_string(), expected: expected.into() }
    }
}

/// The value of `name`, trimmed; `None` when it is unset, empty or blank.
pub fn lookup(name: &str) -> Option<String> {
    debug_assert!(VARS.iter().any(|v| v.name == name), "{name} is not part of the environment contract");
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Some(value.trim().to_string()),
        _ => None,
    }
}

/// The value of `name`, or its default from [`VARS`].
pub fn get(name: &str) -> String {
    lookup(name).unwrap_or_else(|| var(name).default.to_string())
}

/// The value of `name` parsed as `T`: `default` when unset or empty, an error naming the variable
/// and the value when it does not parse.
pub fn parse_env<T: FromStr>(name: &str, default: T) -> Result<T, EnvError> {
    Ok(parse_env_opt(name)?.unwrap_or(default))
}

/// As [`parse_env`], `None` when unset or empty.
pub fn parse_env_opt<T: FromStr>(name: &str) -> Result<Option<T>, EnvError> {
    match lookup(name) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| EnvError::new(name, &raw, expected::<T>())),
    }
}

/// A duration in whole milliseconds (`GATEWAY_UPSTREAM_TIMEOUT_MS=30000`).
pub fn parse_env_ms(name: &str, default: Duration) -> Result<Duration, EnvError> {
    Ok(parse_env_opt::<u64>(name)?.map(Duration::from_millis).unwrap_or(default))
}

/// A duration in whole seconds (`AUTH_REFRESH_GRACE_SECONDS=5`).
pub fn parse_env_secs(name: &str, default: Duration) -> Result<Duration, EnvError> {
    Ok(parse_env_opt::<u64>(name)?.map(Duration::from_secs).unwrap_or(default))
}

/// A comma-separated list of `T` (blank items dropped): `default` when unset or empty, an error
/// naming the variable when any item does not parse.
pub fn parse_env_list<T: FromStr>(name: &str, default: Vec<T>) -> Result<Vec<T>, EnvError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => parse_list(&raw)
            .ok_or_else(|| EnvError::new(name, &raw, format!("a comma-separated list of {}", expected::<T>()))),
    }
}

/// A comma-separated list of milliseconds (`EVENT_RETRY_DELAYS_MS=1000,2000,4000`).
pub fn parse_env_ms_list(name: &str, default: Vec<Duration>) -> Result<Vec<Duration>, EnvError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => parse_list::<u64>(&raw)
            .map(|ms| ms.into_iter().map(Duration::from_millis).collect())
            .ok_or_else(|| EnvError::new(name, &raw, "a comma-separated list of milliseconds")),
    }
}

/// A yes/no switch: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case).
pub fn parse_env_bool(name: &str, default: bool) -> Result<bool, EnvError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(EnvError::new(name, &raw, "a switch (true/false, 1/0)")),
        },
    }
}

/// `a, b,` → `[a, b]` parsed; `None` when any item does not parse.
pub fn parse_list<T: FromStr>(raw: &str) -> Option<Vec<T>> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect()
}

/// What a value of `T` looks like, for messages.
fn expected<T>() -> String {
    let ty = std::any::type_name::<T>();
    match ty {
        "u16" => "a port number (0-65535)".into(),
        "u8" | "u32" | "u64" | "u128" | "usize" => "a non-negative whole number".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "bool" => "true or false".into(),
        other => format!("a valid {}", other.rsplit("::").next().unwrap_or(other)),
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

/// Renders `.env.example` from [`VARS`], so the documented file never drifts from the code.
pub fn render_env_example() -> String {
    let mut out = String::from(
        "# mfe platform environment (SPEC §2). Every value shown is the default used when unset.\n\
         # Copy to .env and adjust; variables already set in the environment win over .env.\n",
    );
    for v in VARS.iter().filter(|v| v.scope == Scope::Platform) {
        out.push_str(&format!("\n# {}\n{}={}\n", v.doc, v.name, v.default));
    }
    for (scope, title) in [
        (Scope::Tuning, "Optional knobs of one binary; each line shows its default."),
        (Scope::Hook, "Tool path overrides and test hooks of `mfe`; unset unless needed."),
    ] {
        out.push_str(&format!("\n# ---- {title}\n"));
        for v in VARS.iter().filter(|v| v.scope == scope) {
            out.push_str(&format!("\n# {}\n# {}={}\n", v.doc, v.name, v.default));
        }
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
            assert_eq!(var(name).scope, Scope::Platform);
        }
    }

    #[test]
    fn every_variable_is_listed_once_with_a_doc_line() {
        for (i, v) in VARS.iter().enumerate() {
            assert!(!v.doc.trim().is_empty(), "{} has no doc line", v.name);
            assert!(!v.doc.contains('\n'), "{}'s doc is one line", v.name);
            assert!(VARS[..i].iter().all(|w| w.name != v.name), "{} is listed twice", v.name);
        }
    }

    #[test]
    fn list_items_parse_and_garbage_is_refused() {
        assert_eq!(parse_list::<u64>("100, 200,"), Some(vec![100, 200]));
        assert_eq!(parse_list::<u64>("1s"), None);
    }

    #[test]
    fn a_bad_value_is_reported_with_its_variable_and_what_was_expected() {
        assert_eq!(
            EnvError::new("PORT", "http", expected::<u16>()).to_string(),
            r#"PORT="http" is not a port number (0-65535)"#
        );
        assert_eq!(expected::<usize>(), "a non-negative whole number");
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
