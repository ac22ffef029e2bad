//! The connection: connecting to the first reachable broker, the supervisor that watches the
//! connection and replaces it (with backoff) when it dies, and the base topology declared on
//! every new connection.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Inner, Link};
use crate::config::HubConfig;
use crate::error::HubError;
use crate::topology;

/// Tries every URL once, in order from `start` (wrapping around); returns the connection and
/// the index of its URL.
///
/// A reconnect starts with the URL after the one that just failed: the node that dropped the
/// connection is the likeliest to still be down, and one that stopped answering (paused, or cut
/// off by a partition) would cost the whole connect timeout before the next is tried.
pub(super) async fn try_connect(cfg: &HubConfig, start: usize) -> Result<(Connection, usize), HubError> {
    let mut reasons = Vec::new();
    let n = cfg.urls.len();
    for i in (0..n).map(|k| (start + k) % n) {
        let url = &cfg.urls[i];
        let props = ConnectionProperties::default().with_connection_name(cfg.connection_name.as_str().into());
        match tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, props)).await {
            Ok(Ok(conn)) => return Ok((conn, i)),
            Ok(Err(e)) => reasons.push(format!("{}: {e}", redact(url))),
            Err(_) => reasons.push(format!("{}: timed out after 5 s", redact(url))),
        }
    }
    Err(HubError::Connect {
        urls: cfg.urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
        reason: reasons.join("; "),
    })
}

// `amqp://user:***@host:port/vhost` for messages (the one redaction of mfe-core).
pub(super) use mfe_core::redact_url_password as redact;

/// Owns the connection: publishes it to waiters, watches it, and replaces it when it dies.
pub(super) async fn supervise(
    inner: Arc<Inner>,
    first: (Connection, usize),
    up: oneshot::Sender<Result<(), HubError>>,
) {
    let mut up = Some(up);
    let (mut conn, mut url) = first;
    let mut generation = 0u64;
    loop {
        generation += 1;
        let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel();
        conn.on_error(move |e| {
            let _ = err_tx.send(e);
        });
        let conn_arc = Arc::new(conn);
        match declare_base(&conn_arc, &inner.cfg).await {
            Ok(()) => {
                inner.link.send_replace(Some(Link { conn: conn_arc.clone(), generation, url }));
                if let Some(tx) = up.take() {
                    let _ = tx.send(Ok(()));
                }
                if generation > 1 {
                    info!(generation, url = %redact(&inner.cfg.urls[url]), "rabbitmq: reconnected, topology re-declared");
                }
                loop {
                    tokio::select! {
                        _ = inner.shutdown.cancelled() => {
                            inner.link.send_replace(None);
                            let _ = conn_arc.close(200, "hub closed").await;
                            return;
                        }
                        e = err_rx.recv() => {
                            warn!("rabbitmq: connection lost: {}", e.map(|e| e.to_string()).unwrap_or_default());
                            break;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {
                            if !conn_arc.status().connected() {
                                warn!("rabbitmq: connection no longer open");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(tx) = up.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                warn!("rabbitmq: declaring the topology after reconnect failed: {e}");
            }
        }
        inner.link.send_replace(None);
        let _ = conn_arc.close(320, "reconnecting").await;
        let mut delay = inner.cfg.reconnect_min;
        (conn, url) = loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match try_connect(&inner.cfg, url + 1).await {
                Ok(c) => break c,
                Err(e) => {
                    debug!("rabbitmq: reconnect failed, retrying in {:?}: {e}", delay);
                    delay = (delay * 2).min(inner.cfg.reconnect_max);
                }
            }
        };
    }
}

async fn declare_base(conn: &Connection, cfg: &HubConfig) -> Result<(), HubError> {
    let ch = conn.create_channel().await.map_err(HubError::amqp("opening a channel to declare the topology"))?;
    topology::declare(&ch, cfg).await.map_err(HubError::amqp(format!(
        "declaring exchanges {:?}, {:?} and queue {:?}",
        cfg.exchange, cfg.dlx, cfg.dlq
    )))?;
    let _ = ch.close(200, "declared").await;
    Ok(())
}
