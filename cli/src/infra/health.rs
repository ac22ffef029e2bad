//! Real readiness probes, shared by both runtimes (they publish the same ports on localhost):
//! a query for PostgreSQL, an AMQP connection for RabbitMQ, a PING for Redis and an HTTPS
//! `GET /health` for nginx.

use crate::config::{Component, Config};
use anyhow::Context;
use sqlx::Connection;
use std::time::{Duration, Instant};

/// Probes one component once; `Ok` carries a short detail (server version, reply).
pub async fn probe(cfg: &Config, c: Component) -> anyhow::Result<String> {
    let fut = async {
        match c {
            Component::Rabbitmq => probe_amqp(&cfg.rabbitmq_url).await,
            Component::Redis => probe_redis(&cfg.redis_url).await,
            Component::Nginx => probe_nginx(cfg.nginx_https_port).await,
            db => {
                let target = cfg.pg(db.db_service().expect("other components are databases"))?;
                probe_postgres(&target.url).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 5 s")))
}

/// Probes until healthy or `timeout` passes; the error carries the last failure.
pub async fn wait_healthy(cfg: &Config, c: Component, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe(cfg, c).await {
            Ok(detail) => return Ok(detail),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{c} did not become healthy within {} s", timeout.as_secs())))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub async fn probe_postgres(url: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')").fetch_one(&mut conn).await?;
    conn.close().await.ok();
    Ok(format!("postgres {version}"))
}

pub async fn probe_amqp(url: &str) -> anyhow::Result<String> {
    mfe_events::Hub::ping(url).await.context("AMQP connection or channel refused")?;
    Ok("amqp ok".to_string())
}

pub async fn probe_redis(url: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(format!("redis {pong}"))
}

pub async fn probe_nginx(https_port: u16) -> anyhow::Result<String> {
    let client =
        reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(3)).build()?;
    let resp = client.get(format!("https://127.0.0.1:{https_port}/health")).send().await?;
    anyhow::ensure!(resp.status().is_success(), "GET /health answered {}", resp.status());
    Ok(format!("https {}", resp.status().as_u16()))
}
