//! The steady workload of `mfe test chaos`, sent through the front door (nginx) as users would:
//! sign-ups, payments created and moved through their states by an admin, profile and config
//! changes, and one WebSocket client per actor that records every frame it receives.
//!
//! Bounded in count and time: one operation per tick at `rate` per second, at most
//! [`MAX_IN_FLIGHT`] at once (a tick that finds them all busy is skipped and counted), until the
//! stop signal.
//!
//! Each actor sends from a loopback address of its own (127.0.0.2, 127.0.0.3, …), as users come
//! from addresses of their own: nginx's `api` zone allows 100 requests a minute per address, so
//! the workload has enough actors that none acts more than [`ACTS_PER_SECOND`] times a second.

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use mfe_kit::{JwtKeys, Role};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::{client_async_tls_with_config, tungstenite::Message, Connector};

use super::history::{Ms, Request, SocketClient};
use crate::tls::ClientTls;

/// Operations in flight at once, so a stalled stack cannot pile up unbounded work.
pub const MAX_IN_FLIGHT: usize = 32;
/// The most one actor acts per second: under nginx's 100 requests a minute per address.
pub const ACTS_PER_SECOND: f64 = 1.25;
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The run's clock: milliseconds since the suite started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl Clock {
    pub fn new() -> Self {
        Self { started: Instant::now(), started_at: chrono::Utc::now() }
    }

    pub fn now(&self) -> Ms {
        self.started.elapsed().as_millis() as Ms
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Someone acting on the platform: a signed-up customer or an admin (operator), with the
/// address it sends from and its HTTP client bound to it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub user_id: String,
    pub role: Role,
    pub token: String,
    pub address: IpAddr,
    pub http: reqwest::Client,
}

/// The loopback address of the `n`-th actor: 127.0.0.2 onwards (127.0.0.1 is everyone else's).
pub fn actor_address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + 1 + n as u32))
}

/// How many customers and operators a rate needs so that nobody acts more than
/// [`ACTS_PER_SECOND`]: half the operations are each side's.
pub fn actors_for(rate: u32, min_customers: usize) -> (usize, usize) {
    let per_side = (f64::from(rate) * 0.5 / ACTS_PER_SECOND).ceil() as usize;
    (per_side.max(min_customers).max(1), per_side.max(1))
}

impl Actor {
    /// The rooms the gateway puts this actor's sockets in (SPEC §8).
    pub fn rooms(&self) -> Vec<String> {
        vec![
            mfe_gateway::routing::user_room(&self.user_id),
            mfe_gateway::routing::role_room(self.role.as_str()),
            mfe_gateway::routing::BROADCAST_ROOM.to_string(),
        ]
    }
}

/// Where the workload sends its traffic.
#[derive(Clone)]
pub struct Front {
    /// `https://host:port` of nginx.
    pub api: String,
    /// `wss://host:port/ws` of nginx.
    pub ws: String,
    pub tls: ClientTls,
}

impl Front {
    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req.timeout(REQUEST_TIMEOUT).send().await.map_err(|e| self.tls.error(&self.api, e, what))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{what}: HTTP {status} {body}");
        Ok(body)
    }

    /// Signs up a fresh customer, the run's `n`-th actor.
    pub async fn sign_up(&self, run: &str, n: usize) -> anyhow::Result<Actor> {
        let address = actor_address(n);
        let http = self.tls.http_client_from(Some(address))?;
        let email = format!("chaos-{run}-{n}@chaos.mfe.local");
        let body = json!({"email": email, "password": format!("Chaos-{run}-{n}-pw"), "name": format!("chaos {n}")});
        let answer = self.send(http.post(format!("{}/api/auth/signup", self.api)).json(&body), "sign-up").await?;
        let token = answer["accessToken"].as_str().context("sign-up answered without accessToken")?.to_string();
        let user_id = answer["user"]["id"].as_str().context("sign-up answered without user.id")?.to_string();
        Ok(Actor { name: format!("user-{n}"), user_id, role: Role::Customer, token, address, http })
    }

    /// An operator (admin), the run's `n`-th actor: a token signed with the stack's JWT secret,
    /// as the admin tooling of a development stack does (no admin account is created).
    pub fn operator(&self, secret: &str, run: &str, n: usize) -> anyhow::Result<Actor> {
        let address = actor_address(n);
        let user_id = format!("chaos-admin-{run}-{n}");
        let (token, _) = JwtKeys::new(secret)
            .issue(&user_id, Role::Admin, Duration::from_secs(3600), None)
            .context("cannot sign the admin token with JWT_SECRET")?;
        let http = self.tls.http_client_from(Some(address))?;
        Ok(Actor { name: format!("admin-{n}"), user_id, role: Role::Admin, token, address, http })
    }
}

