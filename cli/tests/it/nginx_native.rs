//! The repository's nginx configuration, rendered by `mfe` for the native runtime and run as a
//! real nginx on free ports in a temporary prefix, in front of tiny HTTP upstreams standing in
//! for the gateway and for the shell and micro-frontends (static files from a temporary
//! directory). Each test has its own nginx, so they run in parallel with everything else.

use crate::nginx_support::{edge_settings, Edge};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Like [`spawn_upstream`], counting the requests it answers.
fn spawn_counted_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve_counted(stream, Some(&seen)));
        }
    });
    (port, count)
}

/// A static file server (axum) over a temporary directory, standing in for a micro-frontend's
/// server: `files` are (path, body); it answers with its own `Cache-Control: max-age=60`, which
/// nginx must replace. Returns the port and the directory (kept alive by the caller).
fn spawn_static_site(files: &[(&str, &str)]) -> (u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in files {
        let file = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, body).unwrap();
    }
    let root: PathBuf = dir.path().to_path_buf();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let root = root.clone();
                async move {
                    let path = match uri.path() {
                        "/" => "index.html".to_string(),
                        p => p.trim_start_matches('/').to_string(),
                    };
                    let content_type = match path.rsplit('.').next() {
                        Some("html") => "text/html",
                        Some("js") => "application/javascript",
                        Some("png") => "image/png",
                        _ => "application/octet-stream",
                    };
                    match (path.contains(".."), tokio::fs::read(root.join(&path)).await) {
                        (false, Ok(body)) => axum::response::Response::builder()
                            .header("content-type", content_type)
                            .header("cache-control", "max-age=60")
                            .body(axum::body::Body::from(body))
                            .unwrap(),
                        _ => axum::response::Response::builder().status(404).body(axum::body::Body::empty()).unwrap(),
                    }
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (port, dir)
}

fn serve(stream: TcpStream) {
    serve_counted(stream, None)
}

