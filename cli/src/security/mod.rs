//! `mfe test security`: the attacks of an adversarial pass over the running stack, each with
//! the answer the platform must give, as a repeatable suite.
//!
//! Every attack is one [`Check`]: its name says what it tries, its detail what came back. The
//! attacks run against the gateway (`GATEWAY_URL`) and, for the ones that concern the front
//! door, against nginx too; a few go straight to a service (`AUTH_SERVICE_URL`) where the point
//! is that bypassing nginx must not bypass the defence (sign-in throttling). Groups:
//!
//! - **tokens** ([`tokens`]): `alg: none`, another algorithm with the right secret, another
//!   secret, a tampered claim, expired / future `iat` / future `nbf`, missing `exp`, a token of
//!   a user that does not exist, a token after logout; error bodies that echo no internals.
//! - **access** ([`tokens`]): another user's payment, the admin API and the service-to-service
//!   user lookup as a customer, a status change as a customer.
//! - **input** ([`input`]): SQL in a query parameter and in a stored field, NUL bytes, malformed
//!   and deeply nested JSON, an oversized body, confusable and zero-width e-mail addresses, a
//!   case variant of an existing e-mail, user enumeration by the sign-in answer, sign-in
//!   throttling at the service itself.
//! - **wire** ([`wire`]): request smuggling (two `Content-Length`s, `Content-Length` beside
//!   `Transfer-Encoding`, an obfuscated `Transfer-Encoding`), path traversal, a 200 KB header, a
//!   slow header (slowloris), a forged `X-Forwarded-For`, the HTTP → HTTPS redirect's `Location`.
//! - **sockets** ([`sockets`]): `/ws` without or with a forged token, an oversized frame, the
//!   per-user connection cap, the token of the query string absent from the logs.
//!
//! The suite signs up its own users (`security-<run>-…@example.com`) and creates its own
//! payments; it needs `JWT_SECRET` of the stack to forge the tokens a thief could not make
//! without it — the attacks are about what a *valid* signature must still not buy.

mod input;
mod raw;
mod sockets;
mod tokens;
mod wire;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::{
    report::{Check, Report},
    tls::{ClientTls, TlsArgs},
    Ctx,
};

pub use raw::{RawAnswer, RawTarget};

#[derive(Debug, clap::Args)]
pub struct SecurityArgs {
    /// The gateway; defaults to GATEWAY_URL.
    #[arg(long)]
    pub gateway_url: Option<String>,
    /// nginx in front of it; defaults to https://NGINX_HOST:NGINX_HTTPS_PORT.
    #[arg(long)]
    pub nginx_url: Option<String>,
    /// Only the attacks whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// A signed-up user of the run.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

/// What every attack may use: the fronts, clients, the stack's secret and two users.
pub struct Target {
    pub gateway: String,
    pub nginx: String,
    pub nginx_http: String,
    pub auth_service: String,
    pub http: reqwest::Client,
    pub tls: ClientTls,
    pub jwt_secret: String,
    pub nginx_host: String,
    pub state_dir: PathBuf,
    pub run: String,
    pub alice: User,
    pub bob: User,
    /// A payment of bob's to a third party (alice is neither its sender nor its recipient).
    pub bobs_payment: String,
}

impl Target {
    /// A fresh e-mail address of this run.
    pub fn email(&self, what: &str) -> String {
        format!("security-{}-{what}@example.com", self.run)
    }

    /// The gateway raw target.
    pub fn raw_gateway(&self) -> anyhow::Result<RawTarget> {
        RawTarget::from_url(&self.gateway, self.tls.rustls_config())
    }

    /// The nginx (HTTPS) raw target.
    pub fn raw_nginx(&self) -> anyhow::Result<RawTarget> {
        RawTarget::from_url(&self.nginx, self.tls.rustls_config())
    }

