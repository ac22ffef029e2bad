//! The service binaries as child processes of a test: built with cargo when stale, their
//! output collected for the failure message, killed when dropped.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mfe_testkit::START_HINT;

use crate::nginx_support;

type Shared<T> = Arc<Mutex<T>>;

/// A child process whose stdout and stderr are collected; killed when dropped.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    output: Shared<String>,
}

impl Proc {
    pub fn spawn(name: &'static str, bin: PathBuf, env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(&bin);
        cmd.current_dir(std::env::temp_dir())
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("SENTRY_DSN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let output: Shared<String> = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Proc { name, child, output }
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// SIGTERM, then waits (bounded) for a graceful exit.
    pub fn terminate(&mut self) {
        if !nginx_support::terminate(&mut self.child, Duration::from_secs(20)) {
            panic!("{} did not stop within 20 s of SIGTERM; logs:\n{}", self.name, self.logs());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds (if stale) and locates the service binaries.
pub fn binaries<const N: usize>(packages: [&str; N]) -> [PathBuf; N] {
    let root = crate::repo_root();
    let mut args = vec!["build", "--quiet"];
    for p in packages {
        args.extend(["-p", p]);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(&args)
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "cargo {} failed", args.join(" "));
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    packages.map(|p| target.join("debug").join(p))
}

pub async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    what: &Proc,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if check(&v) {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not healthy at {url} within 60 s — {START_HINT}; logs:\n{}",
            what.name,
            what.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