/// A payment on its way through its states.
#[derive(Debug, Clone)]
struct Moving {
    id: String,
    status: &'static str,
}

/// What the operations recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub requests: Vec<Request>,
    pub skipped_ticks: u64,
    /// The first few failure lines, for the report.
    pub failures: Vec<String>,
    pub payments_created: u64,
    pub status_changes: u64,
}

/// Runs the operations until `stop` turns true.
pub async fn operate(
    front: Front,
    customers: Vec<Actor>,
    operators: Vec<Actor>,
    rate: u32,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> Recorded {
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let moving: Arc<Mutex<VecDeque<Moving>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        n += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            recorded.lock().unwrap().skipped_ticks += 1;
            continue;
        };
        let (front, recorded, moving) = (front.clone(), recorded.clone(), moving.clone());
        let customer = customers[(n / 2) as usize % customers.len()].clone();
        let admin = operators[(n / 2) as usize % operators.len()].clone();
        tasks.spawn(async move {
            let at = clock.now();
            let result = one_operation(n, &front, &customer, &admin, &moving, &recorded).await;
            let mut r = recorded.lock().unwrap();
            r.requests.push(Request { at, ok: result.is_ok() });
            if let Err(e) = result {
                if r.failures.len() < 5 {
                    r.failures.push(format!("{:.0} s: {}", at as f64 / 1000.0, crate::error_line(&e)));
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(recorded).map(|m| m.into_inner().unwrap()).unwrap_or_default()
}

/// One operation of the mix: of every ten, four create a payment, four move one a step (an
/// operator, standing in for the payment provider), one changes a profile, one a config key.
async fn one_operation(
    n: u64,
    front: &Front,
    customer: &Actor,
    admin: &Actor,
    moving: &Mutex<VecDeque<Moving>>,
    recorded: &Mutex<Recorded>,
) -> anyhow::Result<()> {
    let api = &front.api;
    match n % 10 {
        0..=3 => {
            let body = json!({"amount": format!("{}.00", 10 + n % 90), "currency": "USD",
                "recipientId": format!("chaos-recipient-{}", n % 7), "description": "chaos workload"});
            let req = customer.http.post(format!("{api}/api/payments")).bearer_auth(&customer.token).json(&body);
            let answer = front.send(req, "create payment").await?;
            let id = answer["id"].as_str().or(answer["payment"]["id"].as_str()).context("payment without id")?;
            moving.lock().unwrap().push_back(Moving { id: id.to_string(), status: "pending" });
            recorded.lock().unwrap().payments_created += 1;
        }
        4..=7 => {
            let Some(mut p) = moving.lock().unwrap().pop_front() else { return Ok(()) };
            let next = match p.status {
                "pending" => "processing",
                _ if n.is_multiple_of(3) => "failed",
                _ => "completed",
            };
            let req = admin
                .http
                .patch(format!("{api}/api/payments/{}/status", p.id))
                .bearer_auth(&admin.token)
                .json(&json!({"status": next}));
            match front.send(req, "change payment status").await {
                Ok(_) => {
                    recorded.lock().unwrap().status_changes += 1;
                    if next == "processing" {
                        p.status = "processing";
                        moving.lock().unwrap().push_back(p);
                    }
                }
                Err(e) => {
                    // Tried again later: the status change is what the events follow.
                    moving.lock().unwrap().push_front(p);
                    return Err(e);
                }
            }
        }
        8 => {
            let body = json!({"bio": format!("chaos bio {n}"), "preferences": {"theme": if n.is_multiple_of(2) { "dark" } else { "light" }}});
            let req = customer.http.put(format!("{api}/api/profile/me")).bearer_auth(&customer.token).json(&body);
            front.send(req, "update profile").await?;
        }
        _ => {
            let body = json!({"value": {"n": n}, "description": "mfe test chaos"});
            let req =
                admin.http.put(format!("{api}/api/admin/config/chaos.workload")).bearer_auth(&admin.token).json(&body);
            front.send(req, "set config").await?;
        }
    }
    Ok(())
}

/// Keeps one socket of `actor` open until `stop`, reconnecting after a loss, and records every
/// frame that carries an event id.
pub async fn watch_socket(
    front: Front,
    actor: Actor,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    connected_tx: Option<tokio::sync::oneshot::Sender<()>>,
) -> SocketClient {
    let mut log = SocketClient { name: actor.name.clone(), ..SocketClient::default() };
    let mut connected_tx = connected_tx;
    let mut url = url::Url::parse(&front.ws).expect("the ws URL was checked");
    url.query_pairs_mut().append_pair("token", &actor.token);
    let connector = (url.scheme() == "wss").then(|| front.tls.ws_connector());
    while !*stop.borrow() {
        let attempt =
            tokio::time::timeout(REQUEST_TIMEOUT, connect_socket(url.as_str(), actor.address, connector.clone()));
        let mut socket = match attempt.await {
            Ok(Ok(s)) => s,
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let from = clock.now();
        if let Some(tx) = connected_tx.take() {
            let _ = tx.send(());
        }
        loop {
            let frame = tokio::select! {
                f = socket.next() => f,
                _ = stop.changed() => {
                    if *stop.borrow() {
                        let _ = socket.close(None).await;
                        break;
                    }
                    continue;
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(id) = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["eventId"].as_str().and_then(|s| s.parse().ok()))
                    {
                        log.received.push((id, clock.now()));
                    }
                }
                Some(Ok(Message::Ping(p))) => {
                    let _ = socket.send(Message::Pong(p)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        log.connected.push((from, clock.now()));
    }
    log
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects from `local` and waits for the gateway's `connection:ack` (from then on the socket
/// is in its rooms).
async fn connect_socket(url: &str, local: IpAddr, connector: Option<Connector>) -> anyhow::Result<Socket> {
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().context("the ws URL has no host")?;
    let port = parsed.port_or_known_default().context("the ws URL has no port")?;
    let server = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4())
        .with_context(|| format!("{host} has no IPv4 address to reach from {local}"))?;
    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.bind(std::net::SocketAddr::new(local, 0))?;
    let stream = tcp.connect(server).await?;
    let (mut socket, _) = client_async_tls_with_config(url, stream, None, connector).await?;
    while let Some(frame) = socket.next().await {
        if let Message::Text(text) = frame? {
            if serde_json::from_str::<Value>(&text).is_ok_and(|v| v["type"] == "connection:ack") {
                return Ok(socket);
            }
        }
    }
    anyhow::bail!("the socket closed before its connection:ack")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_get_loopback_addresses_of_their_own() {
        assert_eq!(actor_address(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let all: std::collections::HashSet<IpAddr> = (0..600).map(actor_address).collect();
        assert_eq!(all.len(), 600);
        assert!(all.iter().all(|a| a.is_loopback() && *a != IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }

    #[test]
    fn a_rate_gets_enough_actors_that_none_exceeds_the_per_address_limit() {
        for rate in [1, 10, 20, 50] {
            let (customers, operators) = actors_for(rate, 1);
            assert!(f64::from(rate) / 2.0 / customers as f64 <= ACTS_PER_SECOND, "{rate}");
            assert!(f64::from(rate) / 2.0 / operators as f64 <= ACTS_PER_SECOND, "{rate}");
        }
        assert_eq!(actors_for(10, 7), (7, 4));
    }
}
