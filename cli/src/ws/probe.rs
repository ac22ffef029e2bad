//! `mfe ws probe` (SPEC §8): connects to `/ws` with a token and checks what a browser relies on —
//! the `connection:ack`, a `{"type":"ping"}` answered by `{"type":"pong"}` — then optionally
//! triggers `payment:created` (through the API, or straight onto RabbitMQ) or an announcement's
//! `notification:new` (through the admin API, to every socket) and measures its delivery; with `--connections N` it holds N sockets for `--duration` seconds and measures
//! the fan-out latency of one event per second to all of them.
//!
//! The token comes from `--token`, a sign-in (`--email`/`--password`), a local signature
//! (`--user-id`, JWT_SECRET) or, when none is given, a throwaway user signed up through the
//! stack's API (`probe-<uuid>@probe.mfe.local`, a random password): so `mfe ws probe` works
//! as written on a development stack, the way `test:websocket:e2e` did, without an account.
//! TLS trust is [`crate::tls`]'s: the stack's own dev CA is trusted without flags.
//!
//! Exit status 1 when any expectation fails.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::{
    connect_async_tls_with_config,
    tungstenite::{protocol::WebSocketConfig, Message},
    Connector, MaybeTlsStream, WebSocketStream,
};
use url::Url;

use crate::{
    report::{Check, Report},
    tls::{ClientTls, TlsArgs},
    Ctx,
};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What `--trigger` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Trigger {
    /// Create a payment through the API (`POST /api/payments` on the same host).
    Payment,
    /// Publish a `payments.payment.created` event straight to RabbitMQ (`RABBITMQ_URL`).
    Event,
    /// Publish an announcement through the API (`POST /api/admin/announcements`; the token
    /// must be an ADMIN's) and wait for its `notification:new`, which every socket receives.
    Announcement,
}

