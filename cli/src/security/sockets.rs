//! WebSocket attacks: the upgrade without or with a bad token, an oversized frame, one user
//! opening sockets without end, and the token of the query string in the logs.

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::{
    connect_async_tls_with_config,
    tungstenite::{self, Message},
    MaybeTlsStream, WebSocketStream,
};

use super::Target;
use crate::report::Check;

/// Sockets one user opens before the cap must have refused one.
const MAX_SOCKETS_TRIED: usize = 200;
/// Text frame sent to test the message size limit.
const BIG_FRAME: usize = 2 << 20;

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How an upgrade ended: a socket, or the HTTP status it was refused with, or another error.
enum Upgrade {
    Open(Box<Socket>),
    Refused(u16),
    Failed(String),
}

async fn upgrade(t: &Target, base: &str, token: Option<&str>) -> Upgrade {
    let url = match token {
        Some(token) => format!("{base}/ws?token={token}"),
        None => format!("{base}/ws"),
    };
    let connecting = connect_async_tls_with_config(url, None, false, Some(t.tls.ws_connector()));
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok((socket, _))) => Upgrade::Open(Box::new(socket)),
        Ok(Err(tungstenite::Error::Http(resp))) => Upgrade::Refused(resp.status().as_u16()),
        Ok(Err(e)) => Upgrade::Failed(e.to_string()),
        Err(_) => Upgrade::Failed("no answer to the upgrade within 10 s".into()),
    }
}

fn ws_base(http_base: &str) -> String {
    http_base.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1)
}

pub async fn run(t: &Target) -> Vec<Check> {
    let gateway = ws_base(&t.gateway);
    let mut checks = Vec::new();
    for (name, token) in [
        ("sockets: /ws without a token", None),
        ("sockets: /ws with a forged token", Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")),
    ] {
        checks.push(match upgrade(t, &gateway, token).await {
            Upgrade::Refused(401) => Check::new(name, true, "401 before the upgrade"),
            Upgrade::Refused(s) => Check::new(name, false, format!("{s} (expected 401)")),
            Upgrade::Open(_) => Check::new(name, false, "the upgrade succeeded"),
            Upgrade::Failed(e) => Check::new(name, false, e),
        });
    }
    checks.push(after_logout(t, &gateway).await);
    checks.push(big_frame(t, &gateway).await);
    checks.push(cap(t, &gateway).await);
    checks.push(token_not_logged(t).await);
    checks
}

/// The access token of a session that logged out opens no socket.
async fn after_logout(t: &Target, base: &str) -> Check {
    let name = "sockets: the token of a session that logged out";
    let user = match super::sign_up(&t.http, &t.gateway, &t.email("ws-logout")).await {
        Ok(u) => u,
        Err(e) => return Check::new(name, false, format!("{e:#}")),
    };
    let logout = super::call(
        &t.http,
        reqwest::Method::POST,
        &format!("{}/api/auth/logout", t.gateway),
        Some(&user.access),
        Some(serde_json::json!({"refreshToken": user.refresh})),
    )
    .await;
    if !matches!(&logout, Ok((s, _)) if s.is_success()) {
        return super::expect_status(&format!("{name} (the logout itself)"), &logout, &[200, 204]);
    }
    match upgrade(t, base, Some(&user.access)).await {
        Upgrade::Refused(401) => Check::new(name, true, "401 before the upgrade"),
        Upgrade::Refused(s) => Check::new(name, false, format!("{s} (expected 401)")),
        Upgrade::Open(_) => Check::new(name, false, "the upgrade succeeded after logout"),
        Upgrade::Failed(e) => Check::new(name, false, e),
    }
}

/// A frame over the size limit closes the socket (1009) instead of being buffered.
async fn big_frame(t: &Target, base: &str) -> Check {
    let name = "sockets: a 2 MB frame";
    let mut socket = match upgrade(t, base, Some(&t.alice.access)).await {
        Upgrade::Open(s) => s,
        Upgrade::Refused(s) => return Check::new(name, false, format!("upgrade refused with {s}")),
        Upgrade::Failed(e) => return Check::new(name, false, e),
    };
    let _ = socket.send(Message::Text("x".repeat(BIG_FRAME).into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = socket.next().await {
            match frame {
                Ok(Message::Close(frame)) => return format!("closed: {frame:?}"),
                Ok(_) => continue,
                Err(e) => return format!("ended: {e}"),
            }
        }
        "ended".to_string()
    })
    .await;
    match ended {
        Ok(how) => Check::new(name, true, how),
        Err(_) => Check::new(name, false, "the socket stayed open for 10 s after the frame"),
    }
}

/// One user opening sockets without end is refused before [`MAX_SOCKETS_TRIED`]; closing one
/// frees a slot.
async fn cap(t: &Target, base: &str) -> Check {
    let name = "sockets: one user opens sockets without end";
    let user = match super::sign_up(&t.http, &t.gateway, &t.email("sockets")).await {
        Ok(u) => u,
        Err(e) => return Check::new(name, false, format!("{e:#}")),
    };
    let mut open = Vec::new();
    for n in 1..=MAX_SOCKETS_TRIED {
        match upgrade(t, base, Some(&user.access)).await {
            Upgrade::Open(s) => open.push(s),
            Upgrade::Refused(status) => {
                let held = open.len();
                if let Some(mut first) = open.pop() {
                    let _ = first.send(Message::Close(None)).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let freed = matches!(upgrade(t, base, Some(&user.access)).await, Upgrade::Open(_));
                return Check::new(
                    name,
                    freed,
                    format!(
                        "socket {n} refused with {status} after {held} open; after closing one, a new one {}",
                        if freed { "opened" } else { "was still refused" }
                    ),
                )
                .metric("cap", held);
            }
            Upgrade::Failed(e) => return Check::new(name, false, format!("socket {n}: {e}")),
        }
    }
    Check::new(name, false, format!("{MAX_SOCKETS_TRIED} sockets of one user were all accepted"))
}

/// A socket through nginx with `?token=`, then no log file of the stack holds the token.
async fn token_not_logged(t: &Target) -> Check {
    let name = "sockets: the token of the query string is in no log";
    let nginx = ws_base(&t.nginx);
    match upgrade(t, &nginx, Some(&t.alice.access)).await {
        Upgrade::Open(mut s) => {
            let _ = s.send(Message::Close(None)).await;
        }
        Upgrade::Refused(s) => {
            return Check::new(name, false, format!("the upgrade through nginx was refused with {s}"))
        }
        Upgrade::Failed(e) => return Check::new(name, false, e),
    }
    // nginx writes its access line when the socket ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = t.state_dir.clone();
    let mut files = Vec::new();
    log_files(&logs, &mut files);
    if files.is_empty() {
        return Check::new(name, false, format!("no log files under {}", logs.display()));
    }
    let secret = &t.alice.access;
    let found: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read(f).is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes())))
        .map(|f| f.display().to_string())
        .collect();
    Check::new(
        name,
        found.is_empty(),
        if found.is_empty() {
            format!("absent from {} log files under {}", files.len(), logs.display())
        } else {
            format!("found in {}", found.join(", "))
        },
    )
}

fn log_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            log_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "log") {
            out.push(path);
        }
    }
}
