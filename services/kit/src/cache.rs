//! A small Redis cache of JSON values with a TTL. Redis is a cache only: every failure is
//! logged and treated as a miss, so a Redis outage never fails a request — nor slows it down
//! much: after a failure, the cache's reads and fills skip Redis for [`SKIP_AFTER_FAILURE`]
//! (misses without a round trip), and a lost connection is retried once per command, without
//! the client's backoff sleeps ([`connect_redis`]). Invalidations (deletes, versioned puts,
//! tag bumps) are never skipped: they always try, so an entry is never left stale because a
//! failure a moment ago made the cache look away.
//!
//! Keys are `<name>:<key>`: a cache named `user` keeps user `42` under `user:42`, the seed's
//! key patterns (`user:{id}`, `payment:{id}`, `profile:{userId}`). Three kinds of entries:
//! - plain JSON values ([`Cache::get`], [`Cache::set`], [`Cache::delete`]), for records whose
//!   cached fields no write changes once read (or whose writer deletes after its commit and
//!   whose readers cannot race it);
//! - versioned records ([`Cache::get_versioned`], [`Cache::put_versioned`]), for records that
//!   change while they are read: an entry is replaced only by a newer version, so a reader that
//!   read the database before a write can never put its older copy back after the writer's;
//! - tagged entries (list pages, [`Cache::get_tagged`]), invalidated a whole tag at a time.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, LazyLock,
};
use std::time::{Duration, Instant};

use redis::{aio::ConnectionManager, AsyncCommands};
use serde::{de::DeserializeOwned, Serialize};

use crate::metrics::Metrics;

/// How long reads and fills skip Redis after it failed: during an outage one request in this
/// long pays for a connection attempt, the others go straight to the database.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Since when [`Skip`] counts (one clock for the process).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Until when reads and fills skip Redis, in ms since [`EPOCH`] (0: not skipping).
#[derive(Default)]
struct Skip(AtomicU64);

impl Skip {
    fn now_ms() -> u64 {
        EPOCH.elapsed().as_millis() as u64
    }

    fn active(&self) -> bool {
        Self::now_ms() < self.0.load(Ordering::Relaxed)
    }

    fn failed(&self) {
        self.0.store(Self::now_ms() + SKIP_AFTER_FAILURE.as_millis() as u64, Ordering::Relaxed);
    }
}

/// A named cache (`name` labels the hit/miss counters and prefixes the keys).
#[derive(Clone)]
pub struct Cache {
    name: &'static str,
    conn: ConnectionManager,
    ttl: Duration,
    metrics: Metrics,
    skip: Arc<Skip>,
}

impl Cache {
    pub fn new(name: &'static str, conn: ConnectionManager, ttl: Duration, metrics: Metrics) -> Self {
        Self { name, conn, ttl, metrics, skip: Arc::default() }
    }

    /// A read or a fill skipped because Redis failed less than [`SKIP_AFTER_FAILURE`] ago.
    fn skipping(&self) -> bool {
        self.skip.active()
    }

    /// Records a failure of Redis (any command): reads and fills skip it for a while.
    fn failed(&self) {
        self.skip.failed();
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}:{key}", self.name)
    }

    /// The cached value of `key`, counting a hit or a miss.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if self.skipping() {
            self.metrics.cache_miss(self.name);
            return None;
        }
        let mut conn = self.conn.clone();
        let raw: Result<Option<String>, _> = conn.get(self.full_key(key)).await;
        let value = match raw {
            Ok(Some(s)) => serde_json::from_str(&s).ok(),
            Ok(None) => None,
            Err(e) => {
                self.failed();
                tracing::warn!(cache = self.name, error = %e, "redis get failed; treating as a miss");
                None
            }
        };
        match value {
            Some(_) => self.metrics.cache_hit(self.name),
            None => self.metrics.cache_miss(self.name),
        }
        value
    }

    /// Stores `value` under `key` for the cache's TTL.
    pub async fn set<T: Serialize>(&self, key: &str, value: &T) {
        if self.skipping() {
            return;
        }
        let Ok(json) = serde_json::to_string(value) else { return };
        let mut conn = self.conn.clone();
        let result: Result<(), _> = conn.set_ex(self.full_key(key), json, self.ttl.as_secs().max(1)).await;
        if let Err(e) = result {
            self.failed();
            tracing::warn!(cache = self.name, error = %e, "redis set failed");
        }
    }

    /// Removes `key`; called after every write of the cached record (never skipped).
    pub async fn delete(&self, key: &str) {
        let mut conn = self.conn.clone();
        let result: Result<(), _> = conn.del(self.full_key(key)).await;
        if let Err(e) = result {
            self.failed();
            tracing::warn!(cache = self.name, error = %e, "redis delete failed; the entry expires with its ttl");
        }
    }
}