fn serve_counted(stream: TcpStream, count: Option<&AtomicUsize>) {
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
        if let Some(count) = count {
            count.fetch_add(1, Ordering::SeqCst);
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
        self.s_client_with_ciphers(version_flag, "DEFAULT@SECLEVEL=0")
    }

    /// `openssl s_client` offering only `ciphers` (TLS 1.2 and below).
    fn s_client_with_ciphers(&self, version_flag: &str, ciphers: &str) -> Output {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https), version_flag])
            .args(["-cipher", ciphers, "-servername", "localhost"])
            .stdin(Stdio::null())
            .output()
            .expect("openssl is needed by this test — apt-get install openssl")
    }

    /// `curl` against this edge (trusting its CA, localhost resolved to 127.0.0.1), printing
    /// `--write-out`'s `format` after the headers (`-i`).
    fn curl(&self, args: &[&str], path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", self.https)])
            .args(args)
            .arg(self.url(path))
            .output()
            .expect("curl is needed by this test — apt-get install curl");
        assert!(out.status.success(), "curl {args:?} {path} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The one value of a header, failing when it is missing or repeated (a proxied header and
/// nginx's own would both reach the browser).
fn only(resp: &reqwest::blocking::Response, name: &str) -> String {
    let values: Vec<_> = resp.headers().get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(values.len(), 1, "{name} must appear exactly once on {}: {values:?}", resp.url());
    values.into_iter().next().unwrap()
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

#[test]
fn plain_http_is_redirected_permanently_to_https_on_the_configured_host_whatever_the_host_header() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // NGINX_HOST is `localhost` (its default); neither the address dialled nor a forged Host
    // header may end up in Location.
    for host in [None, Some("evil.example"), Some("evil.example:443")] {
        let mut req = client.get(format!("http://127.0.0.1:{}/api/auth/me?x=1", edge.http));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 301, "Host {host:?}");
        let location = resp.headers()["location"].to_str().unwrap();
        assert_eq!(location, format!("https://localhost:{}/api/auth/me?x=1", edge.https), "Host {host:?}");
    }
}

#[test]
fn tls_1_1_is_refused_while_tls_1_2_and_1_3_are_accepted() {
    let _serial = mfe_testkit::serial::group(module_path!());
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
fn weak_ciphers_and_tls_1_0_are_refused() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    // Weak suites: RC4 and 3DES (tried only where this OpenSSL still builds them: Debian's 3.0
    // has neither), RSA key exchange without forward secrecy, CBC with SHA-1 or SHA-256,
    // anonymous and NULL encryption. Each tried one is really offered by the client.
    let candidates = [
        "RC4-SHA",
        "DES-CBC3-SHA",
        "AES128-SHA",
        "AES256-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA384",
        "DHE-RSA-AES128-SHA",
        "ADH-AES128-SHA",
        "NULL-SHA256",
    ];
    let offered: Vec<&str> = candidates
        .into_iter()
        .filter(|c| {
            let probe = Command::new("openssl").args(["ciphers", &format!("{c}@SECLEVEL=0")]).output().unwrap();
            probe.status.success()
        })
        .collect();
    assert!(offered.len() >= 6, "this OpenSSL offers too few weak suites to test: {offered:?}");
    for cipher in offered {
        let out = edge.s_client_with_ciphers("-tls1_2", &format!("{cipher}@SECLEVEL=0"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            !text.contains("no cipher match"),
            "the client could not offer {cipher}, so the test proves nothing:\n{text}"
        );
        assert!(!out.status.success(), "{cipher} was accepted:\n{text}");
        assert!(text.contains("Cipher is (NONE)") || text.contains("handshake failure"), "{cipher}:\n{text}");
    }
    let strong = edge.s_client_with_ciphers("-tls1_2", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256");
    assert!(strong.status.success(), "the modern cipher is refused: {}", String::from_utf8_lossy(&strong.stderr));
    let tls10 = edge.s_client("-tls1");
    assert!(!tls10.status.success(), "TLS 1.0 handshake succeeded");
}

#[test]
fn https_speaks_http_2() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let version = edge.curl(&["--http2", "-o", "/dev/null", "-w", "%{http_version}"], "/health");
    assert_eq!(version, "2", "ALPN did not select h2");
    let via_api = edge.curl(&["--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"], "/api/auth/me");
    assert_eq!(via_api, "2 200", "the API through HTTP/2 (nginx speaks HTTP/1.1 to the gateway)");
}

#[test]
fn responses_carry_the_security_headers_on_nginx_and_proxied_answers() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    for path in ["/health", "/api/payments/x", "/"] {
        let resp = client.get(edge.url(path)).send().unwrap();
        let expected = if path == "/" { 503 } else { 200 };
        assert_eq!(resp.status().as_u16(), expected, "{path}");
        let h = resp.headers();
        assert_eq!(h["x-frame-options"], "SAMEORIGIN", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(h.contains_key("referrer-policy"), "{path}");
        assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'self'"), "{path}");
        assert!(h.contains_key("x-xss-protection"), "{path}");
        assert_eq!(h["strict-transport-security"], "max-age=31536000; includeSubDomains", "{path}");
        assert!(h["permissions-policy"].to_str().unwrap().contains("camera=()"), "{path}");
    }
}

#[test]
fn hashed_assets_are_cached_a_year_and_entry_points_html_and_the_service_worker_never() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (shell, _shell_dir) = spawn_static_site(&[
        ("/index.html", "<!doctype html><title>shell</title>"),
        ("/main.3f9a2c1b.js", "console.log('shell main')"),
        ("/main.js", "console.log('unhashed')"),
        ("/sw.js", "self.addEventListener('fetch', () => {})"),
    ]);
    let (auth, _auth_dir) = spawn_static_site(&[
        ("/remoteEntry.js", "var authMfe = {}"),
        ("/chunk-4KD8QZ2M.js", "console.log('auth chunk')"),
        ("/assets/logo.a1b2c3d4.png", "png"),
    ]);
    let mut settings = edge_settings(spawn_upstream());
    settings.shell = format!("127.0.0.1:{shell}");
    settings.auth_mfe = format!("127.0.0.1:{auth}");
    let edge = Edge::start_with(&settings);
    let client = edge.client();
    let get = |path: &str| {
        let resp = client.get(edge.url(path)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp
    };

    for path in ["/main.3f9a2c1b.js", "/auth-mfe/chunk-4KD8QZ2M.js", "/auth-mfe/assets/logo.a1b2c3d4.png"] {
        assert_eq!(only(&get(path), "cache-control"), IMMUTABLE, "{path}");
    }
    for path in ["/", "/auth-mfe/remoteEntry.js", "/main.js"] {
        assert_eq!(only(&get(path), "cache-control"), "no-cache", "{path}");
    }
    let sw = get("/sw.js");
    assert_eq!(only(&sw, "cache-control"), "no-cache");
    assert_eq!(only(&sw, "service-worker-allowed"), "/");
    assert!(get("/main.3f9a2c1b.js").headers().get("service-worker-allowed").is_none());
    // The micro-frontend's prefix is stripped: its server serves at its root.
    assert_eq!(get("/auth-mfe/remoteEntry.js").text().unwrap(), "var authMfe = {}");
    assert_eq!(get("/").text().unwrap(), "<!doctype html><title>shell</title>");
    // Security headers survive on assets too (no add_header below the server level).
    assert!(get("/auth-mfe/remoteEntry.js").headers().contains_key("strict-transport-security"));
}

#[test]
fn a_micro_frontend_that_is_not_running_answers_a_503_page_naming_it_at_once() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    for (path, name, var) in [
        ("/payments-mfe/remoteEntry.js", "payments-mfe", "PAYMENTS_MFE_URL"),
        ("/admin-mfe/", "admin-mfe", "ADMIN_MFE_URL"),
        ("/auth-mfe/chunk.js", "auth-mfe", "AUTH_MFE_URL"),
        ("/payments", "shell", "SHELL_APP_URL"),
    ] {
        let t0 = Instant::now();
        let resp = client.get(edge.url(path)).send().unwrap();
        let took = t0.elapsed();
        let status = resp.status().as_u16();
        assert_eq!(status, 503, "{path}: {status} {:?}", resp.text());
        assert!(took < Duration::from_secs(2), "{path} took {took:?}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
        let body = resp.text().unwrap();
        assert!(body.contains(&format!("<h1>{name} is not running</h1>")), "{path}: {body}");
        assert!(body.contains(var), "{path} names {var}: {body}");
    }
}

#[test]
fn a_cors_preflight_from_an_allowed_origin_is_answered_by_nginx_and_others_get_no_cors_headers() {
    let _serial = mfe_testkit::serial::group(module_path!());
    // No gateway at all: whatever answers the preflight is nginx itself.
    let mut settings = edge_settings(free_port());
    settings.cors_allowed_origins = vec!["https://app.example.com".into(), "http://localhost:4201".into()];
    let edge = Edge::start_with(&settings);
    let client = edge.client();
    let preflight = |origin: &str, path: &str| {
        client
            .request(reqwest::Method::OPTIONS, edge.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .unwrap()
    };
    for path in ["/api/payments", "/api/auth/signin"] {
        let ok = preflight("http://localhost:4201", path);
        assert_eq!(ok.status().as_u16(), 204, "{path}");
        assert_eq!(only(&ok, "access-control-allow-origin"), "http://localhost:4201", "{path}");
        assert_eq!(only(&ok, "access-control-allow-credentials"), "true", "{path}");
        assert!(only(&ok, "access-control-allow-methods").contains("POST"), "{path}");
        let allowed_headers = only(&ok, "access-control-allow-headers").to_ascii_lowercase();
        assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"), "{path}");
        assert_eq!(only(&ok, "vary"), "Origin", "{path}");

        let other = preflight("https://evil.example", path);
        for h in ["access-control-allow-origin", "access-control-allow-credentials", "access-control-allow-methods"] {
            assert!(other.headers().get(h).is_none(), "{path}: {h} sent to an unlisted origin");
        }
    }
    // Simple requests: the listed origin is echoed with credentials (on errors too: the page
    // must be able to read a 502 or 429), any other origin and non-API paths get nothing.
    let listed = client.get(edge.url("/api/profile/me")).header("origin", "https://app.example.com").send().unwrap();
    assert_eq!(listed.status().as_u16(), 502);
    assert_eq!(only(&listed, "access-control-allow-origin"), "https://app.example.com");
    assert_eq!(only(&listed, "access-control-allow-credentials"), "true");
    let unlisted =
        client.get(edge.url("/api/profile/me")).header("origin", "https://app.example.com.evil").send().unwrap();
    assert!(unlisted.headers().get("access-control-allow-origin").is_none());
    let health = client.get(edge.url("/health")).header("origin", "https://app.example.com").send().unwrap();
    assert!(health.headers().get("access-control-allow-origin").is_none(), "CORS is for /api/ only");
}

#[test]
fn every_auth_write_shares_the_tight_auth_limit_and_reads_do_not() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    // Reads are not counted by the auth zone (the general API zone allows 1 + 20 at once).
    for _ in 0..8 {
        assert_eq!(client.get(edge.url("/api/auth/devices")).send().unwrap().status().as_u16(), 200);
    }
    // 10 r/min with a burst of 5: six writes pass at once …
    for i in 0..6 {
        let status = client.post(edge.url("/api/auth/signup")).body("{}").send().unwrap().status().as_u16();
        assert_eq!(status, 200, "write {i}");
    }
    // … and every other auth write then meets the same exhausted zone.
    let writes = [
        (reqwest::Method::POST, "/api/auth/signin"),
        (reqwest::Method::POST, "/api/auth/refresh"),
        (reqwest::Method::POST, "/api/auth/logout"),
        (reqwest::Method::POST, "/api/auth/devices/register"),
        (reqwest::Method::POST, "/api/auth/devices/logout-others"),
        (reqwest::Method::DELETE, "/api/auth/devices/phone-1"),
        (reqwest::Method::POST, "/api/auth/sign-in"),
    ];
    for (method, path) in writes {
        let status = client.request(method.clone(), edge.url(path)).body("{}").send().unwrap().status().as_u16();
        assert_eq!(status, 429, "{method} {path} is not under the auth limit");
    }
    assert_eq!(client.get(edge.url("/api/auth/devices")).send().unwrap().status().as_u16(), 200);
    assert_eq!(client.get(edge.url("/api/auth/me")).send().unwrap().status().as_u16(), 200);
}

#[test]
fn requests_are_balanced_over_every_listed_gateway_and_a_dead_one_is_skipped() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let (a, seen_a) = spawn_counted_upstream();
    let (b, seen_b) = spawn_counted_upstream();
    let mut settings = edge_settings(a);
    settings.gateways = vec![format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"), format!("127.0.0.1:{}", free_port())];
    let edge = Edge::start_with(&settings);
    let client = edge.client();
    for i in 0..12 {
        let status = client.get(edge.url(&format!("/api/payments/{i}"))).send().unwrap().status().as_u16();
        assert_eq!(status, 200, "request {i} (a dead gateway must be skipped, not answered 502)");
    }
    let (na, nb) = (seen_a.load(Ordering::SeqCst), seen_b.load(Ordering::SeqCst));
    assert_eq!(na + nb, 12);
    assert!(na >= 3 && nb >= 3, "least_conn left one gateway idle: {na} vs {nb}");
    assert!(edge.error_log().contains("connect() failed"), "the dead gateway was never tried");
}

#[test]
fn nginx_is_sized_for_ten_thousand_proxied_sockets_per_worker() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nginx/nginx.conf")).unwrap();
    let number = |directive: &str| -> u64 {
        let line =
            conf.lines().find(|l| l.trim_start().starts_with(directive)).unwrap_or_else(|| panic!("no {directive}"));
        line.trim().trim_start_matches(directive).trim().trim_end_matches(';').parse().unwrap()
    };
    let sockets = mfe::limits::TARGET_SOCKETS;
    let connections = number("worker_connections");
    assert!(connections >= 2 * sockets + 1024, "worker_connections {connections}: a proxied socket is two");
    assert!(number("worker_rlimit_nofile") >= connections, "each connection is a descriptor");
}

#[test]
fn the_eleventh_sign_in_request_within_a_minute_from_one_ip_gets_429() {
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let _serial = mfe_testkit::serial::group(module_path!());
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
    let line = log.lines().find(|l| l.contains("/ws")).unwrap();
    for timing in ["uct=0.", "uht=0.", "urt=0."] {
        assert!(line.contains(timing), "no upstream timing {timing} in {line}");
    }
}

#[test]
fn json_of_a_kilobyte_or_more_is_gzipped_and_small_json_is_not() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let edge = Edge::start(spawn_upstream());
    let client = edge.client();
    let big = client.get(edge.url("/api/big")).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(big.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
    let small = client.get(edge.url("/api/small")).header("accept-encoding", "gzip").send().unwrap();
    assert!(small.headers().get("content-encoding").is_none());
}
