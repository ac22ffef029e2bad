//! The one table of the platform's services: every crate that needs "each service" (the gateway's
//! routes, the CLI's databases and processes, the tests) iterates [`SERVICES`]. Adding a service
//! means a row here (and a variant of [`Service`]), then its crate.

use std::fmt;

/// The services of the platform, in the order of [`SERVICES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Auth,
    Payments,
    Admin,
    Profile,
}

/// Everything the workspace knows about one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    pub service: Service,
    /// The short name used in logs, metrics labels, event sources and CLI arguments.
    pub name: &'static str,
    /// The binary `mfe up` starts.
    pub binary: &'static str,
    /// The port of SPEC §2 (the port of the default `service_url_var`).
    pub default_port: u16,
    /// Its own PostgreSQL database, also the name of the server (`mfe infra` component) hosting it.
    pub database: &'static str,
    /// The variable holding the database URL.
    pub database_url_var: &'static str,
    /// The variable holding the service's base URL (where it listens, where others call it).
    pub service_url_var: &'static str,
    /// The gateway routes this prefix (and everything under `prefix/`) to the service.
    pub route_prefix: &'static str,
}

/// Every service, in the order the gateway matches routes and migrations run.
pub const SERVICES: [ServiceSpec; 4] = [
    ServiceSpec {
        service: Service::Auth,
        name: "auth",
        binary: "auth-service",
        default_port: 3001,
        database: "auth_db",
        database_url_var: "AUTH_DATABASE_URL",
        service_url_var: "AUTH_SERVICE_URL",
        route_prefix: "/api/auth",
    },
    ServiceSpec {
        service: Service::Payments,
        name: "payments",
        binary: "payments-service",
        default_port: 3002,
        database: "payments_db",
        database_url_var: "PAYMENTS_DATABASE_URL",
        service_url_var: "PAYMENTS_SERVICE_URL",
        route_prefix: "/api/payments",
    },
    ServiceSpec {
        service: Service::Admin,
        name: "admin",
        binary: "admin-service",
        default_port: 3003,
        database: "admin_db",
        database_url_var: "ADMIN_DATABASE_URL",
        service_url_var: "ADMIN_SERVICE_URL",
        route_prefix: "/api/admin",
    },
    ServiceSpec {
        service: Service::Profile,
        name: "profile",
        binary: "profile-service",
        default_port: 3004,
        database: "profile_db",
        database_url_var: "PROFILE_DATABASE_URL",
        service_url_var: "PROFILE_SERVICE_URL",
        route_prefix: "/api/profile",
    },
];

impl Service {
    /// Every service, in table order.
    pub const ALL: [Service; SERVICES.len()] = {
        let mut all = [Service::Auth; SERVICES.len()];
        let mut i = 0;
        while i < SERVICES.len() {
            all[i] = SERVICES[i].service;
            i += 1;
        }
        all
    };

    /// This service's row of [`SERVICES`].
    pub const fn spec(self) -> &'static ServiceSpec {
        &SERVICES[self as usize]
    }

    /// The short name used in logs, metrics labels and event sources.
    pub const fn name(self) -> &'static str {
        self.spec().name
    }

    /// The default port of SPEC §2.
    pub const fn default_port(self) -> u16 {
        self.spec().default_port
    }

    /// The variable holding this service's database URL.
    pub const fn database_var(self) -> &'static str {
        self.spec().database_url_var
    }

    /// The variable holding this service's base URL.
    pub const fn url_var(self) -> &'static str {
        self.spec().service_url_var
    }

    /// The service named `name` (`auth`, ...), if there is one.
    pub fn from_name(name: &str) -> Option<Service> {
        SERVICES.iter().find(|s| s.name == name).map(|s| s.service)
    }
}

/// The name of replica `k` (from 0) of the process `name`: `auth` for the first, `auth-2`,
/// `auth-3`, … for the others — the rows of `mfe status` and of admin's system health.
pub fn replica_name(name: &str, k: usize) -> String {
    match k {
        0 => name.to_string(),
        k => format!("{name}-{}", k + 1),
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env;

    #[test]
    fn the_first_replica_keeps_the_name_and_the_others_are_numbered_from_2() {
        assert_eq!(replica_name("auth", 0), "auth");
        assert_eq!(replica_name("auth", 1), "auth-2");
        assert_eq!(replica_name("gateway", 2), "gateway-3");
    }

    #[test]
    fn each_service_has_the_spec_default_port() {
        assert_eq!(Service::ALL.map(Service::default_port), [3001, 3002, 3003, 3004]);
    }

    #[test]
    fn every_row_is_at_its_variant_and_its_variables_are_in_the_contract() {
        for (i, s) in SERVICES.iter().enumerate() {
            assert_eq!(s.service as usize, i, "{} is out of place", s.name);
            assert_eq!(Service::from_name(s.name), Some(s.service));
            let db = env::var(s.database_url_var).default;
            assert!(db.ends_with(&format!("/{}", s.database)), "{} defaults to {db}", s.database_url_var);
            let url = env::var(s.service_url_var).default;
            assert!(url.ends_with(&format!(":{}", s.default_port)), "{} defaults to {url}", s.service_url_var);
            assert_eq!(s.route_prefix, format!("/api/{}", s.name));
        }
    }
}