/// Stores a versioned record (`KEYS[1]`, a hash of `version` and `body`) unless the stored one
/// is as new or newer: `ARGV` are the version, the body and the lifetime in seconds. Returns 1
/// when stored. One script, so the compare and the write are one atomic step.
const PUT_IF_NEWER: &str = r"
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'body', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Versioned records: each entry is a Redis hash `<name>:<key>` of `version` (a number that
/// grows with every write of the record, such as its `updated_at` in milliseconds when writes
/// keep it strictly increasing) and `body` (the JSON). Both readers that fill the entry after a
/// miss and writers after their commit call [`Cache::put_versioned`], which keeps the newest:
/// - a reader that read the database before a write and fills after the writer's put is
///   refused (its version is older), so a read after a write never gets the old record back;
/// - two writers whose puts arrive out of order leave the later write's record.
///
/// This replaces delete-on-write for such records: a delete leaves the window where a reader
/// that read before the commit fills the old record back after the delete, for a whole TTL.
/// The one way to a stale entry left is a writer's put that fails (Redis down or timing out),
/// which is logged as an error and lasts at most the TTL.
impl Cache {
    /// The record stored under `key` (counting a hit or a miss).
    pub async fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        if self.skipping() {
            self.metrics.cache_miss(self.name);
            return None;
        }
        let mut conn = self.conn.clone();
        let raw: Result<Option<String>, _> = conn.hget(self.full_key(key), "body").await;
        let value = match raw {
            Ok(Some(s)) => serde_json::from_str(&s).ok(),
            Ok(None) => None,
            Err(e) => {
                self.failed();
                tracing::warn!(cache = self.name, error = %e, "redis hget failed; treating as a miss");
                None
            }
        };
        match value {
            Some(_) => self.metrics.cache_hit(self.name),
            None => self.metrics.cache_miss(self.name),
        }
        value
    }

    /// Stores `value` as version `version` of `key` for the cache's TTL, unless a version as
    /// new or newer is stored already. Returns whether it was stored (`false` also when Redis
    /// failed, which is logged as an error: the stored entry may then be older than the
    /// database until its TTL).
    pub async fn put_versioned<T: Serialize>(&self, key: &str, version: i64, value: &T) -> bool {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(PUT_IF_NEWER));
        let Ok(json) = serde_json::to_string(value) else { return false };
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(self.full_key(key)).arg(version).arg(json).arg(self.ttl.as_secs().max(1));
        let mut conn = self.conn.clone();
        match invocation.invoke_async::<i64>(&mut conn).await {
            Ok(stored) => stored == 1,
            Err(e) => {
                self.failed();
                tracing::error!(cache = self.name, key, error = %e, "cannot store a versioned entry; an older one may be served until its ttl");
                false
            }
        }
    }
}

/// What [`Cache::get_tagged`] found: the current version of the tag and, on a hit, the stored
/// body of the entry (written at that version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedLookup {
    pub version: u64,
    pub body: Option<String>,
    /// A write of the tag is in flight ([`Cache::begin_tagged_write`]): what the caller reads
    /// now may predate it, so it must not fill the entry.
    pub writing: bool,
}

/// How long a write announced by [`Cache::begin_tagged_write`] keeps the tag's entries unfillable
/// when its writer never ends it (a crashed process): the cost of a lost end is a tag served
/// from the database for this long, never a stale entry.
pub const TAGGED_WRITE_GUARD: Duration = Duration::from_secs(60);

/// Ends one announced write of some tags: `KEYS` are pairs of a tag's count of writes in flight
/// and its version, `ARGV[1]` the version's lifetime. A count is deleted when it reaches zero, so
/// a count that expired meanwhile never goes negative and hides a later write.
const END_TAGGED_WRITE: &str = r"
for i = 1, #KEYS, 2 do
  if redis.call('DECR', KEYS[i]) <= 0 then redis.call('DEL', KEYS[i]) end
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
end
return 0
";