impl Trigger {
    /// The WebSocket message type each triggered event arrives as.
    fn message_type(self) -> &'static str {
        match self {
            Trigger::Payment | Trigger::Event => "payment:created",
            Trigger::Announcement => "notification:new",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Access token (JWT) to connect with. Without --token, --email or --user-id the probe
    /// signs up a throwaway user (probe-<uuid>@probe.mfe.local) through the API and uses its
    /// token (development stacks).
    #[arg(long, conflicts_with_all = ["email", "user_id"])]
    pub token: Option<String>,
    /// Sign in through the API with this email (needs --password) to obtain the token.
    #[arg(long, requires = "password", conflicts_with = "user_id")]
    pub email: Option<String>,
    #[arg(long, requires = "email")]
    pub password: Option<String>,
    /// Sign a token locally with JWT_SECRET for this user id (development stacks, benchmarks).
    #[arg(long)]
    pub user_id: Option<String>,
    /// Role of the locally signed token: ADMIN, CUSTOMER or VENDOR.
    #[arg(long, default_value = "CUSTOMER", requires = "user_id")]
    pub role: String,
    /// WebSocket URL; defaults to WS_URL (through nginx, wss://localhost/ws).
    #[arg(long)]
    pub url: Option<String>,
    /// Base URL of the API for sign-in and `--trigger payment`; defaults to the WebSocket
    /// URL's host with http(s).
    #[arg(long)]
    pub api_url: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Trigger an event and wait for its `payment:created` (`notification:new` for an
    /// announcement). With --connections above 1 the default is `event`.
    #[arg(long, value_enum)]
    pub trigger: Option<Trigger>,
    /// Sockets to hold at once.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds to hold the sockets; one event is triggered per second.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Seconds to wait for each expectation (ack, pong, an event's deliveries).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Connection attempts in flight at once while opening --connections sockets.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Other identifiers of an event (a created payment's id) → its index, for events that do not
/// carry the marker. Looked up only when the marker is missing.
type Pending = Arc<Mutex<HashMap<String, usize>>>;

/// Deliveries observed by the readers, written without locks so that 10 000 readers woken by
/// one event do not queue behind each other: the receipt time is taken when the frame is read,
/// before anything else, and stored in the reader's own slot.
///
/// Every instant is nanoseconds since `base` (+1, so 0 means "not yet").
struct Deliveries {
    base: Instant,
    /// Each event's marker is `{prefix}{index}`; the prefix names this run.
    prefix: String,
    /// When each event was triggered (set just before the publish or the API call).
    sent_at: Box<[AtomicU64]>,
    /// Sockets that received each event (the latest receipt is found from `arrivals` at the
    /// end: a shared maximum updated by every reader was a contended cache line per delivery).
    count: Box<[AtomicUsize]>,
    /// First receipt of event `e` on socket `r` at `r * events + e`.
    arrivals: Box<[AtomicU64]>,
    events: usize,
    closed: AtomicUsize,
    /// Identifiers other than the marker (payment ids).
    aliases: Pending,
}

impl Deliveries {
    fn new(sockets: usize, events: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self {
            base: Instant::now(),
            prefix: format!("probe-{}-", uuid::Uuid::new_v4().simple()),
            sent_at: zeros(events),
            count: (0..events).map(|_| AtomicUsize::new(0)).collect(),
            arrivals: zeros(sockets * events),
            events,
            closed: AtomicUsize::new(0),
            aliases: Arc::default(),
        }
    }

    fn marker(&self, event: usize) -> String {
        format!("{}{event}", self.prefix)
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.duration_since(self.base).as_nanos() as u64 + 1
    }

    fn triggered(&self, event: usize) {
        self.sent_at[event].store(self.stamp(Instant::now()), Ordering::Release);
    }

    /// The event a frame carries: its marker (`{prefix}{index}`), else a registered alias.
    fn event_of(&self, text: &str) -> Option<usize> {
        if let Some(at) = text.find(self.prefix.as_str()) {
            let digits = &text[at + self.prefix.len()..];
            let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
            return digits[..end].parse().ok().filter(|e| *e < self.events);
        }
        let aliases = self.aliases.lock().expect("aliases lock");
        aliases.iter().find(|(id, _)| text.contains(id.as_str())).map(|(_, e)| *e)
    }

    /// Records that socket `reader` received `event` at `at` (first receipt only).
    fn record(&self, reader: usize, event: usize, at: Instant) {
        let stamp = self.stamp(at);
        let slot = &self.arrivals[reader * self.events + event];
        if slot.compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.count[event].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Deliveries recorded, all events together.
    fn total(&self) -> usize {
        self.count.iter().map(|c| c.load(Ordering::Acquire)).sum()
    }

    /// Latency of every recorded delivery (µs), and deliveries per second of each event (its
    /// receipts over the time from its trigger to its last receipt).
    fn summary(&self) -> (Histogram<u64>, Vec<f64>) {
        let mut hist = Histogram::<u64>::new(3).expect("valid histogram");
        let mut last = vec![0u64; self.events];
        for (i, slot) in self.arrivals.iter().enumerate() {
            let at = slot.load(Ordering::Acquire);
            let sent = self.sent_at[i % self.events].load(Ordering::Acquire);
            if at != 0 && sent != 0 {
                let _ = hist.record(at.saturating_sub(sent) / 1000);
                last[i % self.events] = last[i % self.events].max(at);
            }
        }
        let rates = (0..self.events)
            .filter_map(|e| {
                let sent = self.sent_at[e].load(Ordering::Acquire);
                let span = last[e].checked_sub(sent).filter(|s| *s > 0)? as f64 / 1e9;
                Some(self.count[e].load(Ordering::Acquire) as f64 / span)
            })
            .collect();
        (hist, rates)
    }
}

pub async fn run(ctx: &Ctx, args: ProbeArgs) -> anyhow::Result<()> {
    if !ctx.json {
        eprintln!("ws probe of {}", args.url.as_deref().unwrap_or(&ctx.config.ws_url));
    }
    probe(ctx, &args).await?.emit(ctx.json)
}

/// Runs the probe and returns its report (errors only for unusable arguments).
pub async fn probe(ctx: &Ctx, args: &ProbeArgs) -> anyhow::Result<Report> {
    let ws_url = Url::parse(args.url.as_deref().unwrap_or(&ctx.config.ws_url)).context("--url is not a valid URL")?;
    if !matches!(ws_url.scheme(), "ws" | "wss") {
        bail!("--url must start with ws:// or wss:// (got {ws_url})");
    }
    let api_url = match &args.api_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let mut u = ws_url.clone();
            let scheme = if ws_url.scheme() == "wss" { "https" } else { "http" };
            u.set_scheme(scheme).map_err(|_| anyhow::anyhow!("cannot derive the API URL from {ws_url}"))?;
            u.set_path("");
            u.set_query(None);
            u.as_str().trim_end_matches('/').to_string()
        }
    };
    let tls = args.tls.for_stack(&ctx.config)?;
    let http = tls.http_client()?;
    let connector = if ws_url.scheme() == "wss" { Some(tls.ws_connector()) } else { None };
    let wait = Duration::from_secs(args.timeout.max(1));
    let mut report = Report::new("ws probe");

    // 1. The token.
    let token = match (&args.token, &args.email, &args.user_id) {
        (Some(t), _, _) => {
            report.push(Check::new("token", true, "given with --token"));
            t.clone()
        }
        (None, Some(email), _) => {
            match sign_in(&http, &tls, &api_url, email, args.password.as_deref().unwrap_or("")).await {
                Ok(t) => {
                    report.push(Check::new("token", true, format!("signed in as {email} at {api_url}")));
                    t
                }
                Err(e) => {
                    report.push(Check::new("token", false, format!("{e:#}")));
                    return Ok(report);
                }
            }
        }
        (None, None, Some(user)) => {
            let role: mfe_kit::Role = args.role.parse().map_err(anyhow::Error::msg)?;
            let keys = mfe_kit::JwtKeys::new(&ctx.config.jwt_secret);
            let ttl = Duration::from_secs(args.duration + 3600);
            let (t, _) = keys.issue(user, role, ttl, None).context("cannot sign a token with JWT_SECRET")?;
            report.push(Check::new("token", true, format!("signed locally for {user} ({role}) with JWT_SECRET")));
            t
        }
        (None, None, None) => match sign_up_probe_user(&http, &tls, &api_url).await {
            Ok((email, t)) => {
                let line = format!("signed up throwaway user {email} at {api_url} (no --token, --email or --user-id)");
                if !ctx.json {
                    eprintln!("ws probe: {line}");
                }
                report.push(Check::new("token", true, line));
                t
            }
            Err(e) => {
                report.push(Check::new("token", false, format!("{e:#}")));
                return Ok(report);
            }
        },
    };
    let claims_sub = token_subject(&token);

    let mut url = ws_url.clone();
    url.query_pairs_mut().append_pair("token", &token);
    let url = url.to_string();
    let n = args.connections.max(1);
    let trigger = args.trigger.or((n > 1).then_some(Trigger::Event));

    // 2. Connect (and check each ack).
    let started = Instant::now();
    let mut connect_ms = Histogram::<u64>::new(3).expect("valid histogram");
    let mut sockets: Vec<Socket> = Vec::with_capacity(n);
    let mut failures: HashMap<String, usize> = HashMap::new();
    let mut bad_acks = 0usize;
    let results = futures::stream::iter(0..n)
        .map(|_| connect_one(&url, ws_url.as_str(), &tls, connector.clone(), wait))
        .buffer_unordered(args.connect_concurrency.max(1));
    futures::pin_mut!(results);
    while let Some(result) = results.next().await {
        match result {
            Ok((socket, ack, took)) => {
                let _ = connect_ms.record(took.as_millis() as u64);
                if !ack_is_valid(&ack, claims_sub.as_deref()) {
                    bad_acks += 1;
                }
                sockets.push(socket);
            }
            Err(e) => *failures.entry(format!("{e:#}")).or_default() += 1,
        }
    }
    let connected = sockets.len();
    let failed = n - connected;
    let mut detail = format!("{connected}/{n} connected in {:.1} s", started.elapsed().as_secs_f64());
    if let Some((reason, count)) = failures.iter().max_by_key(|(_, c)| **c) {
        detail.push_str(&format!("; {count} failed: {reason}"));
    }
    report.push(
        Check::new("connect", failed == 0, detail)
            .metric("connected", connected)
            .metric("failed", failed)
            .metric("connect_p95_ms", connect_ms.value_at_quantile(0.95)),
    );
    report.metric("connections", n);
    report.metric("connected", connected);
    report.metric("failed", failed);
    if connected == 0 {
        return Ok(report);
    }
    report.push(Check::new(
        "ack",
        bad_acks == 0,
        if bad_acks == 0 {
            "connection:ack with the user id and its rooms".to_string()
        } else {
            format!("{bad_acks} sockets got a malformed connection:ack")
        },
    ));

    // 3. Application ping/pong on one socket.
    let pong = ping_pong(&mut sockets[0], wait).await;
    report.push(match pong {
        Ok(rtt) => Check::new("ping-pong", true, "{\"type\":\"ping\"} answered by {\"type\":\"pong\"}")
            .metric("rtt_ms", rtt.as_secs_f64() * 1000.0),
        Err(e) => Check::new("ping-pong", false, format!("{e:#}")),
    });

    let Some(trigger) = trigger else { return Ok(report) };

    // 4. Readers on every socket, then one trigger per second for --duration.
    let n_events = if n > 1 { args.duration.max(1) as usize } else { 1 };
    let deliveries = Arc::new(Deliveries::new(connected, n_events));
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(read_events(s, i, deliveries.clone(), trigger.message_type())))
        .collect();
    let hub = match trigger {
        Trigger::Event => Some(
            mfe_events::Hub::connect(mfe_events::HubConfig::from_env()?.with_connection_name("mfe-ws-probe"))
                .await
                .context("--trigger event publishes to RABBITMQ_URL")?,
        ),
        Trigger::Payment | Trigger::Announcement => None,
    };
    let sender = claims_sub.clone().unwrap_or_default();
    let mut trigger_errors = Vec::new();
    let mut markers = Vec::new();
    let hold_until = Instant::now() + Duration::from_secs(args.duration);
    for i in 0..n_events {
        let marker = deliveries.marker(i);
        deliveries.triggered(i);
        let sent = match trigger {
            Trigger::Event => {
                let env = mfe_events::Envelope::new(
                    mfe_events::types::PAYMENTS_PAYMENT_CREATED,
                    "mfe-ws-probe",
                    json!({"senderId": sender, "probeMarker": marker, "amount": "1.00", "currency": "USD"}),
                );
                hub.as_ref().expect("hub for events").publish(&env).await.map_err(anyhow::Error::from)
            }
            Trigger::Payment => create_payment(&http, &tls, &api_url, &token, &marker, i, &deliveries.aliases).await,
            Trigger::Announcement => {
                let body =
                    json!({"title": "mfe ws probe", "message": format!("mfe ws probe {marker}"), "level": "info"});
                let url = format!("{api_url}/api/admin/announcements");
                post_json(&http, &tls, &url, Some(&token), &body, "publishing an announcement").await.map(|_| ())
            }
        };
        match sent {
            Ok(()) => markers.push(i),
            Err(e) => trigger_errors.push(format!("{e:#}")),
        }
        if i + 1 < n_events {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Wait until every event reached every socket, or the timeout.
    let expected_each = connected;
    let deadline = Instant::now() + wait;
    loop {
        let done = markers.iter().all(|e| deliveries.count[*e].load(Ordering::Acquire) >= expected_each);
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if n > 1 {
        tokio::time::sleep_until(hold_until.max(Instant::now()).into()).await;
    }
    if let Some(hub) = hub {
        hub.close().await;
    }
    let closed_early = deliveries.closed.load(Ordering::Relaxed);
    for r in readers {
        r.abort();
    }

    let (hist, rates) = deliveries.summary();
    let expected = expected_each * markers.len();
    let total = deliveries.total();
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let deliveries_per_s = if rates.is_empty() { 0.0 } else { rates.iter().sum::<f64>() / rates.len() as f64 };
    let name = match trigger {
        Trigger::Payment => "trigger-payment",
        Trigger::Event => "trigger-event",
        Trigger::Announcement => "trigger-announcement",
    };
    let ok = trigger_errors.is_empty() && total >= expected && expected > 0;
    let mut detail = format!(
        "{total}/{expected} {} deliveries ({} events × {expected_each} sockets)",
        trigger.message_type(),
        markers.len()
    );
    if let Some(e) = trigger_errors.first() {
        detail = format!("{} of {n_events} triggers failed: {e}", trigger_errors.len());
    }
    report.push(
        Check::new(if n > 1 { "fan-out" } else { name }, ok, detail)
            .metric("latency_p50_ms", pct(0.50))
            .metric("latency_p95_ms", pct(0.95))
            .metric("latency_p99_ms", pct(0.99))
            .metric("deliveries_per_s", deliveries_per_s.round()),
    );
    if n > 1 {
        report.push(Check::new(
            "held",
            closed_early == 0,
            format!("{} of {connected} sockets open after {} s", connected - closed_early, args.duration),
        ));
    }
    report.metric("latency_p50_ms", pct(0.50));
    report.metric("latency_p95_ms", pct(0.95));
    report.metric("latency_p99_ms", pct(0.99));
    report.metric("deliveries_per_s", deliveries_per_s.round());
    Ok(report)
}

/// `POST url` with a JSON body (and a bearer token) → the JSON answer; a TLS failure is the
/// [`ClientTls`] line, a non-2xx answer one line with the API's own error message.
async fn post_json(
    http: &reqwest::Client,
    tls: &ClientTls,
    url: &str,
    token: Option<&str>,
    body: &Value,
    what: &str,
) -> anyhow::Result<Value> {
    let mut request = http.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request
        .send()
        .await
        .map_err(|e| tls.error(url, e, format!("{what} at {url} failed — is the stack up? try `mfe up`")))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{what} at {url} answered {status}: {}", answer["error"]["message"].as_str().unwrap_or("no message"));
    }
    Ok(answer)
}

/// `POST /api/auth/signin` → the access token.
async fn sign_in(
    http: &reqwest::Client,
    tls: &ClientTls,
    api: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let url = format!("{api}/api/auth/signin");
    let body = post_json(http, tls, &url, None, &json!({"email": email, "password": password}), "sign-in").await?;
    body["accessToken"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("sign-in at {url} answered without accessToken"))
}

/// `POST /api/auth/signup` of a throwaway user → its email and access token. The password
/// meets the auth service's policy (8–128 characters, a letter and a digit) and is never
/// printed: 122 random bits of a v4 UUID between fixed letters and digits.
async fn sign_up_probe_user(http: &reqwest::Client, tls: &ClientTls, api: &str) -> anyhow::Result<(String, String)> {
    let url = format!("{api}/api/auth/signup");
    let email = format!("probe-{}@probe.mfe.local", uuid::Uuid::new_v4());
    let password = format!("Probe-{}-1", uuid::Uuid::new_v4().simple());
    let body = post_json(
        http,
        tls,
        &url,
        None,
        &json!({"email": email, "password": password, "name": "mfe ws probe"}),
        "sign-up of a throwaway probe user",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{} — pass --token or --email/--password", crate::error_line(&e)))?;
    let token = body["accessToken"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("sign-up at {url} answered without accessToken"))?;
    Ok((email, token))
}

/// `POST /api/payments` with the marker in the description; the created id is also registered
/// as a marker (the event may carry either).
async fn create_payment(
    http: &reqwest::Client,
    tls: &ClientTls,
    api: &str,
    token: &str,
    marker: &str,
    event: usize,
    aliases: &Pending,
) -> anyhow::Result<()> {
    let url = format!("{api}/api/payments");
    let payment = json!({"amount": "1.00", "currency": "USD", "type": "instant", "description": format!("mfe ws probe {marker}")});
    let body = post_json(http, tls, &url, Some(token), &payment, "creating a payment").await?;
    let id = body["id"].as_str().or_else(|| body["payment"]["id"].as_str()).or_else(|| body["data"]["id"].as_str());
    if let Some(id) = id {
        aliases.lock().expect("aliases lock").insert(id.to_string(), event);
    }
    Ok(())
}

/// Opens one socket and reads its first message (the ack). `server` is the URL without the
/// token, for error lines.
async fn connect_one(
    url: &str,
    server: &str,
    tls: &ClientTls,
    connector: Option<Connector>,
    wait: Duration,
) -> anyhow::Result<(Socket, Value, Duration)> {
    let started = Instant::now();
    // Small buffers: the probe may hold 10 000 sockets in one process, and tungstenite zeroes
    // the free part of the read buffer before every read (4 KiB was a memset per delivery;
    // an event is a few hundred bytes, and a larger frame grows the buffer).
    let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
    let (mut socket, _) = tokio::time::timeout(wait, connect_async_tls_with_config(url, Some(config), true, connector))
        .await
        .map_err(|_| anyhow::anyhow!("no handshake within {} s", wait.as_secs()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => anyhow::anyhow!(
                "upgrade refused with HTTP {}: {}",
                resp.status(),
                resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default()
            ),
            other => anyhow::anyhow!(tls.explain(server, &other).unwrap_or_else(|| redact(&other.to_string()))),
        })?;
    let took = started.elapsed();
    let ack = next_json(&mut socket, wait).await.context("waiting for connection:ack")?;
    Ok((socket, ack, took))
}

fn ack_is_valid(ack: &Value, sub: Option<&str>) -> bool {
    ack["type"] == "connection:ack"
        && ack["payload"]["rooms"].as_array().is_some_and(|r| r.iter().any(|x| x == "broadcast"))
        && sub.is_none_or(|s| ack["payload"]["userId"] == s)
        && ack["timestamp"].is_string()
}

async fn ping_pong(socket: &mut Socket, wait: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    socket.send(Message::Text(r#"{"type":"ping"}"#.into())).await.context("sending ping")?;
    loop {
        let v = next_json(socket, wait).await.context("waiting for pong")?;
        if v["type"] == "pong" {
            return Ok(started.elapsed());
        }
    }
}

async fn next_json(socket: &mut Socket, wait: Duration) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => bail!("nothing within {} s", wait.as_secs()),
            Ok(None) => bail!("the server closed the socket"),
            Ok(Some(Err(e))) => bail!("socket error: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).context("a non-JSON message"),
            Ok(Some(Ok(Message::Close(f)))) => bail!("the server closed the socket: {f:?}"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads socket number `reader` until it ends, recording when each probe event arrives.
async fn read_events(mut socket: Socket, reader: usize, deliveries: Arc<Deliveries>, message_type: &'static str) {
    while let Some(frame) = socket.next().await {
        // The receipt time comes first: whatever follows must not count as delivery latency.
        let now = Instant::now();
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if !text.as_str().contains(message_type) {
            continue;
        }
        if let Some(event) = deliveries.event_of(text.as_str()) {
            deliveries.record(reader, event, now);
        }
    }
    deliveries.closed.fetch_add(1, Ordering::Relaxed);
}

/// The `sub` claim of a JWT without verifying it (the server does that); for checking the ack.
fn token_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    serde_json::from_slice::<Value>(&bytes).ok()?["sub"].as_str().map(String::from)
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Errors may quote the URL; never print the token it carries.
fn redact(s: &str) -> String {
    match s.find("token=") {
        Some(i) => {
            let end = s[i..].find(|c: char| c == '&' || c.is_whitespace()).map_or(s.len(), |e| i + e);
            format!("{}token=***{}", &s[..i], &s[end..])
        }
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_a_token_without_verifying_it() {
        let keys = mfe_kit::JwtKeys::new("a-secret-long-enough-for-the-probe-tests");
        let (t, _) = keys.issue("user-9", mfe_kit::Role::Admin, Duration::from_secs(60), None).unwrap();
        assert_eq!(token_subject(&t).as_deref(), Some("user-9"));
        assert_eq!(token_subject("garbage"), None);
    }

    #[test]
    fn a_delivery_is_matched_by_its_marker_and_counted_once_per_socket() {
        let d = Deliveries::new(2, 3);
        let text = format!(r#"{{"type":"payment:created","payload":{{"probeMarker":"{}"}}}}"#, d.marker(2));
        assert_eq!(d.event_of(&text), Some(2));
        assert_eq!(d.event_of(r#"{"payload":{"probeMarker":"probe-otherrun-1"}}"#), None);
        assert_eq!(d.event_of(&format!("{}7", d.prefix)), None, "no such event in this run");
        d.triggered(2);
        let at = Instant::now() + Duration::from_millis(5);
        d.record(0, 2, at);
        d.record(0, 2, at + Duration::from_secs(1));
        d.record(1, 2, at);
        assert_eq!(d.count[2].load(Ordering::Relaxed), 2);
        assert_eq!(d.total(), 2);
        let (hist, rates) = d.summary();
        assert_eq!(hist.len(), 2);
        assert!(hist.min() >= 5_000 && hist.max() < 1_000_000, "{} µs .. {} µs", hist.min(), hist.max());
        assert_eq!(rates.len(), 1);
    }

    #[test]
    fn a_delivery_without_the_marker_is_matched_by_a_registered_payment_id() {
        let d = Deliveries::new(1, 2);
        d.aliases.lock().unwrap().insert("pay-42".into(), 1);
        assert_eq!(d.event_of(r#"{"type":"payment:created","payload":{"id":"pay-42"}}"#), Some(1));
        assert_eq!(d.event_of(r#"{"type":"payment:created","payload":{"id":"pay-43"}}"#), None);
    }

    #[test]
    fn tokens_in_error_text_are_redacted() {
        assert_eq!(redact("GET /ws?token=abc.def&x=1 failed"), "GET /ws?token=***&x=1 failed");
    }

    #[test]
    fn an_ack_must_name_the_tokens_user_and_the_broadcast_room() {
        let ack = json!({"type": "connection:ack", "payload": {"userId": "u1", "rooms": ["user:u1", "role:admin", "broadcast"]}, "timestamp": "t"});
        assert!(ack_is_valid(&ack, Some("u1")));
        assert!(!ack_is_valid(&ack, Some("u2")));
        assert!(!ack_is_valid(&json!({"type": "pong"}), None));
    }
}
