//! Storage: SQLite (embedded default, a file per service) or PostgreSQL (production),
//! chosen by the database URL. On PostgreSQL each service lives in its own schema.

use anyhow::{Context, bail};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;
use std::time::Instant;

/// A connection pool on one of the two backends. Storage code runs statements on it (and on
/// its transactions) through [`crate::sql`], written once for both.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    /// Rows of `cols` parameters one multi-row statement should carry.
    pub fn rows_per_statement(&self, cols: usize) -> usize {
        let params = match self {
            Db::Sqlite(_) => crate::sql::SQLITE_PARAMETERS,
            Db::Postgres(_) => crate::sql::PG_PARAMETERS,
        };
        (params / cols.max(1)).max(1)
    }

    /// `column` is one of the strings in the JSON array bound as `$n`: a whole set of keys in
    /// one text parameter, so a statement's shape and cost do not grow with the set. On
    /// PostgreSQL the set becomes an array first, so the lookup is an index condition on the
    /// key rather than a join the planner may turn into scans.
    pub fn json_in(&self, column: &str, n: usize) -> String {
        match self {
            Db::Sqlite(_) => format!("{column} IN (SELECT value FROM json_each(${n}))"),
            Db::Postgres(_) => {
                format!("{column} = ANY(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb)))")
            }
        }
    }

    /// A FROM item `x` of the JSON array of objects bound as `$n`, one row per object with
    /// the columns `cols` (name, PostgreSQL type: text, bigint or boolean).
    pub fn json_records(&self, n: usize, cols: &[(&str, &str)]) -> String {
        match self {
            Db::Sqlite(_) => {
                let fields: Vec<String> =
                    cols.iter().map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}")).collect();
                format!("(SELECT {} FROM json_each(${n})) AS x", fields.join(", "))
            }
            Db::Postgres(_) => {
                let fields: Vec<String> = cols.iter().map(|(c, t)| format!("{c} {t}")).collect();
                format!("jsonb_to_recordset(${n}::jsonb) AS x({})", fields.join(", "))
            }
        }
    }

    /// For `UPDATE {table} SET ... FROM {item} WHERE {condition}`: the FROM item `x` of the
    /// JSON records bound as `$n` (columns `cols`, the first the key) and the condition that
    /// joins each to its row of `table`, of the account bound as `$1`. SQLite's planner, without
    /// statistics, took the account's rows as the outer loop and read every record for each row
    /// (10 s for 500 records in an account of 20,000). There each record looks its row up by the
    /// table's key first (CROSS JOIN keeps that order), the records are set apart before the
    /// update (`LIMIT -1` keeps SQLite from folding them into its join) and it finds each row
    /// by rowid.
    pub fn update_records(&self, table: &str, n: usize, cols: &[(&str, &str)]) -> (String, String) {
        let key = cols.first().map_or("id", |c| c.0);
        match self {
            Db::Sqlite(_) => {
                let fields: Vec<String> =
                    cols.iter().map(|(c, _)| format!("json_extract(j.value, '$.{c}') AS {c}")).collect();
                let item = format!(
                    "(SELECT t.rowid AS target_row, {} FROM json_each(${n}) AS j CROSS JOIN {table} AS t \
                     WHERE t.account_id = $1 AND t.{key} = json_extract(j.value, '$.{key}') LIMIT -1) AS x",
                    fields.join(", ")
                );
                (item, format!("{table}.rowid = x.target_row"))
            }
            Db::Postgres(_) => {
                (self.json_records(n, cols), format!("{table}.account_id = $1 AND {table}.{key} = x.{key}"))
            }
        }
    }
}

/// Most bytes of JSON one statement's records parameter ([`Db::json_records`]) carries:
/// PostgreSQL holds at most 256 MiB in one jsonb value, and batches pay off long before this.
pub const JSON_BATCH_BYTES: usize = 32 << 20;