/// Tagged entries: text bodies (e.g. serialised responses) stored under a tag such as
/// `user:<id>`, all invalidated at once without scanning keys.
///
/// Each tag has a version counter; an entry is stored as `<version>\n<body>` and counts only
/// while its version is the tag's current one. A read is one round trip (`MGET` of the version,
/// the count of writes in flight and the entry). A reader that fills an entry stamps it with the
/// version it read *before* querying, so an entry filled across a write is already stale.
///
/// A writer invalidates in one of two ways:
/// - after its commit, [`Cache::invalidate_tags`] (one round trip before it answers);
/// - around it, when it knows its tags before writing: [`Cache::begin_tagged_write`] bumps the
///   versions and marks the tags as being written, concurrently with the database write, and
///   [`Cache::end_tagged_write`] bumps them again after the commit, off the answer's path. While
///   a tag is being written nobody fills it, so a page read before the commit cannot be stored
///   at a version that is current after the answer. The answer waits for the database and the
///   begin, whichever is slower, instead of the database and then Redis.
///
/// Keys carry the tag in braces (`{tag}`), so a tag's keys share a Redis Cluster slot (the
/// begin and end of a write of several tags are one call each: on a cluster they would be one
/// per tag).
impl Cache {
    fn tag_version_key(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:version", self.name)
    }

    fn tag_writing_key(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:writing", self.name)
    }

    fn tagged_key(&self, tag: &str, key: &str) -> String {
        format!("{}:{{{tag}}}:{key}", self.name)
    }

    /// How long a tag's version lives: it outlives every entry stamped with it (twice the TTL,
    /// renewed by each bump), so a version that expired and restarts from 0 meets no old entry
    /// stamped 0.
    fn version_lifetime(&self) -> i64 {
        (self.ttl.as_secs().max(1) * 2) as i64
    }

    /// The current version of `tag` and the body of `key` if it was stored at that version
    /// (counting a hit or a miss). `None` when Redis failed: the caller then neither reads nor
    /// fills the cache.
    pub async fn get_tagged(&self, tag: &str, key: &str) -> Option<TaggedLookup> {
        if self.skipping() {
            self.metrics.cache_miss(self.name);
            return None;
        }
        let mut conn = self.conn.clone();
        let raw: Result<(Option<u64>, Option<i64>, Option<String>), _> =
            conn.mget(&[self.tag_version_key(tag), self.tag_writing_key(tag), self.tagged_key(tag, key)]).await;
        let (version, writing, stored) = match raw {
            Ok((v, writing, stored)) => (v.unwrap_or(0), writing.unwrap_or(0) > 0, stored),
            Err(e) => {
                self.failed();
                tracing::warn!(cache = self.name, error = %e, "redis mget failed; treating as a miss");
                self.metrics.cache_miss(self.name);
                return None;
            }
        };
        let body = stored.filter(|_| !writing).and_then(|s| {
            let (stamp, body) = s.split_once('\n')?;
            (stamp.parse::<u64>().ok()? == version).then(|| body.to_string())
        });
        match body {
            Some(_) => self.metrics.cache_hit(self.name),
            None => self.metrics.cache_miss(self.name),
        }
        Some(TaggedLookup { version, body, writing })
    }

    /// Stores `body` under `key` of `tag` as of `version` (the one [`Cache::get_tagged`] gave
    /// before the data was read, with no write in flight), for the cache's TTL.
    pub async fn set_tagged(&self, tag: &str, key: &str, version: u64, body: &str) {
        if self.skipping() {
            return;
        }
        let mut conn = self.conn.clone();
        let value = format!("{version}\n{body}");
        let result: Result<(), _> = conn.set_ex(self.tagged_key(tag, key), value, self.ttl.as_secs().max(1)).await;
        if let Err(e) = result {
            self.failed();
            tracing::warn!(cache = self.name, error = %e, "redis set failed");
        }
    }

    /// Makes every entry of `tags` stale, in one round trip (after the write committed). A
    /// failure is logged as an error: the entries then live until their TTL.
    pub async fn invalidate_tags<T: AsRef<str> + std::fmt::Debug>(&self, tags: &[T]) {
        let mut pipe = redis::pipe();
        self.bump_versions(&mut pipe, tags);
        self.send_invalidation(pipe, tags).await
    }

