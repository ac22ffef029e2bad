//! Wire attacks, sent as raw bytes ([`super::raw`]) to the gateway and to nginx: request
//! smuggling, path traversal, oversized and slow headers, and the redirect's `Location`.
//!
//! The smuggling checks follow RFC 9112: a request with two different `Content-Length`s is
//! refused (400); one with `Content-Length` beside `Transfer-Encoding` is refused or answered
//! and the connection closed — never kept open with a second request hidden in its body (§6.1);
//! a `Transfer-Encoding` the server does not know is refused (400 or 501, §6.1).

use std::time::Duration;

use super::{raw::answers_in, RawTarget, Target, ANSWER_WAIT};
use crate::report::Check;

/// How long a slow header may keep a connection open before the check fails.
const SLOW_HEADER_LIMIT: Duration = Duration::from_secs(30);

pub async fn run(t: &Target) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut slow = Vec::new();
    for (front, target) in [("gateway", t.raw_gateway()), ("nginx", t.raw_nginx())] {
        let target = match target {
            Ok(target) => target,
            Err(e) => {
                checks.push(Check::new(format!("wire/{front}: target"), false, format!("{e:#}")));
                continue;
            }
        };
        checks.extend(smuggling(front, &target).await);
        checks.extend(traversal(front, &target).await);
        checks.push(big_header(front, &target).await);
        slow.push(async move { slow_header(front, &target).await });
    }
    // The slow headers take the longest: both fronts at once.
    checks.extend(futures::future::join_all(slow).await);
    checks.push(redirect(t).await);
    checks
}

/// One raw request → a check on its answer.
async fn judge(
    name: String,
    target: &RawTarget,
    request: String,
    verdict: impl FnOnce(&super::RawAnswer) -> bool,
) -> Check {
    match target.send(request.as_bytes(), ANSWER_WAIT).await {
        Ok(answer) => {
            let first = answer.text.lines().next().unwrap_or("(no answer)").to_string();
            let passed = verdict(&answer);
            let closed = if answer.closed { "closed" } else { "kept open" };
            Check::new(name, passed, format!("{first}; connection {closed}; {} answer(s)", answers_in(&answer.text)))
        }
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

async fn smuggling(front: &str, target: &RawTarget) -> Vec<Check> {
    let host = &target.host;
    let body = r#"{"email":"a@b.c","password":"x"}"#;
    let hidden = format!("GET /api/admin/users HTTP/1.1\r\nHost: {host}\r\n\r\n");
    vec![
        judge(
            format!("wire/{front}: two different Content-Lengths"),
            target,
            format!(
                "POST /api/auth/signin HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: 5\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            |a| a.status == Some(400),
        )
        .await,
        judge(
            format!("wire/{front}: Content-Length beside Transfer-Encoding"),
            target,
            format!(
                "POST /api/auth/signin HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            |a| a.status.is_some_and(|s| (400..500).contains(&s)) && a.closed && answers_in(&a.text) == 1,
        )
        .await,
        judge(
            format!("wire/{front}: an unknown Transfer-Encoding"),
            target,
            format!(
                "POST /api/auth/signin HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: xchunked\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            |a| matches!(a.status, Some(400 | 501)),
        )
        .await,
    ]
}

async fn traversal(front: &str, target: &RawTarget) -> Vec<Check> {
    let host = &target.host;
    let mut checks = Vec::new();
    for (what, path) in [
        ("dot-dot", "/api/auth/../../../../etc/passwd"),
        ("encoded dot-dot", "/api/auth/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        ("encoded slash", "/api/payments/..%2f..%2f..%2fetc%2fpasswd"),
    ] {
        checks.push(
            judge(
                format!("wire/{front}: path traversal ({what})"),
                target,
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
                |a| a.status.is_some_and(|s| (400..500).contains(&s)) && !a.text.contains("root:x:"),
            )
            .await,
        );
    }
    checks
}

async fn big_header(front: &str, target: &RawTarget) -> Check {
    let host = &target.host;
    let filler = "a".repeat(200 * 1024);
    judge(
        format!("wire/{front}: a 200 KB header"),
        target,
        format!("GET /api/payments HTTP/1.1\r\nHost: {host}\r\nX-Filler: {filler}\r\nConnection: close\r\n\r\n"),
        |a| matches!(a.status, Some(400 | 431 | 494)),
    )
    .await
}

async fn slow_header(front: &str, target: &RawTarget) -> Check {
    let name = format!("wire/{front}: a header sent one byte a second (slowloris)");
    let head = format!("GET /api/payments HTTP/1.1\r\nHost: {}\r\nX-Slow: ", target.host);
    match target.trickle(head.as_bytes(), Duration::from_secs(1), SLOW_HEADER_LIMIT).await {
        Ok(Some(after)) => Check::new(name, true, format!("closed after {:.1} s", after.as_secs_f64()))
            .metric("closed_after_s", after.as_secs_f64()),
        Ok(None) => Check::new(name, false, format!("still open after {} s", SLOW_HEADER_LIMIT.as_secs())),
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}

/// nginx's plain-HTTP redirect goes to the configured host, whatever `Host` the client sent.
async fn redirect(t: &Target) -> Check {
    let name = "wire/nginx: the HTTPS redirect ignores a forged Host";
    let target = match RawTarget::from_url(&t.nginx_http, t.tls.rustls_config()) {
        Ok(target) => target,
        Err(e) => return Check::new(name, false, format!("{e:#}")),
    };
    let request = "GET /api/payments HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    match target.send(request.as_bytes(), ANSWER_WAIT).await {
        Ok(answer) => {
            let location = answer.header("location").unwrap_or("(none)").to_string();
            let expected = format!("https://{}", t.nginx_host);
            let passed = answer.status == Some(301) && location.starts_with(&expected);
            Check::new(name, passed, format!("{:?} Location: {location} (expected {expected}…)", answer.status))
        }
        Err(e) => Check::new(name, false, format!("{e:#}")),
    }
}