/// `records` as JSON arrays of at most [`JSON_BATCH_BYTES`] each, in order (a record past it
/// on its own goes alone), for one statement each.
pub fn json_batches<T: serde::Serialize>(records: impl IntoIterator<Item = T>) -> Vec<String> {
    let finish = |mut batch: Vec<u8>| {
        batch.push(b']');
        String::from_utf8(batch).expect("serde_json writes UTF-8")
    };
    let mut batches = Vec::new();
    let mut current = vec![b'['];
    let mut record_json = Vec::new();
    for record in records {
        record_json.clear();
        serde_json::to_writer(&mut record_json, &record).expect("records serialize");
        if current.len() > 1 && current.len() + record_json.len() + 2 > JSON_BATCH_BYTES {
            batches.push(finish(std::mem::replace(&mut current, vec![b'['])));
        }
        if current.len() > 1 {
            current.push(b',');
        }
        current.extend_from_slice(&record_json);
    }
    if current.len() > 1 {
        batches.push(finish(current));
    }
    batches
}

/// `($1, $2, …), ($k, …)` for a multi-row statement of `rows` rows of `cols` parameters, the
/// same on both backends.
pub fn placeholders(rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    // Written into one string: a batch's statement has tens of thousands of placeholders.
    let mut out = String::with_capacity(rows * cols * 8);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=cols {
            if c > 1 {
                out.push_str(", ");
            }
            let _ = write!(out, "${}", r * cols + c);
        }
        out.push(')');
    }
    out
}

/// Begins a transaction that will write. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`): a deferred transaction that reads and then writes fails outright ("database is
/// locked") when another connection wrote in between, where waiting for the lock is right.
pub trait BeginWrite {
    type Transaction;
    fn begin_write(&self) -> impl Future<Output = Result<Self::Transaction, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Transaction = sqlx::Transaction<'static, sqlx::Sqlite>;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        // The wait for a connection and, on SQLite, for the write lock.
        timed_begin("sqlite", self.begin_with("BEGIN IMMEDIATE")).await
    }
}

impl BeginWrite for PgPool {
    type Transaction = crate::sql::PgTx;
    async fn begin_write(&self) -> Result<crate::sql::PgTx, sqlx::Error> {
        let (begin, watch) = match BOUNDED
            .try_with(|bound| Watch { bound: bound.clone(), account: ACCOUNT.try_with(Clone::clone).ok() })
        {
            Ok(watch) if watch.short() => (BEGIN_BOUNDED_AGAIN.as_str(), Some(watch)),
            Ok(watch) => (BEGIN_BOUNDED.as_str(), Some(watch)),
            Err(_) => ("BEGIN", None),
        };
        timed_begin("postgresql", crate::sql::PgTx::begin_with(self, begin, watch)).await
    }
}

tokio::task_local! {
    /// Set while [`bounded`] work runs.
    static BOUNDED: Bound;
    /// The account a bounded transaction begins for (see [`for_account`]).
    static ACCOUNT: String;
}

/// How long a write of [`bounded`] work waits for a lock another session holds, on PostgreSQL.
/// A quarter of a second: an account's legitimate writers hold its rows for less (a batch of
/// update dates, a bulk change's call), and a call's held accounts are tried one after
/// another, each time they are retried together: twenty held for 2 s each ran a call past its
/// sender's 30 s deadline, for 1 s each kept every other account's events 20-48 s late.
pub const BOUNDED_LOCK_WAIT: Duration = Duration::from_millis(250);
/// How long a bounded write waits for a lock when its account was held up by a lock within the
/// last [`HELD_MEMORY`], or another account of the same bounded work (one call) was: its sender
/// retries a held account alone in a call, and each retry's wait was every other account's in
/// the sender's one call at a time (twenty held at 250 ms: the others' events about 30 s late
/// for the first 40 s of the hold), and a call of many accounts met held for the first time
/// waited for each in turn (500 held: calls of 11-12 s, seen from outside).
pub const BOUNDED_LOCK_WAIT_AGAIN: Duration = Duration::from_millis(10);
/// How long one statement of [`bounded`] work may run, on PostgreSQL (a trigger that runs on).
pub const BOUNDED_STATEMENT: Duration = Duration::from_secs(5);
/// How long an account's bounded work held up is remembered (see [`BOUNDED_LOCK_WAIT_AGAIN`]).
pub const HELD_MEMORY: Duration = Duration::from_secs(60);
static BEGIN_BOUNDED: LazyLock<String> = LazyLock::new(|| begin_bounded(BOUNDED_LOCK_WAIT));
static BEGIN_BOUNDED_AGAIN: LazyLock<String> = LazyLock::new(|| begin_bounded(BOUNDED_LOCK_WAIT_AGAIN));