    /// Announces a write of `tags`, to run concurrently with it: every entry is stale and none
    /// is filled until [`Cache::end_tagged_write`] (or [`TAGGED_WRITE_GUARD`]). One atomic round
    /// trip (`MULTI`), so no reader sees a new version without the write mark. A failure is
    /// logged as an error: the entries then live until their TTL.
    pub async fn begin_tagged_write<T: AsRef<str> + std::fmt::Debug>(&self, tags: &[T]) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.bump_versions(&mut pipe, tags);
        for tag in tags {
            let writing = self.tag_writing_key(tag.as_ref());
            pipe.incr(&writing, 1).ignore().expire(&writing, TAGGED_WRITE_GUARD.as_secs() as i64).ignore();
        }
        self.send_invalidation(pipe, tags).await
    }

    /// Adds to `pipe` the bump of each tag's version (and the renewal of its lifetime).
    fn bump_versions<T: AsRef<str>>(&self, pipe: &mut redis::Pipeline, tags: &[T]) {
        for tag in tags {
            let key = self.tag_version_key(tag.as_ref());
            pipe.incr(&key, 1).ignore().expire(&key, self.version_lifetime()).ignore();
        }
    }

    async fn send_invalidation<T: std::fmt::Debug>(&self, pipe: redis::Pipeline, tags: &[T]) {
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            self.failed();
            tracing::error!(cache = self.name, error = %e, ?tags, "cannot invalidate cached entries; they may be stale until their ttl");
        }
    }

    /// Ends a write announced by [`Cache::begin_tagged_write`], after it committed (or failed):
    /// the versions move on again, past any entry read before the commit, and the tags can be
    /// filled once no other write of them is in flight. One round trip, which the writer need
    /// not wait for before answering.
    pub async fn end_tagged_write<T: AsRef<str> + std::fmt::Debug>(&self, tags: &[T]) {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(END_TAGGED_WRITE));
        let mut invocation = SCRIPT.prepare_invoke();
        for tag in tags {
            invocation.key(self.tag_writing_key(tag.as_ref())).key(self.tag_version_key(tag.as_ref()));
        }
        invocation.arg(self.version_lifetime());
        let mut conn = self.conn.clone();
        // EVALSHA, loading the script first when this Redis has not seen it.
        let result = invocation.invoke_async::<()>(&mut conn).await;
        if let Err(e) = result {
            self.failed();
            tracing::error!(cache = self.name, error = %e, ?tags, "cannot end a tagged write; the tags are served from the source until the write guard expires");
        }
    }
}

/// Connects to Redis with a connection manager that reconnects on its own. Connection and
/// response timeouts are short, so a stalled Redis costs a request a second at most.
///
/// No retries within a reconnection: the client's backoff starts at 1 s and multiplies by its
/// "factor" (100 by default: redis 0.27 hands it to backon as the multiplier), so with retries
/// one command waited 1 + 100 s (plus jitter) while Redis was down — a sign-up took 78 s, a
/// `/me` 236 s. Every later command starts a new attempt anyway, and while Redis is down the
/// cache skips it ([`SKIP_AFTER_FAILURE`]).
pub async fn connect_redis(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    ConnectionManager::new_with_config(client, redis_config()).await
}

