//! The Events panel: a live tail of the `events` exchange over Server-Sent Events, queue
//! depths and consumers, and dead letters with replay and purge.
//!
//! Each open page gets its own [`mfe_events::Tail`] (a temporary queue, capped and dropped with
//! the connection). At most [`MAX_SHOWN_PER_S`] events a second are sent to the page; above
//! that the [`Sampler`] keeps every k-th and a `stats` message once a second says how many were
//! seen and shown, so 10 000 events/s cost the browser 200 rows a second. Dead-letter work is
//! the hub's `dlq` operations, the same code `mfe events dlq` runs; a replay or purge answers
//! 409 with what it would do until the request carries `"confirm": true`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use mfe_events::DeadLetterFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sampler::Sampler;
use super::{ApiError, Shared};

/// Events a second the page is sent at most.
pub const MAX_SHOWN_PER_S: u64 = 200;
/// Events waiting for a slow page before the tail skips them.
const PAGE_BUFFER: usize = 512;

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Comma-separated topic patterns (default `#`).
    #[serde(default, rename = "type")]
    pub patterns: Option<String>,
}

fn sse_json(kind: &str, v: &Value) -> Event {
    Event::default().event(kind).data(v.to_string())
}

/// `GET /api/events/stream?type=payments.#`: `ready` once the tail consumes, then `event`s and
/// a `stats` message a second; `failed` when the broker connection goes.
pub async fn stream(
    State(st): State<Shared>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let hub = st.hub().await?;
    let patterns: Vec<String> =
        q.patterns.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
    let mut tail = hub.tail(&patterns).await.map_err(|e| ApiError::unavailable(format!("starting the tail: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(PAGE_BUFFER);
    let ready = json!({"queue": tail.queue(), "patterns": tail.patterns(), "exchange": hub.config().exchange,
        "maxShownPerSecond": MAX_SHOWN_PER_S});
    let _ = tx.try_send(sse_json("ready", &ready));
    // `Tail::next` is not cancel-safe (a delivery taken but not yet acked would be lost), so it
    // is polled to completion by a task of its own and never raced against the clock.
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = ev_tx.closed() => break,
                e = tail.next() => e,
            };
            let end = !matches!(e, Some(Ok(_)));
            if ev_tx.send(e).await.is_err() || end {
                break;
            }
        }
        tail.close().await;
    });
    tokio::spawn(async move {
        let mut sampler = Sampler::new(MAX_SHOWN_PER_S);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = tick.tick() => {
                    let s = sampler.roll();
                    if tx.send(sse_json("stats", &serde_json::to_value(&s).unwrap_or_default())).await.is_err() {
                        break;
                    }
                }
                e = ev_rx.recv() => match e {
                    None | Some(None) => {
                        let _ = tx.send(sse_json("failed", &json!({"message": "the connection to RabbitMQ closed"}))).await;
                        break;
                    }
                    Some(Some(Err(e))) => {
                        let _ = tx.send(sse_json("failed", &json!({"message": e.to_string()}))).await;
                        break;
                    }
                    Some(Some(Ok(ev))) => {
                        if sampler.offer() {
                            let v = serde_json::to_value(&ev).unwrap_or_default();
                            if tx.try_send(sse_json("event", &v)).is_err() {
                                sampler.unshow();
                            }
                        }
                    }
                },
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /api/events/queues`: name, messages (ready, unacked), consumers of each queue of the
/// broker's vhost, from the management API — the topology's own (its prefix, when one is set).
pub async fn queues(State(st): State<Shared>) -> Result<Json<Value>, ApiError> {
    let cfg = &st.ctx.config;
    let vhost: String = url::form_urlencoded::byte_serialize(cfg.rabbitmq_vhost.as_bytes()).collect();
    let url = format!(
        "http://127.0.0.1:{}/api/queues/{vhost}?columns=name,type,messages,messages_ready,messages_unacknowledged,consumers,state",
        cfg.rabbitmq_management_port
    );
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a plain HTTP client");
    let resp = client
        .get(&url)
        .basic_auth(&cfg.rabbitmq_user, Some(&cfg.rabbitmq_password))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            ApiError::unavailable(format!(
                "RabbitMQ management API at 127.0.0.1:{}: {e} — is the broker running?",
                cfg.rabbitmq_management_port
            ))
        })?;
    let all: Vec<Value> = resp.json().await.map_err(|e| ApiError::unavailable(format!("management API: {e}")))?;
    let exchange = st.hub_cfg.exchange.clone();
    let prefix = exchange.strip_suffix("events").unwrap_or("").to_string();
    let mut queues: Vec<Value> = all
        .into_iter()
        .filter(|q| {
            let name = q["name"].as_str().unwrap_or_default();
            if prefix.is_empty() {
                !name.starts_with("mfe.test.")
            } else {
                name.starts_with(&prefix)
            }
        })
        .collect();
    queues.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(json!({"exchange": exchange, "dlq": st.hub_cfg.dlq, "queues": queues})))
}

#[derive(Debug, Default, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub confirm: bool,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Selection {
    fn filter(&self) -> DeadLetterFilter {
        let clean = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        DeadLetterFilter { id: clean(&self.id), consumer: clean(&self.consumer), event_type: clean(&self.event_type) }
    }

    /// The filter of a replay or purge: something named, or `all`.
    fn named(&self) -> Result<DeadLetterFilter, ApiError> {
        let f = self.filter();
        if f.is_empty() && !self.all {
            return Err(ApiError::bad_request("say which dead letters: id, consumer, type, or all"));
        }
        Ok(if self.all { DeadLetterFilter::default() } else { f })
    }
}

fn describe(f: &DeadLetterFilter) -> String {
    match crate::events::describe_filter(f) {
        d if d.is_empty() => "every dead letter".into(),
        d => d,
    }
}

fn hub_failed(e: mfe_events::HubError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// `GET /api/events/dlq?consumer=&type=&id=&limit=`: the dead letters (`mfe events dlq list`).
pub async fn dead_letters(State(st): State<Shared>, Query(q): Query<Selection>) -> Result<Json<Value>, ApiError> {
    let hub = st.hub().await?;
    let _one_reader = st.dlq_lock.lock().await;
    let list = hub.dead_letters(&q.filter(), q.limit.unwrap_or(200).min(5000)).await.map_err(hub_failed)?;
    Ok(Json(serde_json::to_value(&list).unwrap_or_default()))
}

/// The 409 a replay or purge gets without `confirm`: how many it would touch, per consumer.
async fn preview(st: &Shared, f: &DeadLetterFilter, verb: &str, consequence: &str) -> Result<ApiError, ApiError> {
    let hub = st.hub().await?;
    let _one_reader = st.dlq_lock.lock().await;
    let list = hub.dead_letters(f, usize::MAX).await.map_err(hub_failed)?;
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for d in &list.dead_letters {
        *per.entry(d.consumer.clone()).or_default() += 1;
    }
    if list.matched == 0 {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no dead letter matches {} in {} (it holds {}) — nothing to {verb}",
                describe(f),
                list.queue,
                list.total
            ),
        ));
    }
    let consumers = per.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ");
    Ok(ApiError::confirm(
        format!(
            "{verb} {} dead letters ({}{}){consequence} — send again with confirm",
            list.matched,
            describe(f),
            if consumers.is_empty() { String::new() } else { format!(": {consumers}") }
        ),
        json!({"matched": list.matched, "queue": list.queue, "total": list.total, "perConsumer": per}),
    ))
}

/// `POST /api/events/dlq/replay {id|consumer|type|all, confirm}`: back to the failing consumer.
pub async fn replay(State(st): State<Shared>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let f = sel.named()?;
    if !sel.confirm {
        return Err(preview(&st, &f, "replay", " to the consumers that failed them").await?);
    }
    let hub = st.hub().await?;
    let _one_reader = st.dlq_lock.lock().await;
    let r = hub.replay_dead_letters(&f).await.map_err(hub_failed)?;
    Ok(Json(serde_json::to_value(&r).unwrap_or_default()))
}

/// `POST /api/events/dlq/purge {id|consumer|type|all, confirm}`: deleted for good.
pub async fn purge(State(st): State<Shared>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let f = sel.named()?;
    if !sel.confirm {
        return Err(preview(&st, &f, "purge", ", deleted for good").await?);
    }
    let hub = st.hub().await?;
    let _one_reader = st.dlq_lock.lock().await;
    let r = hub.purge_dead_letters(&f).await.map_err(hub_failed)?;
    Ok(Json(serde_json::to_value(&r).unwrap_or_default()))
}
