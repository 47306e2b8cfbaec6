//! Statements written once for both backends, run by plain functions.
//!
//! [`Sql`] is a statement with its parameters, encoded for SQLite and PostgreSQL alike as they
//! are bound (`$1` placeholders work on both). [`Tx`] runs one on anything that holds a
//! connection: a [`Transaction`] from [`Db::begin_write`](crate::db::Db::begin_write), a pooled
//! [`Conn`], or either backend's own connection. Store code is then ordinary generic functions
//! over `impl Tx`, which rustfmt formats and the compiler checks once.

pub use crate::append::{Cell, PgTx, Rows};
use crate::db::{BeginWrite, Db};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{
    Arguments, Encode, FromRow, PgConnection, Postgres, SqlSafeStr, SqlStr, Sqlite, SqliteConnection, Type,
};

/// A value both backends can bind.
pub trait Param:
    for<'q> Encode<'q, Postgres> + Type<Postgres> + for<'q> Encode<'q, Sqlite> + Type<Sqlite>
{
}

impl<T> Param for T where
    T: for<'q> Encode<'q, Postgres> + Type<Postgres> + for<'q> Encode<'q, Sqlite> + Type<Sqlite>
{
}

/// A row both backends can decode.
pub trait Row: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

impl<T> Row for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

/// A statement and its parameters.
#[must_use = "a statement does nothing until a Tx runs it"]
pub struct Sql {
    text: SqlStr,
    pg: PgArguments,
    sqlite: SqliteArguments,
    /// The first parameter that failed to encode.
    error: Option<BoxDynError>,
    /// PostgreSQL keeps its plan whatever the statement is (see [`Sql::keep_plan`]).
    keep_plan: bool,
}

impl Sql {
    /// A statement from a constant, or from text built of constants (`AssertSqlSafe`).
    pub fn new(text: impl SqlSafeStr) -> Sql {
        Sql {
            text: text.into_sql_str(),
            pg: PgArguments::default(),
            sqlite: SqliteArguments::default(),
            error: None,
            keep_plan: false,
        }
    }

    /// PostgreSQL keeps the statement's plan for the connection even over a set of keys: for a
    /// hot read of a few keys, where planning at each run would cost as much as the read, on a
    /// table that has its size before the first run (a service's main table).
    pub fn keep_plan(mut self) -> Sql {
        self.keep_plan = true;
        self
    }

    /// Binds the next parameter. An encoding error surfaces when the statement runs.
    pub fn bind<T: Param>(mut self, value: T) -> Sql {
        let added = self.pg.add(&value).and_then(|()| self.sqlite.add(value));
        if let Err(e) = added {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Binds every value of `values` in order.
    pub fn bind_all<T: Param>(self, values: impl IntoIterator<Item = T>) -> Sql {
        values.into_iter().fold(self, Sql::bind)
    }

    fn checked(self) -> Result<Sql> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok(self),
        }
    }

    /// Whether PostgreSQL should plan the statement at each run rather than keep a plan: a
    /// statement over a set of keys in a JSON parameter (see [`crate::db::Db::json_in`]). A
    /// kept plan is made once for a connection's life from the table's size then, so a table
    /// that was nearly empty at that moment would be scanned whole on every run once it has
    /// grown; planned with its parameters, the plan follows the table's size, and the work of
    /// planning is small beside that of a set.
    fn plan_each_run(&self) -> bool {
        !self.keep_plan && self.text.as_str().contains("jsonb_")
    }

    fn pg(self) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>> {
        let q = self.checked()?;
        let keep = !q.plan_each_run();
        Ok(sqlx::query_with(q.text, q.pg).persistent(keep))
    }