fn redis_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache on the Redis of `REDIS_URL` (the test stack), named per test run so runs in
    /// parallel never share tags.
    async fn cache() -> Cache {
        let url = mfe_core::env::get("REDIS_URL");
        let conn = connect_redis(&url).await.unwrap_or_else(|e| {
            panic!("redis at {url} unreachable ({e}) — start the test stack: `mfe infra start` with test.env loaded")
        });
        let name: &'static str = Box::leak(format!("kit-test-{}", uuid::Uuid::new_v4().simple()).into_boxed_str());
        Cache::new(name, conn, Duration::from_secs(30), Metrics::new("kit-test"))
    }

    #[tokio::test]
    async fn a_tagged_entry_is_served_until_its_tag_is_invalidated() {
        let cache = cache().await;
        let first = cache.get_tagged("user:1", "page").await.expect("redis answers");
        assert_eq!(first.body, None, "nothing stored yet");
        cache.set_tagged("user:1", "page", first.version, r#"{"data":[]}"#).await;
        let hit = cache.get_tagged("user:1", "page").await.expect("redis answers");
        assert_eq!(hit.body.as_deref(), Some(r#"{"data":[]}"#), "served as stored");

        cache.invalidate_tags(&["user:1", "all"]).await;
        let after = cache.get_tagged("user:1", "page").await.expect("redis answers");
        assert_eq!(after.body, None, "stale after the invalidation");
        assert_eq!(after.version, first.version + 1);
        cache.set_tagged("user:2", "page", 0, "other").await;
        assert_eq!(
            cache.get_tagged("user:2", "page").await.and_then(|l| l.body).as_deref(),
            Some("other"),
            "other tags are untouched"
        );
    }

    #[tokio::test]
    async fn a_fill_read_before_a_concurrent_write_is_never_served() {
        let cache = cache().await;
        // A reader looks up (miss), then reads the database...
        let seen = cache.get_tagged("user:1", "page").await.expect("redis answers");
        // ...while a writer commits and invalidates...
        cache.invalidate_tags(&["user:1"]).await;
        // ...and the reader fills with what it read before the write.
        cache.set_tagged("user:1", "page", seen.version, "stale").await;
        assert_eq!(cache.get_tagged("user:1", "page").await.expect("redis answers").body, None);
    }

    #[tokio::test]
    async fn a_page_read_while_a_write_is_in_flight_is_never_filled_nor_served_after_it() {
        let cache = cache().await;
        let before = cache.get_tagged("user:1", "page").await.expect("redis answers");
        cache.set_tagged("user:1", "page", before.version, "old").await;
        // A writer announces its write (concurrently with its database write)...
        cache.begin_tagged_write(&["user:1", "all"]).await;
        // ...a reader then finds no entry and is told not to fill...
        let during = cache.get_tagged("user:1", "page").await.expect("redis answers");
        assert_eq!(during.body, None, "the entry from before the write is stale at once");
        assert!(during.writing, "the tag is marked as being written");
        // ...and if it filled anyway with what it read before the commit, the end of the write
        // makes that entry stale too.
        cache.set_tagged("user:1", "page", during.version, "read before the commit").await;
        cache.end_tagged_write(&["user:1", "all"]).await;
        let after = cache.get_tagged("user:1", "page").await.expect("redis answers");
        assert_eq!(after.body, None);
        assert!(!after.writing, "the write is over");
        assert_eq!(after.version, before.version + 2, "bumped at the begin and at the end");
        cache.set_tagged("user:1", "page", after.version, "new").await;
        assert_eq!(cache.get_tagged("user:1", "page").await.and_then(|l| l.body).as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn overlapping_writes_keep_the_tag_unfillable_until_the_last_one_ends() {
        let cache = cache().await;
        cache.begin_tagged_write(&["user:1"]).await;
        cache.begin_tagged_write(&["user:1"]).await;
        cache.end_tagged_write(&["user:1"]).await;
        assert!(cache.get_tagged("user:1", "page").await.expect("redis answers").writing, "one write still in flight");
        cache.end_tagged_write(&["user:1"]).await;
        assert!(!cache.get_tagged("user:1", "page").await.expect("redis answers").writing);
        // An end without its begin (the mark expired meanwhile) leaves no negative count that
        // would hide the next write.
        cache.end_tagged_write(&["user:1"]).await;
        cache.begin_tagged_write(&["user:1"]).await;
        assert!(cache.get_tagged("user:1", "page").await.expect("redis answers").writing);
    }

    #[tokio::test]
    async fn a_versioned_entry_is_replaced_only_by_a_newer_version() {
        let cache = cache().await;
        let key = "p1";
        assert_eq!(cache.get_versioned::<String>(key).await, None, "nothing stored yet");
        // A reader fills version 10...
        assert!(cache.put_versioned(key, 10, &"v10".to_string()).await);
        // ...a writer commits version 11 and puts it...
        assert!(cache.put_versioned(key, 11, &"v11".to_string()).await);
        // ...and a reader that read version 10 before the commit tries to fill it back.
        assert!(!cache.put_versioned(key, 10, &"v10".to_string()).await, "an older version is refused");
        assert!(!cache.put_versioned(key, 11, &"v11 again".to_string()).await, "the same version is kept");
        assert_eq!(cache.get_versioned::<String>(key).await.as_deref(), Some("v11"));

        let mut conn = cache.conn.clone();
        let ttl: i64 = redis::cmd("TTL").arg(format!("{}:{key}", cache.name)).query_async(&mut conn).await.unwrap();
        assert!((25..=30).contains(&ttl), "the entry lives for the cache's ttl (30 s), got {ttl}");
    }
}
