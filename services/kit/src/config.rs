//! Typed configuration of a service, read from the environment through [`mfe_core::env`] (the
//! contract and its one parser). `PORT` overrides the service's default port and `BIND_ADDR` its
//! address.

use mfe_core::env::{self, EnvError};
use mfe_core::{Secret, Service};

use crate::replicas::Replicas;

/// Base URLs of the platform's HTTP components, for service-to-service calls: each service's
/// every replica (a comma-separated `*_SERVICE_URL`), the gateway's one address.
#[derive(Debug, Clone)]
pub struct ServiceUrls {
    pub gateway: String,
    pub auth: Replicas,
    pub payments: Replicas,
    pub admin: Replicas,
    pub profile: Replicas,
}

impl ServiceUrls {
    pub fn from_env() -> Self {
        Self {
            gateway: env::get("GATEWAY_URL"),
            auth: Replicas::parse(&env::get(Service::Auth.url_var())),
            payments: Replicas::parse(&env::get(Service::Payments.url_var())),
            admin: Replicas::parse(&env::get(Service::Admin.url_var())),
            profile: Replicas::parse(&env::get(Service::Profile.url_var())),
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
        let port = env::parse_env("PORT", service.default_port())?;
        let bind = env::get("BIND_ADDR");
        // Read per request through `client_ip::trusted_proxies`; a bad value fails here, at start.
        crate::client_ip::TrustedProxies::from_env()?;
        Ok(Self {
            service,
            bind,
            port,
            database_url: env::get(service.database_var()),
            hub: mfe_events::HubConfig::from_env()?,
            redis_url: env::get("REDIS_URL"),
            jwt_secret: Secret::new(env::get("JWT_SECRET")),
            urls: ServiceUrls::from_env(),
        })
    }
}

impl From<EnvError> for ConfigError {
    fn from(e: EnvError) -> Self {
        ConfigError(e.to_string())
    }
}