    fn sqlite(self) -> Result<sqlx::query::Query<'static, Sqlite, SqliteArguments>> {
        let q = self.checked()?;
        Ok(sqlx::query_with(q.text, q.sqlite))
    }

    fn pg_as<T: Row>(self) -> Result<sqlx::query::QueryAs<'static, Postgres, T, PgArguments>> {
        let q = self.checked()?;
        let keep = !q.plan_each_run();
        Ok(sqlx::query_as_with(q.text, q.pg).persistent(keep))
    }

    fn sqlite_as<T: Row>(self) -> Result<sqlx::query::QueryAs<'static, Sqlite, T, SqliteArguments>> {
        let q = self.checked()?;
        Ok(sqlx::query_as_with(q.text, q.sqlite))
    }
}

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Runs statements. Implemented on everything that holds a connection of either backend.
pub trait Tx: Send {
    /// Runs a statement; answers the rows it affected.
    fn execute(&mut self, q: Sql) -> impl Future<Output = Result<u64>> + Send;
    fn fetch_all<T: Row>(&mut self, q: Sql) -> impl Future<Output = Result<Vec<T>>> + Send;
    fn fetch_optional<T: Row>(&mut self, q: Sql) -> impl Future<Output = Result<Option<T>>> + Send;

    /// Appends rows to `table` in bulk ([`crate::append`]); answers how many.
    fn append(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Appends rows that are new but for a rare few, inside a transaction; a row whose key is
    /// taken (`ON CONFLICT {conflict}`; an empty `conflict` means any unique key) is left out.
    /// Answers the `key` column, text, of each row that went in. By COPY on PostgreSQL while
    /// no key is taken, else by `INSERT ... ON CONFLICT DO NOTHING`.
    fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// The one row a statement answers; an error when it answers none.
    fn fetch_one<T: Row>(&mut self, q: Sql) -> impl Future<Output = Result<T>> + Send {
        async { self.fetch_optional(q).await?.ok_or(sqlx::Error::RowNotFound) }
    }

    /// The first column of the one row a statement answers.
    fn scalar<T>(&mut self, q: Sql) -> impl Future<Output = Result<T>> + Send
    where
        (T,): Row,
    {
        async { Ok(self.fetch_one::<(T,)>(q).await?.0) }
    }

    /// The first column of the row a statement answers, if it answers one.
    fn scalar_optional<T>(&mut self, q: Sql) -> impl Future<Output = Result<Option<T>>> + Send
    where
        (T,): Row,
    {
        async { Ok(self.fetch_optional::<(T,)>(q).await?.map(|r| r.0)) }
    }
}

impl Tx for PgConnection {
    async fn execute(&mut self, q: Sql) -> Result<u64> {
        Ok(q.pg()?.execute(self).await?.rows_affected())
    }
    async fn fetch_all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>> {
        q.pg_as()?.fetch_all(self).await
    }
    async fn fetch_optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>> {
        q.pg_as()?.fetch_optional(self).await
    }
    async fn append(&mut self, table: &str, columns: &[&str], rows: &Rows<'_>) -> Result<u64> {
        crate::append::insert(self, PG_PARAMETERS, table, columns, rows).await
    }
    async fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        crate::append::insert_new(self, PG_PARAMETERS, table, columns, rows, conflict, key).await
    }
}

impl Tx for SqliteConnection {
    async fn execute(&mut self, q: Sql) -> Result<u64> {
        Ok(q.sqlite()?.execute(self).await?.rows_affected())
    }
    async fn fetch_all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>> {
        q.sqlite_as()?.fetch_all(self).await
    }
    async fn fetch_optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>> {
        q.sqlite_as()?.fetch_optional(self).await
    }
    async fn append(&mut self, table: &str, columns: &[&str], rows: &Rows<'_>) -> Result<u64> {
        crate::append::insert(self, SQLITE_PARAMETERS, table, columns, rows).await
    }
    async fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        crate::append::insert_new(self, SQLITE_PARAMETERS, table, columns, rows, conflict, key).await
    }
}

/// Parameters of one multi-row statement: SQLite's driver binds parameters in time that grows
/// faster than their number; PostgreSQL takes up to 65,535 and is fastest with long ones.
pub(crate) const SQLITE_PARAMETERS: usize = 999;
pub(crate) const PG_PARAMETERS: usize = 30_000;