fn begin_bounded(lock: Duration) -> String {
    let (lock, statement) = (lock.as_millis(), BOUNDED_STATEMENT.as_millis());
    format!("BEGIN; SET LOCAL lock_timeout = {lock}; SET LOCAL statement_timeout = {statement}")
}

/// The accounts a receiver's bounded work found held up by a lock lately, with when: one per
/// receiver, shared by its calls.
#[derive(Clone, Default)]
pub struct HeldAccounts(Arc<Mutex<HashMap<String, Instant>>>);

/// The most accounts remembered at once; past it, with none forgotten by age, all are.
const HELD_MAX: usize = 10_000;

impl HeldAccounts {
    pub(crate) fn note(&self, account: &str) {
        let now = Instant::now();
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() >= HELD_MAX {
            held.retain(|_, at| now.duration_since(*at) < HELD_MEMORY);
            if held.len() >= HELD_MAX {
                held.clear();
            }
        }
        held.insert(account.to_owned(), now);
    }

    fn recently(&self, account: &str) -> bool {
        let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(account).is_some_and(|at| at.elapsed() < HELD_MEMORY)
    }
}

/// What bounded work's transactions share: the receiver's accounts held up lately, and whether
/// this work (one call) met a lock held yet.
#[derive(Clone)]
pub(crate) struct Bound {
    held: HeldAccounts,
    met: Arc<AtomicBool>,
}

/// A bounded transaction's watch for a lock held: the work it is part of, and its account.
pub(crate) struct Watch {
    bound: Bound,
    account: Option<String>,
}

impl Watch {
    /// Whether the transaction gives a lock up at once (see [`BOUNDED_LOCK_WAIT_AGAIN`]).
    fn short(&self) -> bool {
        self.bound.met.load(Ordering::Relaxed)
            || self.account.as_deref().is_some_and(|a| self.bound.held.recently(a))
    }

    /// One of the transaction's statements gave up a lock another session holds.
    pub(crate) fn lock_held(&self) {
        self.bound.met.store(true, Ordering::Relaxed);
        if let Some(account) = &self.account {
            self.bound.held.note(account);
        }
    }
}

/// Runs `work` with every write transaction it begins bounded on PostgreSQL: one that waits
/// on a lock past [`BOUNDED_LOCK_WAIT`] or runs a statement past [`BOUNDED_STATEMENT`] fails,
/// as storage held up (`ABORTED`: the database is there, so a sender backs off as from any
/// refusal rather than retry within seconds as from an outage). Receivers of a sender's events
/// apply each account's so: one account's row held by another session, or a slow trigger on
/// it, then fails that account in time and the call answers for the others, where it held the
/// call to its sender's deadline, every account's events behind it, and a pooled connection at
/// each retry until the pool ran dry. Once one of its transactions gives up a held lock, the
/// rest give one up at once, and an account's (see [`for_account`]) is noted in `held`. SQLite's
/// one writer has no such per-row waits.
pub async fn bounded<F: Future>(held: &HeldAccounts, work: F) -> F::Output {
    BOUNDED.scope(Bound { held: held.clone(), met: Arc::default() }, work).await
}

/// Runs `work`, whose write transactions are `account`'s alone: within [`bounded`] work they
/// wait [`BOUNDED_LOCK_WAIT_AGAIN`] for a lock when the account was held up lately.
pub async fn for_account<F: Future>(account: &str, work: F) -> F::Output {
    ACCOUNT.scope(account.to_owned(), work).await
}

/// Times a transaction's start (the pool's wait included) into `contactier_db_begin_seconds`,
/// in a span with the database's semantic-convention attributes.
async fn timed_begin<T>(
    system: &'static str,
    begin: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "BEGIN",
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = "BEGIN"
    );
    let result = tracing::Instrument::instrument(begin, span).await;
    metrics::histogram!("contactier_db_begin_seconds", "db_system" => system)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The answer to a storage failure (see [`crate::storage_failure`]).
