//! `mfe test proxy`: sign-in and CRUD through the gateway and through nginx, the way a browser
//! would use the API: sign-up and sign-in (POST with a body), GET, PUT and PATCH with bodies, a
//! large streamed upload, and the error mapping (JSON 404; 502 when an upstream is down).
//!
//! Every request goes through one client with [`crate::tls`]'s trust (the stack's own dev CA
//! without flags). An HTTPS front is first asked for `/health` once: when its certificate is
//! not trusted, that one check says so (server, CA files tried, what to do) instead of every
//! check of the suite failing with the same handshake error.
//!
//! The 502 check runs an in-process gateway whose upstreams point at a closed port, so it never
//! has to stop a service of the running stack.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::{
    report::{Check, Report},
    tls::{ClientTls, TlsArgs},
    Ctx,
};

#[derive(Debug, clap::Args)]
pub struct ProxyTestArgs {
    /// The gateway; defaults to GATEWAY_URL.
    #[arg(long)]
    pub gateway_url: Option<String>,
    /// nginx in front of it; defaults to https://NGINX_HOST:NGINX_HTTPS_PORT.
    #[arg(long)]
    pub nginx_url: Option<String>,
    /// Which fronts to test.
    #[arg(long, value_enum, default_value = "both")]
    pub through: Through,
    /// Size of the streamed upload, in MiB.
    #[arg(long, default_value_t = 32)]
    pub upload_mb: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Through {
    Gateway,
    Nginx,
    Both,
}

pub async fn run(ctx: &Ctx, args: ProxyTestArgs) -> anyhow::Result<()> {
    let gateway = args.gateway_url.clone().unwrap_or_else(|| ctx.config.gateway_url.clone());
    let nginx = args
        .nginx_url
        .clone()
        .unwrap_or_else(|| format!("https://{}:{}", ctx.config.nginx_host, ctx.config.nginx_https_port));
    let tls = args.tls.for_stack(&ctx.config)?;
    let http = tls.http_client()?;
    let mut report = Report::new("test proxy");
    let mut fronts = Vec::new();
    if args.through != Through::Nginx {
        fronts.push(("gateway", gateway.trim_end_matches('/').to_string()));
    }
    if args.through != Through::Gateway {
        fronts.push(("nginx", nginx.trim_end_matches('/').to_string()));
    }
    for (front, base) in &fronts {
        if !ctx.json {
            eprintln!("test proxy: through {front} at {base}");
        }
        if base.starts_with("https:") {
            if let Some(trusted) = certificate_check(&http, &tls, front, base).await {
                let passed = trusted.passed;
                report.push(trusted);
                if !passed {
                    continue;
                }
            }
        }
        for check in suite(&http, front, base, args.upload_mb).await {
            report.push(check);
        }
    }
    report.push(upstream_down_check(&http).await);
    report.emit(ctx.json)
}

/// `GET {base}/health` over HTTPS: whether the front's certificate is trusted; `None` when the
/// request failed otherwise (left to the suite's own checks, which say more about it).
async fn certificate_check(http: &reqwest::Client, tls: &ClientTls, front: &str, base: &str) -> Option<Check> {
    let name = format!("{front}: certificate");
    let url = format!("{base}/health");
    match http.get(&url).send().await {
        Err(e) => tls.explain(base, &e).map(|line| Check::new(name, false, line)),
        Ok(_) => Some(Check::new(name, true, format!("verified against {}", tls.trusted()))),
    }
}

/// The checks through one front (`gateway` or `nginx`).
pub async fn suite(http: &reqwest::Client, front: &str, base: &str, upload_mb: u64) -> Vec<Check> {
    let mut checks = Vec::new();
    let name = |n: &str| format!("{front}: {n}");
    let email = format!("proxy-test-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "proxy-test-Password-1";

    // Sign-up then sign-in, both POST with a JSON body.
    let signup = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/auth/signup"),
        None,
        Some(json!({"email": email, "password": password, "name": "Proxy Test"})),
    )
    .await;
    checks.push(expect_2xx(name("sign-up (POST)"), &signup));
    let signin = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/auth/signin"),
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await;
    let token = signin.as_ref().ok().and_then(|(_, b, _)| b["accessToken"].as_str().map(String::from));
    checks.push(match (&signin, &token) {
        (Ok((s, _, t)), Some(_)) if s.is_success() => ok_check(name("sign-in (POST)"), *s, *t),
        (Ok((s, b, _)), _) => {
            Check::new(name("sign-in (POST)"), false, format!("answered {s} without accessToken: {}", short(b)))
        }
        (Err(e), _) => Check::new(name("sign-in (POST)"), false, format!("{e:#}")),
    });
    let Some(token) = token else { return checks };

    let me = call(http, reqwest::Method::GET, &format!("{base}/api/auth/me"), Some(&token), None).await;
    checks.push(match &me {
        Ok((s, b, t)) if s.is_success() && b.to_string().contains(&email) => ok_check(name("GET /api/auth/me"), *s, *t),
        other => failed(name("GET /api/auth/me"), other),
    });

    let bio = format!("bio via {front} {}", uuid::Uuid::new_v4().simple());
    let put = call(
        http,
        reqwest::Method::PUT,
        &format!("{base}/api/profile/me"),
        Some(&token),
        Some(json!({"bio": bio, "phone": "+15550100"})),
    )
    .await;
    let read_back = call(http, reqwest::Method::GET, &format!("{base}/api/profile/me"), Some(&token), None).await;
    checks.push(match (&put, &read_back) {
        (Ok((s, _, t)), Ok((_, b, _))) if s.is_success() && b.to_string().contains(&bio) => {
            ok_check(name("PUT /api/profile/me"), *s, *t)
        }
        (Ok((s, _, _)), Ok((_, b, _))) if s.is_success() => {
            Check::new(name("PUT /api/profile/me"), false, format!("saved but not read back: {}", short(b)))
        }
        (put, _) => failed(name("PUT /api/profile/me"), put),
    });

    let created = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/payments"),
        Some(&token),
        Some(json!({"amount": "12.34", "currency": "USD", "type": "instant", "description": "mfe test proxy"})),
    )
    .await;
    let payment_id = created
        .as_ref()
        .ok()
        .and_then(|(_, b, _)| b["id"].as_str().or_else(|| b["payment"]["id"].as_str()).map(String::from));
    checks.push(match (&created, &payment_id) {
        (Ok((s, _, t)), Some(_)) if s.is_success() => ok_check(name("POST /api/payments"), *s, *t),
        (other, _) => failed(name("POST /api/payments"), other),
    });
    if let Some(id) = payment_id {
        let patch = call(
            http,
            reqwest::Method::PATCH,
            &format!("{base}/api/payments/{id}/status"),
            Some(&token),
            Some(json!({"status": "cancelled"})),
        )
        .await;
        checks.push(match &patch {
            Ok((s, b, t)) if s.is_success() && b.to_string().contains("cancelled") => {
                ok_check(name("PATCH /api/payments/{id}/status"), *s, *t)
            }
            other => failed(name("PATCH /api/payments/{id}/status"), other),
        });
    }