/// A transaction on either backend. Dropped without [`Transaction::commit`], it rolls back.
pub enum Transaction {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(PgTx),
}

impl Transaction {
    pub async fn commit(self) -> Result<()> {
        match self {
            Transaction::Sqlite(t) => t.commit().await,
            Transaction::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Transaction::Sqlite(t) => t.rollback().await,
            Transaction::Postgres(t) => t.rollback().await,
        }
    }
}

impl Tx for Transaction {
    async fn execute(&mut self, q: Sql) -> Result<u64> {
        match self {
            Transaction::Sqlite(t) => t.execute(q).await,
            Transaction::Postgres(t) => t.execute(q).await,
        }
    }
    async fn fetch_all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>> {
        match self {
            Transaction::Sqlite(t) => t.fetch_all(q).await,
            Transaction::Postgres(t) => t.fetch_all(q).await,
        }
    }
    async fn fetch_optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>> {
        match self {
            Transaction::Sqlite(t) => t.fetch_optional(q).await,
            Transaction::Postgres(t) => t.fetch_optional(q).await,
        }
    }
    async fn append(&mut self, table: &str, columns: &[&str], rows: &Rows<'_>) -> Result<u64> {
        match self {
            Transaction::Sqlite(t) => t.append(table, columns, rows).await,
            Transaction::Postgres(t) => t.append(table, columns, rows).await,
        }
    }
    async fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        match self {
            Transaction::Sqlite(t) => t.append_new(table, columns, rows, conflict, key).await,
            Transaction::Postgres(t) => t.append_new(table, columns, rows, conflict, key).await,
        }
    }
}

/// A connection from the pool, for reads outside a transaction.
pub enum Conn {
    Sqlite(sqlx::pool::PoolConnection<Sqlite>),
    Postgres(sqlx::pool::PoolConnection<Postgres>),
}

impl Tx for Conn {
    async fn execute(&mut self, q: Sql) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => c.execute(q).await,
            Conn::Postgres(c) => c.execute(q).await,
        }
    }
    async fn fetch_all<T: Row>(&mut self, q: Sql) -> Result<Vec<T>> {
        match self {
            Conn::Sqlite(c) => c.fetch_all(q).await,
            Conn::Postgres(c) => c.fetch_all(q).await,
        }
    }
    async fn fetch_optional<T: Row>(&mut self, q: Sql) -> Result<Option<T>> {
        match self {
            Conn::Sqlite(c) => c.fetch_optional(q).await,
            Conn::Postgres(c) => c.fetch_optional(q).await,
        }
    }
    async fn append(&mut self, table: &str, columns: &[&str], rows: &Rows<'_>) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => c.append(table, columns, rows).await,
            Conn::Postgres(c) => c.append(table, columns, rows).await,
        }
    }
    async fn append_new(
        &mut self,
        table: &str,
        columns: &[&str],
        rows: &Rows<'_>,
        conflict: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        match self {
            Conn::Sqlite(c) => c.append_new(table, columns, rows, conflict, key).await,
            Conn::Postgres(c) => c.append_new(table, columns, rows, conflict, key).await,
        }
    }
}

/// One statement straight on the pool (its own implicit transaction), a transaction or a
/// pooled connection.
impl Db {
    /// Begins a transaction that will write (see [`BeginWrite`]).
    pub async fn begin_write(&self) -> Result<Transaction> {
        Ok(match self {
            Db::Sqlite(p) => Transaction::Sqlite(p.begin_write().await?),
            Db::Postgres(p) => Transaction::Postgres(p.begin_write().await?),
        })
    }

    pub async fn conn(&self) -> Result<Conn> {
        Ok(match self {
            Db::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
            Db::Postgres(p) => Conn::Postgres(p.acquire().await?),
        })
    }

