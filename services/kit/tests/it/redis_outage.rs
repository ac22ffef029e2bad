//! The cache during a Redis outage, on a redis-server of its own (port 38679, stopped and
//! started by the test): once Redis is gone a read is a miss within about a second, the reads
//! after it skip Redis (no round trip) for a while, `/health` says degraded quickly, and once
//! Redis is back the cache works again without a restart.
//!
//! Before: the connection manager's backoff (1 s, then ×100) held one command for minutes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mfe_kit::cache::{connect_redis, Cache, SKIP_AFTER_FAILURE};
use mfe_kit::health::Health;
use mfe_kit::metrics::Metrics;

const PORT: u16 = 38679;

struct Redis(Child);

impl Redis {
    fn start() -> Self {
        let bin = match mfe_core::env::get("MFE_REDIS_SERVER") {
            s if s.is_empty() => "redis-server".to_string(),
            s => s,
        };
        let child = Command::new(&bin)
            .args(["--port", &PORT.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (apt-get install redis-server): {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", PORT)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {PORT}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_redis_outage_costs_a_read_at_most_a_second_and_the_cache_recovers_by_itself() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{PORT}");
    let conn = connect_redis(&url).await.expect("redis answers");
    let cache = Cache::new("outage-test", conn.clone(), Duration::from_secs(30), Metrics::new("kit-test"));
    let health = Health::new("kit-test").redis(conn);
    cache.set("k", &"v".to_string()).await;
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("v"));
    assert_eq!(health.check().await.status, "ok");

    redis.stop();
    let t = Instant::now();
    assert_eq!(cache.get::<String>("k").await, None, "a miss while Redis is down");
    assert!(t.elapsed() < Duration::from_millis(1500), "the first read after the outage took {:?}", t.elapsed());
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(cache.get::<String>("k").await, None);
        cache.set("k", &"during".to_string()).await;
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "50 reads and fills right after a failure took {:?}",
        t.elapsed()
    );
    // Still down past the skip: each read that tries Redis again costs a connection attempt,
    // not the client's backoff.
    for round in 0..3 {
        tokio::time::sleep(SKIP_AFTER_FAILURE + Duration::from_millis(100)).await;
        let t = Instant::now();
        assert_eq!(cache.get::<String>("k").await, None);
        assert!(t.elapsed() < Duration::from_millis(1500), "read {round} past the skip took {:?}", t.elapsed());
    }
    let t = Instant::now();
    let report = health.check().await;
    assert_eq!((report.status, report.dependencies["redis"].status), ("degraded", "down"));
    assert!(t.elapsed() < Duration::from_secs(1), "/health without Redis took {:?}", t.elapsed());

    let _redis = Redis::start();
    tokio::time::sleep(SKIP_AFTER_FAILURE + Duration::from_millis(100)).await;
    let recovered = async {
        for _ in 0..50 {
            cache.set("k", &"after".to_string()).await;
            if cache.get::<String>("k").await.as_deref() == Some("after") {
                return true;
            }
            tokio::time::sleep(SKIP_AFTER_FAILURE / 4).await;
        }
        false
    };
    assert!(recovered.await, "the cache serves again once Redis is back");
    assert_eq!(health.check().await.status, "ok");
}
