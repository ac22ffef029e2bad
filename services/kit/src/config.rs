//! Typed configuration of a service, read from the environment with the SPEC §2 defaults of
//! [`crate::env`]. `PORT` overrides the service's default port and `BIND_ADDR` its address.

use std::fmt;

use crate::env;

/// The four services, each with its default port and database variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Auth,
    Payments,
    Admin,
    Profile,
}

impl Service {
    /// The short name used in logs, metrics labels and event sources.
    pub fn name(self) -> &'static str {
        match self {
            Service::Auth => "auth",
            Service::Payments => "payments",
            Service::Admin => "admin",
            Service::Profile => "profile",
        }
    }

    /// The default port of SPEC §2.
    pub fn default_port(self) -> u16 {
        match self {
            Service::Auth => 3001,
            Service::Payments => 3002,
            Service::Admin => 3003,
            Service::Profile => 3004,
        }
    }

    /// The variable holding this service's database URL.
    pub fn database_var(self) -> &'static str {
        match self {
            Service::Auth => "AUTH_DATABASE_URL",
            Service::Payments => "PAYMENTS_DATABASE_URL",
            Service::Admin => "ADMIN_DATABASE_URL",
            Service::Profile => "PROFILE_DATABASE_URL",
        }
    }
}

/// A secret value that never shows up in `Debug`/`Display` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used (signing keys), never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Base URLs of the platform's HTTP components, for service-to-service calls.
#[derive(Debug, Clone)]
pub struct ServiceUrls {
    pub gateway: String,
    pub auth: String,
    pub payments: String,
    pub admin: String,
    pub profile: String,
}

impl ServiceUrls {
    pub fn from_env() -> Self {
        Self {
            gateway: env::get("GATEWAY_URL"),
            auth: env::get("AUTH_SERVICE_URL"),
            payments: env::get("PAYMENTS_SERVICE_URL"),
            admin: env::get("ADMIN_SERVICE_URL"),
            profile: env::get("PROFILE_SERVICE_URL"),
        }
    }
}

/// Everything a service needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub service: Service,
    /// Address to bind, `127.0.0.1` unless `BIND_ADDR` says otherwise.
    pub bind: String,
    /// Port to bind; 0 picks a free one (tests).
    pub port: u16,
    /// This service's own database (it never touches another's).
    pub database_url: String,
    /// The event hub connection (broker URLs, queue type).
    pub hub: mfe_events::HubConfig,
    pub redis_url: String,
    /// HS256 secret for access tokens.
    pub jwt_secret: Secret,
    pub urls: ServiceUrls,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ServiceConfig {
    /// Reads the configuration of `service` from the environment.
    pub fn from_env(service: Service) -> Result<Self, ConfigError> {
        let port = match std::env::var("PORT") {
            Ok(p) if !p.trim().is_empty() => {
                p.trim().parse().map_err(|_| ConfigError(format!("PORT={p:?} is not a port number (0-65535)")))?
            }
            _ => service.default_port(),
        };
        let bind = std::env::var("BIND_ADDR").ok().filter(|b| !b.trim().is_empty()).unwrap_or("127.0.0.1".into());
        Ok(Self {
            service,
            bind,
            port,
            database_url: env::get(service.database_var()),
            hub: mfe_events::HubConfig::from_env(),
            redis_url: env::get("REDIS_URL"),
            jwt_secret: Secret::new(env::get("JWT_SECRET")),
            urls: ServiceUrls::from_env(),
        })
    }
}

/// The whole number in the environment variable `name`, `None` when unset or blank.
pub fn env_number(name: &str) -> Result<Option<u64>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map(Some).map_err(|_| ConfigError(format!("{name}={v:?} is not a whole number")))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2-hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-hunter2");
    }

    #[test]
    fn each_service_has_the_spec_default_port() {
        assert_eq!(
            [Service::Auth, Service::Payments, Service::Admin, Service::Profile].map(Service::default_port),
            [3001, 3002, 3003, 3004]
        );
    }
}