    pub async fn execute(&self, q: Sql) -> Result<u64> {
        Ok(match self {
            Db::Sqlite(p) => q.sqlite()?.execute(p).await?.rows_affected(),
            Db::Postgres(p) => q.pg()?.execute(p).await?.rows_affected(),
        })
    }

    pub async fn fetch_all<T: Row>(&self, q: Sql) -> Result<Vec<T>> {
        match self {
            Db::Sqlite(p) => q.sqlite_as()?.fetch_all(p).await,
            Db::Postgres(p) => q.pg_as()?.fetch_all(p).await,
        }
    }

    pub async fn fetch_optional<T: Row>(&self, q: Sql) -> Result<Option<T>> {
        match self {
            Db::Sqlite(p) => q.sqlite_as()?.fetch_optional(p).await,
            Db::Postgres(p) => q.pg_as()?.fetch_optional(p).await,
        }
    }

    pub async fn fetch_one<T: Row>(&self, q: Sql) -> Result<T> {
        self.fetch_optional(q).await?.ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn scalar<T>(&self, q: Sql) -> Result<T>
    where
        (T,): Row,
    {
        Ok(self.fetch_one::<(T,)>(q).await?.0)
    }

    pub async fn scalar_optional<T>(&self, q: Sql) -> Result<Option<T>>
    where
        (T,): Row,
    {
        Ok(self.fetch_optional::<(T,)>(q).await?.map(|r| r.0))
    }

    /// [`Db::fetch_all`] of a read that may take at most `budget`: PostgreSQL cancels it
    /// (`statement_timeout`), SQLite interrupts it between steps of its program; either way
    /// the error is one [`over_time`] tells. A read a client shapes (a search's filter) cannot
    /// then hold a connection, and the CPU, for longer.
    pub async fn fetch_all_within<T: Row>(&self, q: Sql, budget: std::time::Duration) -> Result<Vec<T>> {
        match self {
            Db::Sqlite(p) => {
                // Given up before its handler is off (the caller's deadline), the connection is
                // closed: handed on, the handler would interrupt its every later statement, a
                // transaction's rollback among them, which then stays open holding the write lock.
                let mut held = CloseOnDrop(Some(p.acquire().await?));
                let conn = held.0.as_mut().expect("held until the end");
                let deadline = std::time::Instant::now() + budget;
                conn.lock_handle()
                    .await?
                    .set_progress_handler(1_000, move || std::time::Instant::now() < deadline);
                let out = match q.sqlite_as() {
                    Ok(q) => q.fetch_all(&mut **conn).await,
                    Err(e) => Err(e),
                };
                conn.lock_handle().await?.remove_progress_handler();
                // Back to the pool without it.
                held.0.take();
                out
            }
            Db::Postgres(p) => {
                // A transaction that owns its connection: given up as it begins, it leaves none
                // open (see `PgTx`).
                let mut tx = PgTx::begin(p).await?;
                let ms = budget.as_millis().clamp(1, i32::MAX as u128);
                let limit = format!("SET LOCAL statement_timeout = {ms}");
                tx.execute(Sql::new(sqlx::AssertSqlSafe(limit))).await?;
                let out = tx.fetch_all(q).await?;
                tx.commit().await?;
                Ok(out)
            }
        }
    }

    /// [`Db::scalar`] within `budget`, as [`Db::fetch_all_within`].
    pub async fn scalar_within<T>(&self, q: Sql, budget: std::time::Duration) -> Result<T>
    where
        (T,): Row,
    {
        self.fetch_all_within::<(T,)>(q, budget).await?.pop().map(|r| r.0).ok_or(sqlx::Error::RowNotFound)
    }
}

/// A pooled SQLite connection closed, not handed on, if dropped while still held.
struct CloseOnDrop(Option<sqlx::pool::PoolConnection<Sqlite>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

/// Whether `e` is a read stopped at its time budget ([`Db::fetch_all_within`]).
pub fn over_time(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    // PostgreSQL's query_canceled; SQLite's SQLITE_INTERRUPT.
    matches!(db.code().as_deref(), Some("57014") | Some("9"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Backend;

    async fn json_parameters_carry_whole_sets(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "jsonsets").await;
        let db = &t.db;
        let records = serde_json::json!([
            {"k": "a", "n": 1, "yes": true},
            {"k": "b'; drop", "n": 20000000000i64, "yes": false},
            {"k": "c", "n": -3, "yes": true},
        ])
        .to_string();
        let keys = serde_json::json!(["a", "c", "missing"]).to_string();
        let insert = format!(
            "INSERT INTO t (k, n, flag) SELECT x.k, x.n, x.yes FROM {}",
            db.json_records(1, &[("k", "text"), ("n", "bigint"), ("yes", "boolean")])
        );
        let select = format!("SELECT k, n, flag FROM t WHERE {} ORDER BY k", db.json_in("k", 1));
        let create = "CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT NOT NULL, flag BOOLEAN NOT NULL)";
        db.execute(Sql::new(create)).await.unwrap();
        db.execute(Sql::new(sqlx::AssertSqlSafe(insert)).bind(&records)).await.unwrap();
        let rows: Vec<(String, i64, bool)> =
            db.fetch_all(Sql::new(sqlx::AssertSqlSafe(select)).bind(&keys)).await.unwrap();
        assert_eq!(rows, [("a".to_owned(), 1, true), ("c".to_owned(), -3, true)]);
    }

    /// A value that does not encode fails the statement with an error rather than a panic,
    /// and a transaction dropped without commit leaves nothing behind.
    async fn a_dropped_transaction_leaves_nothing(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "sqltx").await;
        let db = &t.db;
        db.execute(Sql::new("CREATE TABLE t (k TEXT PRIMARY KEY)")).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        assert_eq!(tx.execute(Sql::new("INSERT INTO t (k) VALUES ($1)").bind("a")).await.unwrap(), 1);
        let seen: i64 = tx.scalar(Sql::new("SELECT COUNT(*) FROM t")).await.unwrap();
        assert_eq!(seen, 1, "a transaction reads its own writes");
        drop(tx);
        let after: i64 = db.scalar(Sql::new("SELECT COUNT(*) FROM t")).await.unwrap();
        assert_eq!(after, 0);
        let none: Option<String> =
            db.scalar_optional(Sql::new("SELECT k FROM t WHERE k = $1").bind("a")).await.unwrap();
        assert_eq!(none, None);
        assert!(matches!(
            db.fetch_one::<(String,)>(Sql::new("SELECT k FROM t")).await,
            Err(sqlx::Error::RowNotFound)
        ));
    }

    /// Records update their own rows of the account, and on SQLite each row is found by its
    /// key, not by reading the records for every row of the account.
    async fn records_update_their_rows_by_key(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "updaterecords").await;
        let db = &t.db;
        let create = "CREATE TABLE r (account_id TEXT NOT NULL, id TEXT NOT NULL, n BIGINT NOT NULL, \
                      PRIMARY KEY (account_id, id))";
        db.execute(Sql::new(create)).await.unwrap();
        let q = "INSERT INTO r (account_id, id, n) SELECT x.k, x.n, 0 FROM ";
        let rows = serde_json::json!([
            {"k": "a", "n": "1"}, {"k": "a", "n": "2"}, {"k": "a", "n": "3"}, {"k": "b", "n": "1"},
        ]);
        let insert = format!("{q}{}", db.json_records(1, &[("k", "text"), ("n", "text")]));
        db.execute(Sql::new(sqlx::AssertSqlSafe(insert)).bind(rows.to_string())).await.unwrap();
        let (records, matched) = db.update_records("r", 2, &[("id", "text"), ("n", "bigint")]);
        let update = format!("UPDATE r SET n = x.n FROM {records} WHERE {matched}");
        let changes = serde_json::json!([{"id": "1", "n": 10}, {"id": "3", "n": 30}, {"id": "9", "n": 90}]);
        let update = Sql::new(sqlx::AssertSqlSafe(update.clone())).bind("a").bind(changes.to_string());
        assert_eq!(db.execute(update).await.unwrap(), 2, "{backend:?}");
        let all: Vec<(String, String, i64)> =
            db.fetch_all(Sql::new("SELECT account_id, id, n FROM r ORDER BY account_id, id")).await.unwrap();
        let expected = [("a", "1", 10), ("a", "2", 0), ("a", "3", 30), ("b", "1", 0)]
            .map(|(a, i, n)| (a.to_owned(), i.to_owned(), n));
        assert_eq!(all, expected, "{backend:?}: the account's named rows only");
        if backend == Backend::Sqlite {
            let plan = format!("EXPLAIN QUERY PLAN UPDATE r SET n = x.n FROM {records} WHERE {matched}");
            let plan: Vec<(i64, i64, i64, String)> =
                db.fetch_all(Sql::new(sqlx::AssertSqlSafe(plan)).bind("a").bind("[]")).await.unwrap();
            let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            let by_key = |s: &&str| s.contains("rowid=?") || s.contains("AND id=?)");
            let reads: Vec<&str> = steps
                .iter()
                .copied()
                .filter(|s| s.starts_with("SCAN r") || s.starts_with("SEARCH r"))
                .collect();
            assert!(reads.iter().all(by_key), "no row of r is read but by its key: {steps:?}");
        }
    }

    /// A read with a time budget given up at each point of its work in turn (its caller's
    /// deadline) hands on no connection that still stops statements at that budget, nor one
    /// inside a transaction: later reads and write transactions on every pooled connection run
    /// whole once the budget has passed.
    async fn a_read_given_up_within_its_budget_leaves_nothing_behind(backend: Backend) {
        let t = crate::testing::TestDb::new(backend, "withincut").await;
        let db = &t.db;
        db.execute(Sql::new("CREATE TABLE w (n BIGINT NOT NULL)")).await.unwrap();
        // Long enough to be cut while it runs; each a statement of many steps.
        let count = |to: i64| {
            Sql::new(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1) \
                 SELECT COUNT(*) FROM c",
            )
            .bind(to)
        };
        let budget = std::time::Duration::from_millis(50);
        for step in 1..=10 {
            let read = db.fetch_all_within::<(i64,)>(count(2_000_000), std::time::Duration::from_secs(30));
            drop(crate::testing::cut_after_waits(read, step).await);
            let read = db.fetch_all_within::<(i64,)>(count(2_000_000), budget);
            drop(crate::testing::cut_after_waits(read, step).await);
            tokio::time::sleep(budget * 2).await;
            // Every connection of the pool (five), each once.
            let mut all = Vec::new();
            for _ in 0..5 {
                all.push(db.conn().await.unwrap());
            }
            for conn in &mut all {
                let n: i64 = conn.scalar(count(20_000)).await.unwrap_or_else(|e| {
                    panic!("{backend:?}: a read on a pooled connection after a cut at {step}: {e}")
                });
                assert_eq!(n, 20_000, "{backend:?}");
            }
            drop(all);
            for _ in 0..5 {
                let mut tx =
                    db.begin_write().await.unwrap_or_else(|e| panic!("{backend:?}: cut at {step}: {e}"));
                tx.execute(Sql::new("INSERT INTO w (n) VALUES ($1)").bind(step as i64)).await.unwrap();
                tx.commit().await.unwrap();
            }
        }
        let n: i64 = db.scalar(Sql::new("SELECT COUNT(*) FROM w")).await.unwrap();
        assert_eq!(n, 50, "{backend:?}: every write committed");
    }

    crate::backend_tests!(
        json_parameters_carry_whole_sets,
        a_dropped_transaction_leaves_nothing,
        records_update_their_rows_by_key,
        a_read_given_up_within_its_budget_leaves_nothing_behind
    );
}
