//! A read-through cache for a hot read, kept true by whoever writes what it holds.
//!
//! A write in this process forgets the key after it commits, so a replica reads its own writes.
//! On PostgreSQL the tables behind the read also notify on [`CHANNEL`] (a trigger in the
//! service's migrations), so other replicas forget within a notification's latency. While that
//! listener is not connected the cache is bypassed, and after a reconnect it starts empty, since
//! notifications sent meanwhile are lost. SQLite is embedded in one process: its local forgets
//! see every write. Entries also expire after the configured time, a bound on staleness should
//! a notification connection die unnoticed.
//!
//! Callers missing the same key at the same time share the first one's load: the others wait
//! for it and find its value (unless it failed or a write raced it; then each loads). An entry
//! past half its time is read again by one caller while the others still get it, so a key read
//! all the time does not expire and make every caller at that moment wait for the database.

use crate::Shutdown;
use crate::db::Db;
use moka::sync::Cache;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The notification channel of every cache; payloads are `schema:key` (the trigger's
/// `TG_TABLE_SCHEMA`), so services and deployments sharing a database ignore each other's.
pub const CHANNEL: &str = "contactier_read_cache";

/// How long the listener waits before connecting again after losing its connection.
const RECONNECT: Duration = Duration::from_secs(1);

pub struct ReadCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for ReadCache<V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    loaded: Instant,
}

struct Inner<V> {
    /// None when caching is off.
    entries: Option<Cache<String, Entry<V>>>,
    /// Past this age an entry is read again by the next caller.
    refresh_after: Duration,
    /// Bumped by every forget: a load that saw another value of it may be stale.
    generation: AtomicU64,
    /// Whether every write that could change an entry reaches this cache.
    live: AtomicBool,
    /// The turn of each key being loaded now.
    loads: Lines,
}

impl<V: Clone + Send + Sync + 'static> ReadCache<V> {
    /// A cache of up to `capacity` entries that live at most `ttl` (zero: no caching). On
    /// PostgreSQL it listens for its schema's notifications until `shutdown`, and is in use
    /// from the start if the first connection succeeds.
    pub async fn new(db: &Db, ttl: Duration, capacity: u64, shutdown: Shutdown) -> Self {
        let entries =
            (!ttl.is_zero()).then(|| Cache::builder().max_capacity(capacity).time_to_live(ttl).build());
        let cache = Self {
            inner: Arc::new(Inner {
                entries,
                refresh_after: ttl / 2,
                generation: AtomicU64::new(0),
                live: AtomicBool::new(matches!(db, Db::Sqlite(_))),
                loads: Mutex::default(),
            }),
        };
        if let (Db::Postgres(pool), Some(_)) = (db, &cache.inner.entries) {
            let first = connect(pool).await.inspect_err(|e| {
                tracing::warn!(error = %e, "read cache notifications unavailable; reading through until they are");
            });
            if first.is_ok() {
                cache.set_live(true);
            }
            tokio::spawn(listen(pool.clone(), cache.clone(), first.ok(), shutdown));
        }
        cache
    }

    /// The cached value of `key`, or what `load` reads (kept unless a write may have raced it).
    pub async fn get_or_load<E, Fut>(&self, key: &str, load: impl FnOnce() -> Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(entries) = self.inner.entries.as_ref().filter(|_| self.inner.live.load(Ordering::SeqCst))
        else {
            return load().await;
        };
        let cached = entries.get(key);
        if let Some(e) = &cached
            && e.loaded.elapsed() < self.inner.refresh_after
        {
            return Ok(e.value.clone());
        }
        let turn = Turn::take(&self.inner.loads, key);
        if let Some(e) = cached {
            // Old but still in time: one caller reads it again, the others go on with it.
            let Ok(_refreshing) = turn.lock.try_lock() else { return Ok(e.value) };
            return Ok(self.load_and_keep(entries, key, load).await.unwrap_or(e.value));
        }
        // The first caller loads; the others wait for it once, then load alone if it found
        // nothing to keep (it failed, or raced a write), so a failing database costs each
        // caller at most two loads' time, not the whole line's.
        let _loading = if let Ok(first) = turn.lock.try_lock() {
            Some(first)
        } else {
            drop(turn.lock.lock().await);
            if let Some(e) = entries.get(key) {
                return Ok(e.value);
            }
            None
        };
        self.load_and_keep(entries, key, load).await
    }

    /// Loads `key` and keeps the value unless a write may have raced the load.
    async fn load_and_keep<E, Fut>(
        &self,
        entries: &Cache<String, Entry<V>>,
        key: &str,
        load: impl FnOnce() -> Fut,
    ) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        let before = self.inner.generation.load(Ordering::SeqCst);
        let loaded = Instant::now();
        let v = load().await?;
        if self.inner.generation.load(Ordering::SeqCst) == before {
            entries.insert(key.to_owned(), Entry { value: v.clone(), loaded });
            // A forget between the check and the insert may have missed the entry: undo it.
            if self.inner.generation.load(Ordering::SeqCst) != before {
                entries.invalidate(key);
            }
        }
        Ok(v)
    }

    /// Drops what is cached for `key`; writers call it after their change commits.
    pub fn forget(&self, key: &str) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(entries) = &self.inner.entries {
            entries.invalidate(key);
        }
    }

    /// Forgets `key` when dropped. Taken before a write's transaction, it forgets after the
    /// commit, on every way out of the write.
    pub fn forget_after<'a>(&'a self, key: &'a str) -> ForgetOnDrop<'a, V> {
        ForgetOnDrop { cache: self, key }
    }

    fn forget_all(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(entries) = &self.inner.entries {
            entries.invalidate_all();
        }
    }

    fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::SeqCst);
        self.forget_all();
    }
}

