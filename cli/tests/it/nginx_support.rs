//! A real nginx with the repository's configuration (rendered by `mfe` for the native runtime)
//! in a temporary prefix, on free ports, with a fresh dev CA and certificate, in front of a
//! gateway (or a stand-in) on a given port. Each test gets its own nginx, so tests run in
//! parallel. Stopped with SIGTERM when dropped, so no worker outlives it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Edge {
    child: Child,
    prefix: tempfile::TempDir,
    pub http: u16,
    pub https: u16,
    /// The dev CA the server certificate chains to.
    pub ca: PathBuf,
}

/// The nginx binary (`MFE_NGINX` overrides); fails saying how to get it.
pub fn nginx_bin() -> PathBuf {
    let bin = std::env::var("MFE_NGINX").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/sbin/nginx"));
    assert!(
        bin.exists(),
        "nginx is needed by this test and was not found at {} — apt-get install nginx (scripts/install-deps.sh) or set MFE_NGINX",
        bin.display()
    );
    bin
}

/// What nginx fronts in a test: the gateway on `gateway_port`, the shell and micro-frontends on
/// closed ports (nothing answers) and the default CORS origins, unless a test says otherwise.
pub fn edge_settings(gateway_port: u16) -> mfe::infra::nginx::EdgeSettings {
    let closed = || format!("127.0.0.1:{}", mfe_testkit::closed_port());
    mfe::infra::nginx::EdgeSettings {
        gateways: vec![format!("127.0.0.1:{gateway_port}")],
        shell: closed(),
        auth_mfe: closed(),
        payments_mfe: closed(),
        admin_mfe: closed(),
        cors_allowed_origins: mfe::infra::nginx::parse_origins(mfe_core::env::var("CORS_ALLOWED_ORIGINS").default)
            .unwrap(),
        api_rate: mfe_core::env::var("NGINX_API_RATE").default.to_string(),
    }
}

impl Edge {
    /// Renders the configuration for fresh ports, checks it with `nginx -t`, starts nginx and
    /// waits (bounded) until it listens on HTTPS.
    pub fn start(gateway_port: u16) -> Edge {
        Edge::start_with(&edge_settings(gateway_port))
    }

    /// [`Edge::start`] in front of the given upstreams and origins.
    pub fn start_with(settings: &mfe::infra::nginx::EdgeSettings) -> Edge {
        let prefix = tempfile::tempdir().unwrap();
        let ssl = mfe::ssl::CertPaths::in_dir(&prefix.path().join("ssl"));
        mfe::ssl::generate(&ssl, 30, &[], false).expect("generate a dev CA and certificate");
        let mut cfg = mfe::config::Config::from_env().expect("configuration from the environment");
        cfg.root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        cfg.nginx_http_port = mfe_testkit::closed_port();
        cfg.nginx_https_port = mfe_testkit::closed_port();
        cfg.ssl_cert_path = ssl.cert.clone();
        cfg.ssl_key_path = ssl.key.clone();
        cfg.gateway_url = format!("http://{}", settings.gateways[0]);
        let conf = mfe::infra::nginx::prepare_native_with(&cfg, settings, prefix.path())
            .expect("render the nginx configuration");

        let bin = nginx_bin();
        let test = Command::new(&bin).arg("-p").arg(prefix.path()).arg("-c").arg(&conf).arg("-t").output().unwrap();
        assert!(test.status.success(), "nginx -t failed: {}", String::from_utf8_lossy(&test.stderr));
        let child = Command::new(&bin)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let edge = Edge { child, prefix, http: cfg.nginx_http_port, https: cfg.nginx_https_port, ca: ssl.ca_cert };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", edge.https)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} within 10 s: {}",
                edge.https,
                edge.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        edge
    }

    /// `https://localhost:<port><path>`; clients resolve localhost to 127.0.0.1.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https)
    }

    /// The dev CA as a reqwest certificate, for clients that must verify the server.
    pub fn ca_certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("log/error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("log/access.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    /// SIGTERM lets the master stop its workers (SIGKILL would orphan them, still listening).
    fn drop(&mut self) {
        if !terminate(&mut self.child, Duration::from_secs(10)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; false if it did not.
pub fn terminate(child: &mut Child, within: Duration) -> bool {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
