//! The built `mfe-gateway` binary as a child process: a 100 MB upload and a 100 MB download
//! through it leave its resident memory (read from /proc/<pid>/status) within 20 MB of where
//! it started — the proxy streams and never buffers a body.

use crate::common;

use std::{
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

const MB: u64 = 1024 * 1024;

struct ChildGateway(Child);

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the gateway process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Samples VmRSS every 20 ms until stopped; returns the highest value in KiB.
fn sample_peak(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let peak = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            peak.fetch_max(status_kb(pid, "VmRSS:"), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak.load(Ordering::Relaxed)
    })
}

#[tokio::test]
async fn a_100_mb_upload_and_download_through_the_gateway_binary_keep_its_memory_flat() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let upstream = common::spawn_upstream().await;
    let port = mfe_testkit::net::closed_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mfe-gateway"))
        .env("PORT", port.to_string())
        .env("GATEWAY_HOST", "127.0.0.1")
        .env("AUTH_SERVICE_URL", &upstream.url)
        .env("PAYMENTS_SERVICE_URL", &upstream.url)
        .env("ADMIN_SERVICE_URL", &upstream.url)
        .env("PROFILE_SERVICE_URL", &upstream.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the mfe-gateway binary starts (cargo builds it for this test)");
    let child = ChildGateway(child);
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway binary did not answer /health on port {port} within 10 s");

    // Warm up pools and allocator arenas with a small transfer each way, then take the baseline.
    client.post(format!("{base}/api/auth/upload")).body(vec![b'x'; MB as usize]).send().await.unwrap();
    client.get(format!("{base}/api/auth/download?bytes={MB}")).send().await.unwrap().bytes().await.unwrap();
    let baseline = status_kb(pid, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peak(pid, stop.clone());
    let size = 100 * MB;
    let resp = client
        .post(format!("{base}/api/payments/upload"))
        .body(reqwest::Body::wrap_stream(common::chunks(size)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["bytes"], size);
    let mut download = client.get(format!("{base}/api/payments/download?bytes={size}")).send().await.unwrap();
    let mut received = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let growth_mb = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("gateway rss: baseline {} KiB, peak {} KiB, growth {growth_mb:.1} MiB", baseline, peak);
    assert!(growth_mb < 20.0, "gateway RSS grew by {growth_mb:.1} MiB moving 2 × 100 MB (limit 20 MiB)");
}
