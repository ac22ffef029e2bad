//! `mfe doctor`: checks what the stack needs — binaries or a Docker daemon, ports, certificates,
//! environment, connectivity — and says how to fix each problem.

use crate::config::Component;
use crate::infra::{health, native, ports};
use crate::report::{Check, Report};
use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

pub async fn run(ctx: &Ctx, _args: DoctorArgs) -> anyhow::Result<()> {
    doctor_report(ctx).await.emit(ctx.json)
}

/// Every check of `mfe doctor`; failing ones carry the fix in their detail.
pub async fn doctor_report(ctx: &Ctx) -> Report {
    let cfg = &ctx.config;
    let mut report = Report::new("doctor");

    let docker = crate::infra::docker::Docker::connect(cfg).await;
    // A daemon is only a runtime when it can have every image (official, pulled, or the local
    // stand-ins of `make images`); otherwise `auto` picks native, and the binaries are needed.
    let images = match &docker {
        Ok(d) => Some(d.stack_images().await),
        Err(_) => None,
    };
    let docker_ok = matches!(images, Some(Ok(Ok(()))));
    report.push(match (docker, images) {
        (Ok(_), Some(Ok(Ok(())))) => {
            Check::new("docker daemon", true, "answering, every image at hand (docker runtime available)")
        }
        (Ok(_), Some(Ok(Err(missing)))) => Check::new(
            "docker daemon",
            true,
            format!(
                "answering, but {missing}; the native runtime will be used — run `make images` for the docker runtime"
            ),
        ),
        (Ok(_), _) => Check::new(
            "docker daemon",
            true,
            "answering, but its images cannot be listed; the native runtime will be used",
        ),
        (Err(e), _) => Check::new(
            "docker daemon",
            true,
            format!("not available ({}); the native runtime will be used", crate::error_line(&e)),
        ),
    });
    for c in [Component::AuthDb, Component::Rabbitmq, Component::Redis, Component::Nginx] {
        let what = match c {
            Component::AuthDb => "postgresql binaries",
            Component::Rabbitmq => "rabbitmq-server binary",
            Component::Redis => "redis-server binary",
            _ => "nginx binary",
        };
        report.push(match native::binary_for(c) {
            Ok(p) => Check::new(what, true, p.display().to_string()),
            // Binaries are only needed when no Docker daemon runs the stack.
            Err(e) => Check::new(what, docker_ok, crate::error_line(&e)),
        });
    }

    let running = native::Native::new(cfg);
    for c in Component::ALL {
        for port in cfg.ports(c).unwrap_or_default() {
            let ours = running.pid(c).is_some();
            let check = if !ports::in_use(port) {
                Check::new(format!("port {port} ({c})"), true, "free")
            } else if ours {
                Check::new(format!("port {port} ({c})"), true, "in use by our native stack")
            } else {
                let probe_ok = health::probe(cfg, c).await.is_ok();
                let who = ports::describe_taken(port);
                Check::new(
                    format!("port {port} ({c})"),
                    probe_ok,
                    if probe_ok {
                        format!("{who}; it answers like {c}")
                    } else {
                        format!("{who} — stop it or move {c} to another port (.env)")
                    },
                )
            };
            report.push(check);
        }
    }

    report.push(if cfg.ssl_cert_path.is_file() && cfg.ssl_key_path.is_file() {
        Check::new("tls certificate", true, cfg.ssl_cert_path.display().to_string())
    } else {
        Check::new(
            "tls certificate",
            false,
            format!("missing at {} — run `mfe ssl generate`", cfg.ssl_cert_path.display()),
        )
    });

    let default_secret = mfe_core::env::var("JWT_SECRET").default;
    report.push(if cfg.jwt_secret == default_secret {
        Check::new("JWT_SECRET", true, "development default in use — set JWT_SECRET (≥ 32 bytes) outside development")
    } else if cfg.jwt_secret.len() < 32 {
        Check::new("JWT_SECRET", false, "shorter than 32 bytes — use a longer random secret")
    } else {
        Check::new("JWT_SECRET", true, "set")
    });
    // A warning, not a failure: a low limit only matters once thousands of sockets are open.
    let (soft, hard) = crate::limits::nofile();
    let (_, detail) = crate::limits::nofile_check(soft, hard, crate::limits::can_exceed_hard_limit());
    report.push(Check::new("open files", true, detail).metric("soft", soft).metric("hard", hard));
    report.push(Check::new(
        ".env",
        true,
        if cfg.root.join(".env").is_file() { "present" } else { "absent (defaults apply; see .env.example)" },
    ));

    for c in Component::ALL {
        if c == Component::Nginx && !cfg.ssl_cert_path.is_file() {
            continue;
        }
        report.push(match health::probe(cfg, c).await {
            Ok(d) => Check::new(format!("reach {c}"), true, d),
            Err(e) => Check::new(
                format!("reach {c}"),
                false,
                format!("{} — start it with `mfe infra start {c}`", crate::error_line(&e)),
            ),
        });
        if let Some(check) = replication_check(cfg, c).await {
            report.push(check);
        }
    }
    report
}

/// What the online migration (`mfe migrate sync`) needs of a reachable PostgreSQL server: the
/// legacy server runs one slot, sender and reverse apply worker per split service, each split
/// server one of each. `None` when the server is not reachable (its reach check says so).
async fn replication_check(cfg: &crate::config::Config, c: Component) -> Option<Check> {
    let db = c.db_service()?;
    let pool = crate::pg::connect(cfg, db).await.ok()?;
    let settings = crate::migrate::sync::read_settings(&pool).await.ok()?;
    pool.close().await;
    let need = if db == crate::config::DbService::Legacy { crate::config::DbService::SPLIT.len() as i64 } else { 1 };
    let addr = cfg.pg(db).map(|t| t.addr()).unwrap_or_default();
    let problems = crate::migrate::sync::setting_problems(c.name(), &addr, &settings, need, need);
    Some(if problems.is_empty() {
        Check::new(
            format!("logical replication {c}"),
            true,
            format!(
                "wal_level = logical, {} of {} slots free",
                settings.max_replication_slots - settings.slots_in_use,
                settings.max_replication_slots
            ),
        )
    } else {
        Check::new(format!("logical replication {c}"), false, problems.join("; "))
    })
}