/// Each key being loaded now, with the lock its callers take turns on.
type Lines = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A caller's place in the line of one key's loads. The last to leave removes the line.
struct Turn<'a> {
    loads: &'a Lines,
    key: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(loads: &'a Lines, key: &'a str) -> Self {
        let lock = loads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone();
        Self { loads, key, lock }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut loads = self.loads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's reference and this one: nobody else is in line (others join under this lock).
        if Arc::strong_count(&self.lock) <= 2
            && loads.get(self.key).is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            loads.remove(self.key);
        }
    }
}

/// Forgets its key when dropped; see [`ReadCache::forget_after`].
pub struct ForgetOnDrop<'a, V: Clone + Send + Sync + 'static> {
    cache: &'a ReadCache<V>,
    key: &'a str,
}

impl<V: Clone + Send + Sync + 'static> Drop for ForgetOnDrop<'_, V> {
    fn drop(&mut self) {
        self.cache.forget(self.key);
    }
}

/// A connection listening on [`CHANNEL`] and the payload prefix of its schema.
struct Listening {
    listener: PgListener,
    prefix: String,
}

/// Listens on a connection of its own: the pool's are for queries.
async fn connect(pool: &PgPool) -> Result<Listening, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&own).await?;
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(CHANNEL).await?;
    Ok(Listening { listener, prefix: format!("{schema}:") })
}

/// Forgets what the notifications name until the connection fails.
async fn follow<V: Clone + Send + Sync + 'static>(
    Listening { mut listener, prefix }: Listening,
    cache: &ReadCache<V>,
) -> sqlx::Error {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(key) = n.payload().strip_prefix(prefix.as_str()) {
                    cache.forget(key);
                }
            }
            // Reconnected: what was sent in between is lost.
            Ok(None) => cache.forget_all(),
            Err(e) => return e,
        }
    }
}