    /// An HTTP client whose connections leave from a loopback address of its own when nginx is
    /// local, so the suite's requests through nginx get a rate-limit bucket of their own.
    pub fn nginx_client(&self, n: u8) -> anyhow::Result<reqwest::Client> {
        let local = self.nginx.contains("localhost") || self.nginx.contains("127.0.0.1");
        self.tls.http_client_from(local.then(|| IpAddr::from([127, 0, 0, 200u8.saturating_add(n)])))
    }
}

/// An answer: status and JSON body (`Null` when it was not JSON).
pub type Answer = (reqwest::StatusCode, Value);

/// Sends `method url` with an optional bearer token and JSON body ([`crate::proxy_test::call`]).
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Answer> {
    crate::proxy_test::call(http, method, url, token, body).await.map(|(status, body, _)| (status, body))
}

/// The check `name`: passed when `status` is one of `expected`; the detail shows the answer.
pub fn expect_status(name: &str, answer: &anyhow::Result<Answer>, expected: &[u16]) -> Check {
    match answer {
        Ok((status, body)) => {
            let passed = expected.contains(&status.as_u16());
            Check::new(name, passed, answer_line(*status, body, expected))
        }
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

/// `403 (expected 401|403): {"error": …}` — shortened.
pub fn answer_line(status: reqwest::StatusCode, body: &Value, expected: &[u16]) -> String {
    let expected: Vec<String> = expected.iter().map(u16::to_string).collect();
    let mut body = body.to_string();
    if body.len() > 160 {
        body.truncate(body.char_indices().nth(157).map_or(body.len(), |(i, _)| i));
        body.push_str("...");
    }
    format!("{} (expected {}): {body}", status.as_u16(), expected.join("|"))
}

/// The `error.message` of an answer's body.
pub fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// Whether a message leaks parser or library internals.
pub fn leaks_internals(message: &str) -> bool {
    const TELLS: &[&str] = &["line 1", "column ", "missing field", "invalid type", "expected struct", "serde"];
    TELLS.iter().any(|t| message.contains(t))
}

pub async fn run(ctx: &Ctx, args: SecurityArgs) -> anyhow::Result<()> {
    let cfg = &ctx.config;
    let gateway = args.gateway_url.clone().unwrap_or_else(|| cfg.gateway_url.clone()).trim_end_matches('/').to_string();
    let nginx = args
        .nginx_url
        .clone()
        .unwrap_or_else(|| format!("https://{}:{}", cfg.nginx_host, cfg.nginx_https_port))
        .trim_end_matches('/')
        .to_string();
    let tls = args.tls.for_stack(cfg)?;
    let http = tls.http_client()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    if !ctx.json {
        eprintln!("test security: attacking {gateway} and {nginx} (users security-{run}-*@example.com)");
    }
    let signup = |who: &'static str| {
        let http = http.clone();
        let gateway = gateway.clone();
        let email = format!("security-{run}-{who}@example.com");
        async move { sign_up(&http, &gateway, &email).await.with_context(|| format!("signing up {email}")) }
    };
    let alice = signup("alice").await?;
    let bob = signup("bob").await?;
    let (status, body) = call(
        &http,
        reqwest::Method::POST,
        &format!("{gateway}/api/payments"),
        Some(&bob.access),
        Some(json!({"amount": "12.50", "currency": "USD", "recipientId": format!("security-{run}-shop"),
            "description": "bob pays a shop"})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "bob's payment was refused: {}", answer_line(status, &body, &[201]));
    let bobs_payment = body["id"].as_str().context("the created payment has no id")?.to_string();

    let target = Target {
        gateway,
        nginx,
        nginx_http: format!("http://{}:{}", cfg.nginx_host, cfg.nginx_http_port),
        auth_service: mfe_core::env::get(mfe_core::Service::Auth.url_var()).trim_end_matches('/').to_string(),
        http,
        tls,
        jwt_secret: cfg.jwt_secret.clone(),
        nginx_host: cfg.nginx_host.clone(),
        state_dir: cfg.state_dir.clone(),
        run,
        alice,
        bob,
        bobs_payment,
    };

    let mut report = Report::new("test security");
    let mut checks = Vec::new();
    checks.extend(tokens::run(&target).await);
    checks.extend(input::run(&target).await);
    checks.extend(wire::run(&target).await);
    checks.extend(sockets::run(&target).await);
    for check in checks {
        if args.only.as_deref().is_none_or(|only| check.name.contains(only)) {
            report.push(check);
        }
    }
    report.metric("attacks", report.checks.len());
    report.emit(ctx.json)
}

/// Signs up `email` through `base` and returns the user with its tokens.
pub async fn sign_up(http: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<User> {
    let password = format!("Sec-{}-pw1!", uuid::Uuid::new_v4().simple());
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/api/auth/signup"),
        None,
        Some(json!({"email": email, "password": password, "name": "Security Suite"})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "sign-up answered {}", answer_line(status, &body, &[201]));
    let text =
        |v: &Value, what: &str| v.as_str().map(str::to_string).with_context(|| format!("sign-up gave no {what}"));
    Ok(User {
        id: text(&body["user"]["id"], "user id")?,
        email: email.to_string(),
        password,
        access: text(&body["accessToken"], "access token")?,
        refresh: text(&body["refreshToken"], "refresh token")?,
    })
}

/// How long the wire attacks wait for an answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);