pub fn storage_status(e: &sqlx::Error) -> tonic::Status {
    crate::storage_failure::status(e)
}

/// Whether a pooled SQLite connection may be handed out again: not if it still counts a
/// transaction open. A statement that makes SQLite end the transaction itself (a trigger's
/// `RAISE(ROLLBACK)`, a full disk, an I/O error) makes the ROLLBACK after it fail, and the
/// connection then refused every transaction begun on it, for every account, until a restart.
/// Such a connection is closed instead. A rollback of a dropped transaction may still be
/// queued: a ping waits for it before the count is read again.
async fn ended_cleanly(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    if conn.is_in_transaction() && conn.ping().await.is_err() {
        return Ok(false);
    }
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("a SQLite connection left inside a transaction the database ended is closed");
    }
    Ok(clean)
}

/// Which backend a [`Db`] is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The runtime's tables, tracked apart from the service's own migrations.
static RUNTIME_SQLITE: LazyLock<Migrator> =
    LazyLock::new(|| runtime_migrator(sqlx::migrate!("migrations/sqlite")));
static RUNTIME_POSTGRES: LazyLock<Migrator> =
    LazyLock::new(|| runtime_migrator(sqlx::migrate!("migrations/postgres")));
static RUNTIME_MIGRATIONS: LazyLock<Migrations> =
    LazyLock::new(|| Migrations { sqlite: &RUNTIME_SQLITE, postgres: &RUNTIME_POSTGRES });

fn runtime_migrator(mut m: Migrator) -> Migrator {
    m.dangerous_set_table_name("_runtime_migrations");
    m
}

/// A service's embedded migrations, one set per backend.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// Each pooled SQLite connection's page cache, in KiB (SQLite's own default is 2,000): pages
/// beyond it come from the operating system's file cache, which every connection shares. At the
/// default, ten connections kept up to 20 MB of the same pages apiece; at 512 a service on a
/// million contacts (SQLite) peaked 5.5-9.7 MB lower, reading and writing as fast (BENCHMARKS.md).
const SQLITE_CACHE_KIB: u32 = 512;

impl Db {
    /// Connects to `url` (`sqlite://path` or `postgres://...`). On PostgreSQL, `schema` is
    /// created if missing and becomes the search path of every connection.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .with_context(|| "invalid SQLite DATABASE_URL")?
                .create_if_missing(true)
                // WAL lets readers run beside the one writer.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // REGEXP, for matching without regard to case beyond ASCII: SQLite's LOWER folds
                // ASCII letters only.
                .with_regexp()
                .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));
            if let Some(dir) = opts.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .before_acquire(|conn, _| Box::pin(ended_cleanly(conn)))
                .connect_with(opts)
                .await?;
            Ok(Db::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            check_schema_name(schema)?;
            let base = PgConnectOptions::from_str(url).with_context(|| "invalid PostgreSQL DATABASE_URL")?;
            let mut conn = base.connect().await.context("connecting to PostgreSQL")?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
                .execute(&mut conn)
                .await
                .or_else(ignore_concurrent_create)?;
            conn.close().await?;
            let port = base.get_port();
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .after_connect(move |_, _| {
                    Box::pin(async move {
                        crate::nodelay::connected_to(port);
                        Ok(())
                    })
                })
                // The application name shows operators (and test cleanup) whose sessions these are.
                // No JIT: the services run short statements, and one whose estimate passes
                // `jit_above_cost` (a page of an audit trail of millions, planned for the rows
                // it might read) was compiled at each run, 15-17 ms for a read of 0.3 ms.
                .connect_with(
                    base.application_name(&application_name(schema))
                        .options([("search_path", schema), ("jit", "off")]),
                )
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            bail!("DATABASE_URL must start with sqlite: or postgres:")
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the migrations of this backend. Safe with several replicas starting at once:
    /// see [`migrate_postgres`].
    pub async fn migrate(&self, migrations: &Migrations) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => tolerant(migrations.sqlite).run(pool).await?,
            Db::Postgres(pool) => migrate_postgres(pool, migrations.postgres).await?,
        }
        Ok(())
    }

    /// Applies the runtime's own tables (outbox, inbox), then the service's migrations.
    pub async fn migrate_service(&self, migrations: Option<&Migrations>) -> anyhow::Result<()> {
        self.migrate(&RUNTIME_MIGRATIONS).await.context("runtime migrations")?;
        match migrations {
            Some(m) => self.migrate(m).await,
            None => Ok(()),
        }
    }

    /// Answers whether the database is reachable (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ())?,
            Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ())?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// The advisory lock every migration of the database runs under (advisory locks are per