/// Follows notifications until shutdown, connecting again whenever the connection is lost;
/// the cache is bypassed while it is.
async fn listen<V: Clone + Send + Sync + 'static>(
    pool: PgPool,
    cache: ReadCache<V>,
    mut listening: Option<Listening>,
    shutdown: Shutdown,
) {
    while !shutdown.is_triggered() {
        let attempt = async {
            let l = if let Some(l) = listening.take() {
                l
            } else {
                let l = connect(&pool).await?;
                cache.set_live(true);
                l
            };
            Err::<(), _>(follow(l, &cache).await)
        };
        tokio::select! {
            Err(e) = attempt => {
                tracing::warn!(error = %e, "read cache notifications lost; reading through until back");
            }
            () = shutdown.wait() => {}
        }
        cache.set_live(false);
        tokio::select! {
            () = tokio::time::sleep(RECONNECT) => {}
            () = shutdown.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/c.db", dir.path().display()), "c", 1).await.unwrap();
        (db, dir)
    }

    #[tokio::test]
    async fn a_cached_value_is_read_until_forgotten() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(60), 10, Shutdown::new()).await;
        let load = |v: u32| move || async move { Ok::<_, ()>(v) };
        assert_eq!(cache.get_or_load("a", load(1)).await, Ok(1));
        assert_eq!(cache.get_or_load("a", load(2)).await, Ok(1), "cached");
        cache.forget("a");
        assert_eq!(cache.get_or_load("a", load(3)).await, Ok(3), "read again after a forget");
    }

    #[tokio::test]
    async fn a_load_raced_by_a_write_is_not_kept() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(60), 10, Shutdown::new()).await;
        let racing = cache.clone();
        // The write commits and forgets while the load is reading the old value.
        let stale = cache
            .get_or_load("a", || async move {
                racing.forget("a");
                Ok::<_, ()>(1)
            })
            .await;
        assert_eq!(stale, Ok(1));
        assert_eq!(
            cache.get_or_load("a", || async { Ok::<_, ()>(2) }).await,
            Ok(2),
            "the old value was kept"
        );
    }

    /// Loads that count their calls and answer only once the gate opens.
    #[derive(Clone)]
    struct Gated {
        calls: Arc<AtomicU64>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl Default for Gated {
        fn default() -> Self {
            Self { calls: Arc::default(), gate: Arc::new(tokio::sync::Semaphore::new(0)) }
        }
    }

    impl Gated {
        /// A load answering `value`.
        fn load(
            &self,
            value: u32,
        ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<u32, ()>> + Send>> + use<>
        {
            let g = self.clone();
            move || {
                Box::pin(async move {
                    g.calls.fetch_add(1, Ordering::SeqCst);
                    g.gate.acquire().await.unwrap().forget();
                    Ok(value)
                })
            }
        }

        /// A caller asking for key "a" with a load answering `value`.
        fn ask(&self, cache: &ReadCache<u32>, value: u32) -> tokio::task::JoinHandle<Result<u32, ()>> {
            let (cache, load) = (cache.clone(), self.load(value));
            tokio::spawn(async move { cache.get_or_load("a", load).await })
        }

        /// Returns once a load has begun.
        async fn started(&self) {
            while self.calls() == 0 {
                tokio::task::yield_now().await;
            }
        }

        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }

        fn open(&self) {
            self.gate.add_permits(100);
        }
    }

    #[tokio::test]
    async fn callers_missing_the_same_key_share_one_load() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(60), 10, Shutdown::new()).await;
        let g = Gated::default();
        let askers: Vec<_> = (0..8).map(|i| g.ask(&cache, i)).collect();
        g.started().await;
        g.open();
        let answers: Vec<_> =
            futures::future::join_all(askers).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(g.calls(), 1, "one read for eight callers");
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        assert!(cache.inner.loads.lock().unwrap().is_empty(), "the line is gone with its last caller");
    }

    #[tokio::test]
    async fn a_caller_after_a_write_does_not_get_the_value_loaded_before_it() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(60), 10, Shutdown::new()).await;
        let g = Gated::default();
        let first = g.ask(&cache, 1);
        g.started().await;
        // A write commits while the first load reads the old value; a caller asks after it.
        cache.forget("a");
        let after = g.ask(&cache, 2);
        tokio::task::yield_now().await;
        g.open();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(after.await.unwrap(), Ok(2), "it read again");
        assert_eq!(g.calls(), 2);
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failed_load_read_for_themselves() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(60), 10, Shutdown::new()).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let first = tokio::spawn({
            let (cache, gate) = (cache.clone(), gate.clone());
            async move {
                cache
                    .get_or_load("a", || async move {
                        gate.acquire().await.unwrap().forget();
                        Err::<u32, _>("down")
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_or_load("a", || async { Ok::<_, &str>(5) }).await })
            })
            .collect();
        tokio::task::yield_now().await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Err("down"));
        for w in waiting {
            assert_eq!(w.await.unwrap(), Ok(5), "not the first caller's error");
        }
    }

    #[tokio::test]
    async fn an_entry_past_half_its_time_is_read_again_by_one_caller_while_the_others_get_it() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::from_secs(2), 10, Shutdown::new()).await;
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(2) }).await, Ok(1), "fresh");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let g = Gated::default();
        let refreshing = g.ask(&cache, 3);
        g.started().await;
        // Its refresh is under way: the others are answered at once, with what is kept.
        let others = Gated::default();
        assert_eq!(cache.get_or_load("a", others.load(4)).await, Ok(1));
        assert_eq!(others.calls(), 0);
        g.open();
        assert_eq!(refreshing.await.unwrap(), Ok(3));
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(5) }).await, Ok(3), "kept");
        // A failed refresh answers with what is kept, still in time.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(cache.get_or_load("a", || async { Err(()) }).await, Ok(3));
    }

    #[tokio::test]
    async fn zero_time_to_live_turns_caching_off() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::ZERO, 10, Shutdown::new()).await;
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(2) }).await, Ok(2));
    }
}
