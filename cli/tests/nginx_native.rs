//! The repository's nginx configuration, rendered by `mfe` for the native runtime and run as a
//! real nginx on free ports in a temporary prefix, in front of a tiny HTTP upstream standing in
//! for the gateway. Each test has its own nginx, so they run in parallel with everything else.

mod nginx_support;

use nginx_support::Edge;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A keep-alive HTTP/1.1 upstream answering every request 200 with a JSON body (2 KB on
/// `/api/big`, so gzip applies); returns its port.
fn spawn_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = if request_line.contains("/api/big") {
            format!("{{\"items\":\"{}\"}}", "x".repeat(2048))
        } else {
            "{\"upstream\":true}".to_string()
        };
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", reply.len());
        if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}

impl Edge {
    fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .add_root_certificate(self.ca_certificate())
            .redirect(reqwest::redirect::Policy::none())
            .resolve("localhost", ([127, 0, 0, 1], self.https).into())
            .build()
            .unwrap()
    }

    fn s_client(&self, version_flag: &str) -> Output {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https), version_flag])
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl is needed by this test — apt-get install openssl")
    }
}

#[test]
fn plain_http_is_redirected_permanently_to_https_on_the_https_port() {
    let edge = Edge::start(spawn_upstream());
    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = client.get(format!("http://127.0.0.1:{}/api/auth/me?x=1", edge.http)).send().unwrap();
    assert_eq!(resp.status().as_u16(), 301);
    let location = resp.headers()["location"].to_str().unwrap();
    assert_eq!(location, format!("https://127.0.0.1:{}/api/auth/me?x=1", edge.https));
}

#[test]
fn tls_1_1_is_refused_while_tls_1_2_and_1_3_are_accepted() {
    let edge = Edge::start(spawn_upstream());
    let old = edge.s_client("-tls1_1");
    let old_out = String::from_utf8_lossy(&old.stdout);
    assert!(!old.status.success(), "TLS 1.1 handshake succeeded:\n{old_out}");
    assert!(old_out.contains("Cipher is (NONE)"), "no cipher may be agreed for TLS 1.1:\n{old_out}");
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let ok = edge.s_client(flag);
        let out = String::from_utf8_lossy(&ok.stdout);
        assert!(ok.status.success(), "{name} handshake failed: {}", String::from_utf8_lossy(&ok.stderr));
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!("New, {name}")),
            "{name} not negotiated:\n{out}"
        );
        assert!(!out.contains("Cipher is (NONE)"), "{name}: no cipher agreed:\n{out}");
    }
}

#[test]
fn responses_carry_the_security_headers_on_nginx_and_proxied_answers() {
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    for path in ["/health", "/api/payments/x"] {
        let resp = client.get(edge.url(path)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "SAMEORIGIN", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(h.contains_key("referrer-policy"), "{path}");
        assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'self'"), "{path}");
        assert!(h.contains_key("x-xss-protection"), "{path}");
    }
}

#[test]
fn the_eleventh_sign_in_request_within_a_minute_from_one_ip_gets_429() {
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    let statuses: Vec<u16> = (0..11)
        .map(|_| client.post(edge.url("/api/auth/signin")).body("{}").send().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert_eq!(statuses[10], 429, "{statuses:?}");
    // The general API limit (100 r/min, burst 20) is far looser: other endpoints still pass.
    assert_eq!(client.get(edge.url("/api/profile/me")).send().unwrap().status().as_u16(), 200);
}

#[test]
fn health_is_answered_by_nginx_itself_even_when_the_gateway_is_down() {
    let edge = Edge::start(free_port());
    let resp = edge.client().get(edge.url("/health")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["status"], "ok");
    let proxied = edge.client().get(edge.url("/api/auth/me")).send().unwrap();
    assert_eq!(proxied.status().as_u16(), 502, "a down gateway is a 502 on proxied paths");
}

#[test]
fn the_access_log_of_a_websocket_request_leaves_out_its_token() {
    let edge = Edge::start(spawn_upstream());
    let resp = edge.client().get(edge.url("/ws?token=SECRET-TOKEN-123")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = edge.access_log();
        if log.contains("/ws") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.contains("\"GET /ws HTTP/1.1\""), "no /ws line in the access log:\n{log}");
    assert!(!log.contains("SECRET-TOKEN-123"), "the token leaked into the access log:\n{log}");
}

#[test]
fn json_of_a_kilobyte_or_more_is_gzipped_and_small_json_is_not() {
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    let big = client.get(edge.url("/api/big")).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(big.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let small = client.get(edge.url("/api/small")).header("accept-encoding", "gzip").send().unwrap();
    assert!(small.headers().get("content-encoding").is_none());
}
