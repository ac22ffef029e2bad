//! Reads what the databases hold after a chaos run into the [`History`]: every event the four
//! services committed since the run began (their outboxes), and every effect the consumers
//! applied (`processed_events`, written in the consumer's own transaction).

use anyhow::Context as _;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::history::{Committed, Consumer, Effect};
use super::workload::{Actor, Clock};
use crate::config::{Config, DbService};
use mfe_events::types;

/// The `processed_events` consumer names of admin's audit log and of profile (the services'
/// `CONSUMER` constants; a test keeps them equal, the CLI does not link the services).
const ADMIN_CONSUMER: &str = "admin";
const PROFILE_CONSUMER: &str = "profile";

/// The consumers whose effects the checker holds to exactly-once, with their bindings.
pub fn consumers() -> Vec<Consumer> {
    vec![
        Consumer {
            name: ADMIN_CONSUMER.into(),
            patterns: vec!["#".into()],
            except: vec![types::ADMIN_AUDIT_CREATED.into()],
        },
        Consumer { name: PROFILE_CONSUMER.into(), patterns: vec![types::AUTH_USER_REGISTERED.into()], except: vec![] },
    ]
}

/// The databases of the four services.
pub struct Databases {
    pools: Vec<(DbService, PgPool)>,
}

impl Databases {
    pub async fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let mut pools = Vec::new();
        for db in DbService::SPLIT {
            pools.push((db, crate::pg::connect(cfg, db).await?));
        }
        Ok(Self { pools })
    }

    fn pool(&self, db: DbService) -> &PgPool {
        &self.pools.iter().find(|(d, _)| *d == db).expect("every split database is connected").1
    }

    /// Waits until every outbox row of the run is published, then until the consumers' effects
    /// stop changing for `quiet`, at most `max` in all. Returns how long it took.
    pub async fn settle(&self, clock: &Clock, quiet: Duration, max: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let mut last = (i64::MIN, Instant::now());
        while t0.elapsed() < max {
            let mut pending = 0i64;
            for (db, pool) in &self.pools {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM event_outbox WHERE published_at IS NULL AND created_at >= $1",
                )
                .bind(clock.started_at)
                .fetch_one(pool)
                .await
                .with_context(|| format!("reading {}'s outbox", db.name()))?;
                pending += n;
            }
            let mut effects = 0i64;
            for db in [DbService::Admin, DbService::Profile] {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE processed_at >= $1")
                    .bind(clock.started_at)
                    .fetch_one(self.pool(db))
                    .await?;
                effects += n;
            }
            if pending == 0 {
                if effects != last.0 {
                    last = (effects, Instant::now());
                } else if last.1.elapsed() >= quiet {
                    return Ok(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        anyhow::bail!(
            "the platform did not settle within {} s (outbox rows unpublished or effects still changing)",
            max.as_secs()
        )
    }

    /// Every event committed since the run began, with its order within its payment and the
    /// actors whose sockets it is routed to.
    pub async fn committed(&self, clock: &Clock, actors: &[Actor]) -> anyhow::Result<Vec<Committed>> {
        let mut out = Vec::new();
        for (db, pool) in &self.pools {
            let rows = sqlx::query(
                "SELECT id, routing_key, envelope->'data' AS data, \
                        (extract(epoch FROM created_at - $1) * 1000)::float8 AS at_ms \
                 FROM event_outbox WHERE created_at >= $1 ORDER BY created_at, id",
            )
            .bind(clock.started_at)
            .fetch_all(pool)
            .await
            .with_context(|| format!("reading {}'s outbox", db.name()))?;
            for row in rows {
                let data: serde_json::Value = row.try_get("data")?;
                let event_type: String = row.try_get("routing_key")?;
                let audience = match mfe_gateway::routing::route(&event_type, &data) {
                    Some(routed) => actors
                        .iter()
                        .filter(|a| a.rooms().iter().any(|r| routed.rooms.contains(r)))
                        .map(|a| a.name.clone())
                        .collect(),
                    None => Vec::new(),
                };
                let order = event_type
                    .starts_with("payments.payment.")
                    .then(|| data["paymentId"].as_str().map(String::from))
                    .flatten()
                    .map(|p| (p, 0));
                out.push(Committed {
                    id: row.try_get("id")?,
                    event_type,
                    at: row.try_get::<f64, _>("at_ms")?.max(0.0) as u64,
                    order,
                    audience,
                });
            }
        }
        number_within_subject(&mut out);
        Ok(out)
    }

    /// Every effect the consumers applied since the run began.
    pub async fn effects(&self, clock: &Clock) -> anyhow::Result<Vec<Effect>> {
        let mut out = Vec::new();
        for db in [DbService::Admin, DbService::Profile] {
            let rows = sqlx::query(
                "SELECT consumer, event_id, (extract(epoch FROM processed_at - $1) * 1000)::float8 AS at_ms \
                 FROM processed_events WHERE processed_at >= $1",
            )
            .bind(clock.started_at)
            .fetch_all(self.pool(db))
            .await?;
            for row in rows {
                out.push(Effect {
                    consumer: row.try_get("consumer")?,
                    event_id: row.try_get::<Uuid, _>("event_id")?,
                    at: row.try_get::<f64, _>("at_ms")?.max(0.0) as u64,
                });
            }
        }
        Ok(out)
    }
}

/// Gives each subject's events their commit order (the outbox's `created_at`; the workload moves
/// one payment a step at a time, each step after the previous one answered).
fn number_within_subject(events: &mut [Committed]) {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].at, events[i].id));
    let mut next: HashMap<String, u64> = HashMap::new();
    for i in order {
        if let Some((subject, seq)) = &mut events[i].order {
            let n = next.entry(subject.clone()).or_default();
            *seq = *n;
            *n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_names_are_the_services_own() {
        assert_eq!(ADMIN_CONSUMER, admin_service::audit::CONSUMER);
        assert_eq!(PROFILE_CONSUMER, profile_service::CONSUMER);
    }

    #[test]
    fn events_of_one_payment_are_numbered_in_commit_order() {
        let ev = |n: u128, subject: Option<&str>, at| Committed {
            id: Uuid::from_u128(n),
            event_type: "payments.payment.updated".into(),
            at,
            order: subject.map(|s| (s.to_string(), 99)),
            audience: vec![],
        };
        let mut events = vec![ev(1, Some("p1"), 300), ev(2, Some("p2"), 100), ev(3, Some("p1"), 100), ev(4, None, 50)];
        number_within_subject(&mut events);
        let seqs: Vec<_> = events.iter().map(|e| e.order.as_ref().map(|(_, s)| *s)).collect();
        assert_eq!(seqs, [Some(1), Some(0), Some(0), None]);
    }
}
