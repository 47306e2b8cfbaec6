//! A read-through cache for a hot read, kept true by whoever writes what it holds.
//!
//! A write in this process forgets the key after it commits, so a replica reads its own writes.
//! On PostgreSQL the tables behind the read also notify on [`CHANNEL`] (a trigger in the
//! service's migrations), so other replicas forget within a notification's latency. While that
//! listener is not connected the cache is bypassed, and after a reconnect it starts empty, since
//! notifications sent meanwhile are lost. SQLite is embedded in one process: its local forgets
//! see every write. Entries also expire after the configured time, a bound on staleness should
//! a notification connection die unnoticed.

use crate::Shutdown;
use crate::db::Db;
use moka::sync::Cache;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

struct Inner<V> {
    /// None when caching is off.
    entries: Option<Cache<String, V>>,
    /// Bumped by every forget: a load that saw another value of it may be stale.
    generation: AtomicU64,
    /// Whether every write that could change an entry reaches this cache.
    live: AtomicBool,
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
                generation: AtomicU64::new(0),
                live: AtomicBool::new(matches!(db, Db::Sqlite(_))),
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
        if let Some(v) = entries.get(key) {
            return Ok(v);
        }
        let before = self.inner.generation.load(Ordering::SeqCst);
        let v = load().await?;
        if self.inner.generation.load(Ordering::SeqCst) == before {
            entries.insert(key.to_owned(), v.clone());
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
            let l = match listening.take() {
                Some(l) => l,
                None => {
                    let l = connect(&pool).await?;
                    cache.set_live(true);
                    l
                }
            };
            Err::<(), _>(follow(l, &cache).await)
        };
        tokio::select! {
            Err(e) = attempt => {
                tracing::warn!(error = %e, "read cache notifications lost; reading through until back");
            }
            _ = shutdown.wait() => {}
        }
        cache.set_live(false);
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT) => {}
            _ = shutdown.wait() => {}
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

    #[tokio::test]
    async fn zero_time_to_live_turns_caching_off() {
        let (db, _dir) = sqlite().await;
        let cache = ReadCache::new(&db, Duration::ZERO, 10, Shutdown::new()).await;
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(cache.get_or_load("a", || async { Ok::<_, ()>(2) }).await, Ok(2));
    }
}