/// database).
const MIGRATION_LOCK: i64 = 0x636f_6e74_6163_7469;

/// How long a migration in a transaction waits for a table's lock before it gives way: while it
/// waits, every reader and writer of the table queues behind it (replicas of the version before
/// still serve through a rollout). It tries again after a pause, up to [`MIGRATION_TRIES`] times.
const MIGRATION_LOCK_TIMEOUT: &str = "2s";
const MIGRATION_TRIES: u32 = 40;

/// A migrator that takes a database some migrations ahead of it: a replica of the version before
/// (a pod rescheduled mid-rollout, or a rollback) starts on the schema the newer version left,
/// which every migration keeps usable by the version before (`deploy/check_migrations.py`).
fn tolerant(m: &Migrator) -> Migrator {
    Migrator {
        migrations: m.migrations.clone(),
        ignore_missing: true,
        locking: false,
        no_tx: m.no_tx,
        table_name: m.table_name.clone(),
        create_schemas: m.create_schemas.clone(),
    }
}

/// Whether a migration gave way to a lock held too long ([`MIGRATION_LOCK_TIMEOUT`]).
fn gave_way(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError as M;
    let code = |e: &sqlx::Error| {
        e.as_database_error().and_then(sqlx::error::DatabaseError::code).is_some_and(|c| c == "55P03")
    };
    matches!(e, M::Execute(e) | M::ExecuteMigration(e, _) if code(e))
}

/// Drops the indexes a concurrent build left invalid (a replica killed, or a build that gave
/// way), without blocking the table's writers, so that their migration builds them again.
async fn drop_invalid_indexes(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("SET lock_timeout = 0").execute(&mut *conn).await?;
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE NOT i.indisvalid AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
    )
    .fetch_all(&mut *conn)
    .await?;
    for index in invalid {
        tracing::warn!(index, "dropping an index a build left invalid");
        let q = format!("DROP INDEX CONCURRENTLY IF EXISTS \"{}\"", index.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(q)).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Runs PostgreSQL migrations one service at a time per database. Waiting is a poll, not a
/// blocked query: an index built CONCURRENTLY waits for every open transaction of the database,
/// and a replica blocked on a lock in one would deadlock with it. An index such a build left
/// invalid (a replica killed mid-way) is dropped first, so that its migration builds it again.
/// One migration at a time: one in a transaction waits at most [`MIGRATION_LOCK_TIMEOUT`] for
/// a lock and then tries again later; an index built concurrently holds no lock that stops the
/// writers, and waits as long as it must.
async fn migrate_postgres(pool: &sqlx::PgPool, m: &Migrator) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let mut wait = Duration::from_millis(50);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut *conn)
        .await?
    {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    let run = async {
        drop_invalid_indexes(&mut conn).await?;
        let migrator = tolerant(m);
        for migration in m.iter() {
            let timeout = if migration.no_tx { "0" } else { MIGRATION_LOCK_TIMEOUT };
            let mut tries = 0;
            loop {
                sqlx::query(sqlx::AssertSqlSafe(format!("SET lock_timeout = '{timeout}'")))
                    .execute(&mut *conn)
                    .await?;
                match migrator.run_direct(Some(migration.version), &mut *conn, false).await {
                    Ok(()) => break,
                    Err(e) if gave_way(&e) && tries + 1 < MIGRATION_TRIES => {
                        tries += 1;
                        tracing::warn!(
                            version = migration.version,
                            tries,
                            "a migration gave way to a lock held by another transaction; trying again"
                        );
                        drop_invalid_indexes(&mut conn).await?;
                        tokio::time::sleep(Duration::from_secs(u64::from(tries).min(15))).await;
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    // The connection goes back to the pool: without the migrations' lock timeout.
    let reset = sqlx::query("RESET lock_timeout").execute(&mut *conn).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
    run?;
    reset?;
    unlock?;
    Ok(())
}

/// Whether opening a database failed for a reason that may pass (the server not up yet, the
/// network), as opposed to a URL or schema that cannot work.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>().is_some_and(|e| {
            matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_))
                || e.as_database_error().is_some_and(|d| {
                    // Starting up or shutting down, too many connections, cannot connect now.
                    d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08") || c == "53300")
                })
        }) || c.downcast_ref::<std::io::Error>().is_some()
    })
}