    checks.push(upload_check(http, &name("streamed upload"), base, &token, upload_mb).await);

    let missing = call(http, reqwest::Method::GET, &format!("{base}/api/nope/x"), None, None).await;
    checks.push(match &missing {
        Ok((s, b, _)) if s.as_u16() == 404 && b["error"]["code"].is_string() => {
            Check::new(name("unknown route → JSON 404"), true, format!("404 {}", b["error"]["code"]))
        }
        other => failed(name("unknown route → JSON 404"), other),
    });
    checks
}

/// Streams `mb` MiB to `PUT /api/profile/me`. The service refuses a body that large; what is
/// checked is that the front relays the service's own answer (a 4xx) instead of failing
/// itself (502/504) or buffering (a timeout), and how fast the bytes moved.
async fn upload_check(http: &reqwest::Client, name: &str, base: &str, token: &str, mb: u64) -> Check {
    static CHUNK: [u8; 65536] = [b' '; 65536];
    let total = mb * 1024 * 1024;
    let n_chunks = total / CHUNK.len() as u64;
    let body = futures::stream::iter((0..n_chunks).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(&CHUNK))));
    let started = Instant::now();
    let result = http
        .put(format!("{base}/api/profile/me"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(resp) => {
            let status = resp.status();
            let relayed = !matches!(status.as_u16(), 502..=504);
            Check::new(name, relayed, format!("{mb} MiB streamed, answered {status}"))
                .metric("seconds", secs)
                .metric("mib_per_s", mb as f64 / secs.max(1e-9))
        }
        // The service may answer and close before reading the whole body: the connection reset
        // then surfaces here. That is the service's refusal relayed, not a proxy failure.
        Err(e) if e.is_request() || e.is_body() => {
            Check::new(name, true, format!("{mb} MiB: the upstream refused the body early ({e})"))
        }
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

/// An in-process gateway with every upstream on a closed port must answer a JSON 502.
async fn upstream_down_check(http: &reqwest::Client) -> Check {
    let name = "local gateway: upstream down → JSON 502";
    let result = async {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cfg = mfe_gateway::GatewayConfig::from_env()?;
        cfg.host = "127.0.0.1".into();
        cfg.port = 0;
        cfg.events = None;
        cfg.health_interval = Duration::from_secs(3600);
        for route in &mut cfg.routes {
            route.upstreams = vec![format!("http://{dead}")];
        }
        let app = mfe_gateway::Application::build(cfg).await?;
        let port = app.port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stop_rx.await;
        }));
        let resp = http
            .post(format!("http://127.0.0.1:{port}/api/auth/signin"))
            .json(&json!({"email": "x@example.com", "password": "x"}))
            .send()
            .await
            .context("calling the local gateway")?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let _ = stop_tx.send(());
        let _ = server.await;
        anyhow::Ok((status, body))
    }
    .await;
    match result {
        Ok((s, b)) if s.as_u16() == 502 && b["error"]["code"] == "bad_gateway" => {
            Check::new(name, true, format!("502 {}", b["error"]["message"].as_str().unwrap_or_default()))
        }
        Ok((s, b)) => Check::new(name, false, format!("answered {s}: {}", short(&b))),
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

pub(crate) type Answer = anyhow::Result<(reqwest::StatusCode, Value, Duration)>;

/// `method url` with an optional bearer token and JSON body: status, JSON body (`Null` when the
/// answer was not JSON) and how long it took. Also the one request helper of `mfe test security`.
pub(crate) async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let started = Instant::now();
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("{method} {url} failed — is the stack up? try `mfe up`"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body, started.elapsed()))
}

fn ok_check(name: String, status: reqwest::StatusCode, took: Duration) -> Check {
    Check::new(name, true, format!("{status}")).metric("ms", took.as_secs_f64() * 1000.0)
}

fn expect_2xx(name: String, answer: &Answer) -> Check {
    match answer {
        Ok((s, _, t)) if s.is_success() => ok_check(name, *s, *t),
        other => failed(name, other),
    }
}

fn failed(name: String, answer: &Answer) -> Check {
    match answer {
        Ok((s, b, _)) => Check::new(name, false, format!("answered {s}: {}", short(b))),
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

/// A JSON body cut to one readable line.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 160 {
        format!("{}…", &s[..s.char_indices().nth(160).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}