/// Two replicas creating the same schema at once may race past IF NOT EXISTS.
fn ignore_concurrent_create(e: sqlx::Error) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => Ok(Default::default()),
        _ => Err(e),
    }
}

/// Schema names are spliced into SQL (identifiers cannot be bound), so only plain
/// identifiers are accepted.
fn check_schema_name(schema: &str) -> anyhow::Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("database schema {schema:?} must be lower-case letters, digits and _");
    }
    Ok(())
}

/// The `application_name` of a service's PostgreSQL sessions.
pub fn application_name(schema: &str) -> String {
    format!("contactier:{schema}")
}

/// Drops a PostgreSQL schema and all it holds, ending the schema's own sessions first (a test
/// that stops mid-transaction must not leave its cleanup waiting on itself). Test runs use it
/// to clean up after themselves.
pub async fn drop_postgres_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    check_schema_name(schema)?;
    let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()")
        .bind(application_name(schema))
        .execute(&mut conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_each_row_after_the_last() {
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 1), "($1)");
        assert_eq!(placeholders(0, 5), "");
    }

    #[test]
    fn json_batches_stay_under_the_limit_and_keep_every_record_in_order() {
        let record = |i: usize, len: usize| serde_json::json!({ "i": i, "v": "x".repeat(len) });
        let sizes =
            [10, JSON_BATCH_BYTES / 3, JSON_BATCH_BYTES / 3, JSON_BATCH_BYTES / 3, JSON_BATCH_BYTES + 5, 7];
        let batches = json_batches(sizes.iter().enumerate().map(|(i, &len)| record(i, len)));
        let mut seen = Vec::new();
        for b in &batches {
            let items: Vec<serde_json::Value> = serde_json::from_str(b).unwrap();
            assert!(b.len() <= JSON_BATCH_BYTES || items.len() == 1, "only a record too large alone passes");
            seen.extend(items.iter().map(|r| r["i"].as_u64().unwrap() as usize));
        }
        assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>());
        assert_eq!(batches.len(), 4);
        assert!(json_batches(Vec::<serde_json::Value>::new()).is_empty());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(check_schema_name("contacts").is_ok());
        assert!(check_schema_name("t_1a2b_billing").is_ok());
        for bad in ["", "Contacts", "a-b", "x\"; drop", "1abc"] {
            assert!(check_schema_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn every_sqlite_connection_keeps_a_small_page_cache() {
        let dir = std::env::temp_dir().join(format!("contactier-db-cache-{}", std::process::id()));
        let url = format!("sqlite://{}", dir.join("cache.db").display());
        let Db::Sqlite(pool) = Db::connect(&url, "s", 3).await.unwrap() else { panic!("not SQLite") };
        // Held at once, so each is a connection of its own.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = pool.acquire().await.unwrap();
            let (size,): (i64,) = sqlx::query_as("PRAGMA cache_size").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(size, -i64::from(SQLITE_CACHE_KIB), "KiB, as SQLite reads a negative size");
            held.push(conn);
        }
        drop(held);
        pool.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn unknown_url_schemes_are_refused() {
        let err = Db::connect("mysql://localhost/x", "s", 1).await.unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"));
    }
}
